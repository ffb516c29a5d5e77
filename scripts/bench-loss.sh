#!/bin/sh
# The loss benchmark: lifecycle scenarios under load with each strategy (none, drain
# with and without the backlog shrink, sysctl, bpf), side by side over several rounds;
# prints failures per 100k connections. Needs root (private network namespaces).
# Usage: scripts/bench-loss.sh [--rounds N] [--scenarios a,b] [--strategies x,y]
set -eu
cd "$(dirname "$0")/.."
scripts/build.sh >/dev/null
exec python3 tests/scenarios/bench.py --server build/c-examples/rpserver --client build/c-examples/loadclient "$@"
