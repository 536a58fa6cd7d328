#!/usr/bin/env bash
# Starts a single-node otherix cluster on this machine and boots the example VM:
# otherixd on an embedded SQLite file, one local otherix-agent, and a local HTTP server
# serving the example guest image that tests/images/build.sh builds from Debian packages.
#
#   bash scripts/quickstart.sh         start (or restart) everything and boot `example`
#   bash scripts/quickstart.sh stop    stop the cluster and its VMs
#
# State lives in .otherix/ at the repo root. Ports: API 7080 (HTTPS), agents 7081 (TLS),
# images 7090. The agent uses TCG by default (OTHERIX_ACCEL=kvm|auto to change). The CLI
# gets a remote `quickstart` (with the admin token and the cluster CA) in
# ~/.config/otherix/config.yaml ($OTHERIX_CONFIG), so `otherix ...` needs no exports.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
state="$root/.otherix"
bin="${CARGO_TARGET_DIR:-$root/target}/debug"
api=127.0.0.1:7080
agents=127.0.0.1:7081
images=127.0.0.1:7090

stop_all() {
  for name in otherix-agent otherixd image-server; do
    if [ -f "$state/$name.pid" ]; then
      kill "$(cat "$state/$name.pid")" 2>/dev/null || true
      rm -f "$state/$name.pid"
    fi
  done
  # QEMU guests run detached from the agent by design; stop the quick-start's ones too.
  pkill -f "qemu-system.*$state/" 2>/dev/null || true
}

if [ "${1:-}" = stop ]; then
  stop_all
  echo "quickstart: stopped"
  exit 0
fi

bash scripts/install-deps.sh
bash tests/images/build.sh target/test-images
cargo build --workspace --bins

stop_all
mkdir -p "$state/pool-default"

nohup python3 -m http.server --bind 127.0.0.1 --directory target/test-images 7090 \
  >"$state/image-server.log" 2>&1 &
echo $! >"$state/image-server.pid"

nohup "$bin/otherixd" --listen "$api" --agent-listen "$agents" --data-dir "$state/server" \
  >"$state/otherixd.log" 2>&1 &
echo $! >"$state/otherixd.pid"
for _ in $(seq 1 100); do
  if grep -q '^otherixd: api ' "$state/otherixd.log" 2>/dev/null; then break; fi
  sleep 0.1
done
grep '^otherixd: ' "$state/otherixd.log"

# A CLI remote for this cluster: the server was started just above on loopback, so its
# certificate is accepted without asking.
"$bin/otherix" remote remove quickstart >/dev/null 2>&1 || true
"$bin/otherix" remote add quickstart "https://$api" \
  --token-file "$state/server/admin.token" --accept-certificate
"$bin/otherix" remote switch quickstart >/dev/null

# The agent enrolls with a one-time join token on its first start, then uses its
# certificate (in .otherix/agent/tls/).
join=()
if [ ! -s "$state/agent/tls/node.crt" ]; then
  join=(--join-token "$("$bin/otherix" node join-token node-1 2>/dev/null)")
fi
nohup "$bin/otherix-agent" --server "https://$agents" ${join[@]+"${join[@]}"} --node node-1 \
  --data-dir "$state/agent" --pool "default=$state/pool-default" \
  --accel "${OTHERIX_ACCEL:-tcg}" >"$state/otherix-agent.log" 2>&1 &
echo $! >"$state/otherix-agent.pid"

for _ in $(seq 1 100); do
  if "$bin/otherix" node get node-1 -o json 2>/dev/null | grep -q '"status": *"ready"'; then break; fi
  sleep 0.2
done
"$bin/otherix" node list

if "$bin/otherix" vm get example >/dev/null 2>&1; then
  "$bin/otherix" vm delete example --force --wait
fi
# The agent caches an image by URL; drop unused ones so a rebuilt test image is fetched.
"$bin/otherix" pool prune-images default >/dev/null
"$bin/otherix" vm create example --image-url "http://$images/busybox-amd64.qcow2" \
  --arch amd64 --vcpus 1 --memory-mb 256 --wait
"$bin/otherix" vm list

cat <<NEXT

otherix is running (logs in .otherix/). Try:
  export PATH=$bin:\$PATH
  otherix vm get example
  tail -f \$(otherix vm get example -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["serial_log"])')
  otherix vm stop example --wait
  otherix vm start example --wait
  otherix vm delete example --force --wait
  bash scripts/quickstart.sh stop
NEXT
