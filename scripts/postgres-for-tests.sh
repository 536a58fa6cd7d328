#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server for the test suite, on 127.0.0.1 only, with its data
# in a fresh temp folder; installs Debian's postgresql if it is missing. Prints the URL to
# pass as OTHERIXD_TEST_POSTGRES_URL on stdout and the server's data dir on stderr.
#   bash scripts/postgres-for-tests.sh            start; prints postgres://postgres@127.0.0.1:PORT/postgres
#   bash scripts/postgres-for-tests.sh stop DIR   stop the server whose data dir is DIR
set -euo pipefail

if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi

if [ "${1:-}" = stop ]; then
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  $SUDO runuser -u postgres -- "$bin/pg_ctl" -D "$2" stop -m fast >/dev/null 2>&1 || true
  $SUDO rm -rf "$2"
  exit 0
fi

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
# A free port unless one is given: a fixed port collides with a server left running by
# another run on the same machine.
port=${OTHERIX_TEST_PG_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
data=$(mktemp -d /tmp/otherix-pg.XXXXXX)
$SUDO chown postgres:postgres "$data"
$SUDO runuser -u postgres -- "$bin/initdb" -D "$data" -A trust -U postgres >/dev/null
$SUDO runuser -u postgres -- "$bin/pg_ctl" -D "$data" -w -l "$data/server.log" \
  -o "-p $port -k $data -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
echo "$data" >&2
echo "postgres://postgres@127.0.0.1:$port/postgres"
