#!/usr/bin/env bash
# Lanyard's whole test suite, as the README documents it and CI runs it.
#
# On a fresh Debian machine with Rust this installs what the tests need (PostgreSQL, openssl, chromium
# for the operator page test,
# the ACME clients lego and uacme, python3 with venv),
# builds a throwaway Python virtualenv under target/python-clients with the Workload API's
# Python clients (py-spiffe and grpcio, pinned in workload-agent/tests/python/requirements.txt;
# scripts/python-clients.sh) and exports its interpreter as LANYARD_TEST_PYTHON,
# starts a throwaway PostgreSQL on loopback, runs every test of the workspace against it and
# against SQLite, and stops the server again, whatever the outcome.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

packages=(postgresql openssl ca-certificates lego uacme pebble curl util-linux python3 python3-venv chromium)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "test.sh: installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# py-spiffe and grpcio for workload-agent/tests/python_clients.rs (which fails under CI without it).
LANYARD_TEST_PYTHON="$(scripts/python-clients.sh | tail -n 1)"
export LANYARD_TEST_PYTHON
echo "test.sh: Python clients in $LANYARD_TEST_PYTHON"

# A throwaway PostgreSQL cluster, on loopback only, owned by the postgres user when we are root
# (initdb refuses to run as root).
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
pgdir=$(mktemp -d /tmp/lanyard-pg.XXXXXX)
chmod 755 "$pgdir"
run_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$pgdir"
stop_pg() {
    run_pg "$pgbin/pg_ctl" -D "$pgdir/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$pgdir"
}
trap stop_pg EXIT
run_pg "$pgbin/initdb" -D "$pgdir/data" -A trust -U lanyard >/dev/null
for attempt in 1 2 3 4 5; do
    port=$((20000 + RANDOM % 20000))
    if run_pg "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $pgdir -c max_connections=200" start >/dev/null; then
        break
    fi
    [ "$attempt" = 5 ] && { cat "$pgdir/log"; exit 1; }
done
echo "test.sh: PostgreSQL $(basename "$(dirname "$pgbin")") on 127.0.0.1:$port"

export LANYARD_TEST_POSTGRES_URL="postgres://lanyard@127.0.0.1:$port/postgres"
export LANYARD_REQUIRE_POSTGRES=1

# End-to-end tests run the real binaries (lanyard-ca, crash-issue): build them first.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
