#!/usr/bin/env bash
# Control-plane and overhead benchmark (issue 11's figures 1-7). Builds the binaries in
# release mode, then runs otherix-bench, which starts its own clusters (otherixd on a temp
# SQLite dir with TLS, a real otherix-agent --accel tcg, and otherix-simnode for the scale
# figures) and prints a Markdown table of every figure with its baseline.
# Usage: scripts/bench.sh [all | FIGURE...] [--vms 10000] [--nodes 100] [--idle-secs 30] ...
#        scripts/bench.sh 3 4 7 --vms 2000 --nodes 20     # a quick run
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --release -p otherixd -p otherix -p otherix-agent -p otherix-bench
exec "${CARGO_TARGET_DIR:-target}/release/otherix-bench" "$@"
