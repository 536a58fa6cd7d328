#!/usr/bin/env bash
# Agent benchmark: image download throughput (ImageCache::materialize vs curl on the same
# 127.0.0.1 URL) and create-to-running time from a cached 100 MiB vs 10 GiB qcow2 image.
# Prints two small tables. Usage: scripts/bench-agent.sh [--size-mib N]   (default 500)
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo run --quiet --release -p otherix-agent --example bench -- "$@"
