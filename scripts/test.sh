#!/usr/bin/env bash
# Runs the whole otherix test suite on a fresh Debian machine: installs the system packages
# it needs, builds the test guest images once (cached under target/test-images), builds the
# binaries the end-to-end suite drives, runs every test in the workspace (SQLite), then the
# control plane's API suites again against a real, throwaway PostgreSQL server, with three
# otherixd replicas on that one database behind a round-robin client, and the HA end-to-end
# suite on that server.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh --test
bash tests/images/build.sh
cargo build --workspace --bins
# The end-to-end tests boot QEMU guests under TCG on a 2-core machine: run at most two at once.
cargo test --workspace -- --test-threads=2

pg_dir_file=$(mktemp)
if ! pg_url=$(bash scripts/postgres-for-tests.sh 2>"$pg_dir_file"); then
  echo "test.sh: starting the throwaway PostgreSQL server failed:" >&2
  cat "$pg_dir_file" >&2
  exit 1
fi
trap 'bash scripts/postgres-for-tests.sh stop "$(tail -n 1 "$pg_dir_file")"; rm -f "$pg_dir_file"' EXIT
OTHERIXD_TEST_POSTGRES_URL=$pg_url OTHERIXD_TEST_REPLICAS=3 cargo test -p otherixd --test api --test api_entities --test api_apply --test api_apply_many --test api_auth --test api_concurrency --test api_versions --test api_leader --test retention --test cluster_ca --test metrics --test openapi --test api_events
# The HA acceptance (3 replicas, real agents and QEMU, leader killed and frozen) runs here only:
# tests/Cargo.toml keeps it out of `cargo test --workspace`.
OTHERIXD_TEST_POSTGRES_URL=$pg_url cargo test -p otherix-e2e --test ha
