#!/bin/sh
# Makes target/h3-venv: a Python venv with aioquic (PyPI), the HTTP/3 client of the nginx
# QUIC scenario (tools/h3/h3get.py). Idempotent; installs python3-venv when missing
# (root). Prints the venv's python. Exit 77 when it cannot be made and CI is not set.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=$ROOT/target/h3-venv
AIOQUIC=aioquic==1.7.2
fail() {
    echo "install-h3-client.sh: $*" >&2
    if [ -n "${CI:-}" ]; then exit 1; fi
    exit 77
}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import aioquic' 2>/dev/null; then
    echo "$VENV/bin/python"
    exit 0
fi
if ! python3 -c 'import ensurepip' 2>/dev/null; then
    [ "$(id -u)" = 0 ] || fail "python3-venv is missing and this user cannot install it"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null 2>&1 \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; } \
        || fail "could not install python3-venv"
fi
rm -rf "$VENV"
python3 -m venv "$VENV" >&2 || fail "python3 -m venv failed"
"$VENV/bin/pip" install -q "$AIOQUIC" >&2 || fail "pip install $AIOQUIC failed"
echo "$VENV/bin/python"
