#!/bin/sh
# The stall benchmark: one worker of two stopped (SIGSTOP) for 4 s under a load at
# saturation; stock nginx with and without reuseport, rpserver and the patched nginx (the
# library's health-aware steering) side by side: requests/s before and during the stall,
# what the stopped worker had accepted, client timeouts and other failures. Prints one
# Markdown table (progress on stderr). Needs root (private network namespaces).
# Usage: scripts/bench-stall.sh [--rounds N]
set -eu
cd "$(dirname "$0")/.."
scripts/build.sh >/dev/null
scripts/build-nginx.sh >&2
exec python3 tests/stall/bench.py --stock target/nginx-stock --patched target/nginx-patched \
    --server build/c-examples/rpserver --client build/c-examples/loadclient "$@"
