#!/usr/bin/env bash
# Builds the throwaway Python virtualenv with the Workload API's Python clients (py-spiffe and
# grpcio, pinned in workload-agent/tests/python/requirements.txt) and prints its interpreter's
# path on the last line of stdout; scripts/test.sh exports it as LANYARD_TEST_PYTHON.
#
# usage: scripts/python-clients.sh [VENV_DIR]   (default: target/python-clients)
#
# The venv is rebuilt only when the requirements change. Needs python3 with the venv module
# (Debian: python3-venv, which scripts/test.sh installs) and PyPI.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
requirements="$root/workload-agent/tests/python/requirements.txt"
venv="${1:-$root/target/python-clients}"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "python-clients.sh: creating $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        --only-binary=:all: -r "$requirements" >&2
    echo "$want" >"$stamp"
fi
# Fail here, not in the tests, if the install is unusable.
"$venv/bin/python" -c 'import grpc, spiffe' >&2
echo "$venv/bin/python"
