#!/usr/bin/env bash
# Runs the whole otherix test suite on a fresh Debian machine: installs the system packages
# it needs, builds the test guest images once (cached under target/test-images), builds the
# binaries the end-to-end suite drives, then runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash tests/images/build.sh
cargo build --workspace --bins
# The end-to-end tests boot QEMU guests under TCG on a 2-core machine: run at most two at once.
cargo test --workspace -- --test-threads=2
