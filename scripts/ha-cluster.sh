#!/usr/bin/env bash
# Starts a local 3-replica otherix control plane on a throwaway PostgreSQL: three `otherixd`
# on one database (own data dir, own API and agent ports each, all on 127.0.0.1), one local
# `otherix-agent` enrolled with a join token and given every replica's gateway (`--server`
# three times, it fails over between them), and a small HTTP server with a tiny guest disk.
#
#   bash scripts/ha-cluster.sh         start (after stopping a previous run)
#   bash scripts/ha-cluster.sh stop    stop the replicas, the agent, its VMs and PostgreSQL
#
# State lives in .otherix-ha/ at the repo root. Ports (HA_BASE_PORT, default 7180): replica i
# (1..3) serves its API on BASE+2(i-1) and its agent gateway on BASE+2(i-1)+1; images on
# BASE+10. The CLI gets remotes ha-1, ha-2, ha-3 (one per replica, replica 1's admin token)
# in .otherix-ha/otherix-config.yaml, so `export OTHERIX_CONFIG=...` (printed at the end)
# and `otherix --remote ha-2 vm list` talks to replica 2.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
state="$root/.otherix-ha"
bin="${CARGO_TARGET_DIR:-$root/target}/debug"
base=${HA_BASE_PORT:-7180}
replicas=(1 2 3)
api_addr() { echo "127.0.0.1:$((base + 2 * ($1 - 1)))"; }
agent_addr() { echo "127.0.0.1:$((base + 2 * ($1 - 1) + 1))"; }
images="127.0.0.1:$((base + 10))"
export OTHERIX_CONFIG="$state/otherix-config.yaml"

stop_all() {
  local f
  for f in "$state"/*.pid; do
    [ -e "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  # QEMU guests run detached from the agent by design; stop this cluster's ones too.
  pkill -f "qemu-system.*$state/" 2>/dev/null || true
  if [ -f "$state/pg.dir" ]; then
    bash scripts/postgres-for-tests.sh stop "$(cat "$state/pg.dir")"
    rm -f "$state/pg.dir" "$state/pg.url"
  fi
}

if [ "${1:-}" = stop ]; then
  stop_all
  echo "ha-cluster: stopped"
  exit 0
fi

bash scripts/install-deps.sh
cargo build --bins -p otherixd -p otherix-agent -p otherix
stop_all
rm -rf "$state"
mkdir -p "$state/pool-default" "$state/images"
# QEMU runs as otherix-qemu and must reach the pool under here.
chmod 711 "$state"

# A 1 MiB raw disk whose boot sector halts at once (`hlt; jmp $-1`): QEMU stays up, costs
# no CPU, and needs no image build.
python3 - "$state/images/halt.img" <<'PY'
import sys
sector = bytearray(512)
sector[0:3] = b"\xf4\xeb\xfd"  # hlt; jmp $-1
sector[510:512] = b"\x55\xaa"
with open(sys.argv[1], "wb") as f:
    f.write(sector + bytes(1024 * 1024 - 512))
PY
nohup python3 -m http.server --bind 127.0.0.1 --directory "$state/images" "${images##*:}" \
  >"$state/image-server.log" 2>&1 &
echo $! >"$state/image-server.pid"

pg_url=$(bash scripts/postgres-for-tests.sh 2>"$state/pg.err")
tail -n 1 "$state/pg.err" >"$state/pg.dir"
echo "$pg_url" >"$state/pg.url"

start_replica() {
  local i=$1
  nohup "$bin/otherixd" --listen "$(api_addr "$i")" --agent-listen "$(agent_addr "$i")" \
    --data-dir "$state/replica-$i" --database-url "$pg_url" \
    >"$state/otherixd-$i.log" 2>&1 &
  echo $! >"$state/otherixd-$i.pid"
  for _ in $(seq 1 150); do
    if grep -q '^otherixd: api ' "$state/otherixd-$i.log" 2>/dev/null; then
      # Listening; /healthz answers once the server loop runs.
      if curl -fsS --cacert "$state/replica-$i/tls/ca.crt" \
        "https://$(api_addr "$i")/healthz" >/dev/null 2>&1; then
        return 0
      fi
    fi
    sleep 0.2
  done
  echo "ha-cluster: replica $i did not come up; its log:" >&2
  cat "$state/otherixd-$i.log" >&2
  exit 1
}

# Replica 1 first: it bootstraps the admin token into its data dir.
for i in "${replicas[@]}"; do
  start_replica "$i"
  "$bin/otherix" remote add "ha-$i" "https://$(api_addr "$i")" \
    --token-file "$state/replica-1/admin.token" --accept-certificate >/dev/null
done
"$bin/otherix" remote switch ha-1 >/dev/null

servers=()
for i in "${replicas[@]}"; do servers+=(--server "https://$(agent_addr "$i")"); done
join=$("$bin/otherix" --remote ha-1 node join-token node-1)
nohup "$bin/otherix-agent" "${servers[@]}" --join-token "$join" --node node-1 \
  --data-dir "$state/agent" --pool "default=$state/pool-default" \
  --accel "${OTHERIX_ACCEL:-tcg}" >"$state/otherix-agent.log" 2>&1 &
echo $! >"$state/otherix-agent.pid"
for _ in $(seq 1 150); do
  if "$bin/otherix" node get node-1 -o json 2>/dev/null | grep -q '"status": *"ready"'; then break; fi
  sleep 0.2
done
"$bin/otherix" node list

leader=$(psql "$pg_url" -At -c \
  "SELECT holder || ' epoch ' || epoch FROM leases WHERE name = 'leader'" 2>/dev/null || true)
cat <<NEXT

otherix HA cluster is running (logs and state in .otherix-ha/):
  replicas: $(for i in "${replicas[@]}"; do printf 'ha-%s https://%s (agents %s)  ' "$i" "$(api_addr "$i")" "$(agent_addr "$i")"; done)
  database: $pg_url
  leader lease: $leader (replica: $(grep -l "leading holder=${leader%% *}" "$state"/otherixd-*.log 2>/dev/null | head -1))
Try:
  export PATH=$bin:\$PATH OTHERIX_CONFIG=$OTHERIX_CONFIG
  otherix --remote ha-2 vm create demo --image-url http://$images/halt.img \\
      --arch amd64 --vcpus 1 --memory-mb 128 --no-cloud-init --wait
  otherix --remote ha-3 vm get demo
  kill -9 \$(cat .otherix-ha/otherixd-1.pid)     # fail a replica; the agent moves on
  bash scripts/ha-cluster.sh stop
NEXT
