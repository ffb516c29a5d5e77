#!/bin/sh
# The nginx comparison benchmark: stock nginx 1.22.1 and the patched one (the library),
# side by side, interleaved per round: requests/s at saturation, the lifecycle events at
# a fixed load (failures by kind, per 100k), and the listen sockets each process holds.
# Prints Markdown tables (progress on stderr). Needs root (private network namespaces).
# Usage: scripts/bench-nginx.sh [--rounds N] [--events a,b] [--rate N] [--concurrency N]
#                               [--saturation-seconds S] [--saturation-concurrency N]
set -eu
cd "$(dirname "$0")/.."
scripts/build.sh >/dev/null
scripts/build-nginx.sh >&2
exec python3 tests/nginx/bench.py --stock target/nginx-stock --patched target/nginx-patched \
    --client build/c-examples/loadclient "$@"
