#!/bin/sh
# The benchmarks, one entry point (python3 -m e2e.bench, in tests/e2e/bench/). Each run is a
# scenario of the end-to-end tests in its own network namespace: needs root. Prints
# Markdown tables on stdout, progress on stderr.
#
# Usage: scripts/bench.sh loss|nginx|stall|latency|bind [options]      (--help after one for its options)
#   loss   rpserver's lifecycle scenarios under load with each strategy (none, drain with and
#          without the backlog shrink, sysctl, bpf), side by side over several rounds:
#          failures per 100k connections.   [--rounds N] [--scenarios a,b] [--strategies x,y]
#   nginx  stock nginx and the patched one (the library), interleaved per round: requests/s
#          at saturation, the lifecycle events at a fixed load, the listen sockets each
#          process holds.   [--rounds N] [--events a,b] [--rate N] [--concurrency N]
#          [--saturation-seconds S] [--saturation-concurrency N]
#   stall  one worker of two stopped (SIGSTOP) for 4 s at saturation: stock nginx with and
#          without reuseport, rpserver and the patched nginx (health-aware steering).
#          [--rounds N]
#   latency  tail latency (p50, p99, p999, max) at saturation through no event, reload10,
#          a reload storm, worker-count changes and an upgrade: stock nginx, patched nginx
#          and rpserver side by side, and the patched / stock ratios.
#          [--rounds N] [--scenarios a,b] [--servers x,y] [--storm-seconds S]
#   bind   what a worker's bind() of its own socket costs on a port with TIME_WAIT sockets,
#          with listeners of one address family or both.   [--time-wait 0,5000,20000]
#
# It builds first what the benchmark needs: scripts/build.sh, and scripts/build-nginx.sh for
# nginx and stall. scripts/bench-loss.sh, bench-nginx.sh and bench-stall.sh are the same
# as `bench.sh loss`, `bench.sh nginx` and `bench.sh stall`.
set -eu
self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
usage() { sed -n '2,/^set -eu/p' "$self" | sed -e '$d' -e 's/^# \{0,1\}//'; exit "${1:-0}"; }
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || usage 2 >&2
benchmark=$1
shift
case "$benchmark" in
    loss) scripts/build.sh >/dev/null ;;
    bind) ;;
    nginx|stall|latency) scripts/build.sh >/dev/null; scripts/build-nginx.sh >&2 ;;
    -h|--help) usage 0 ;;
    *) echo "bench.sh: unknown benchmark: $benchmark" >&2; usage 2 >&2 ;;
esac
exec env PYTHONPATH="$PWD/tests:$PWD/tools" python3 -m e2e.bench "$benchmark" "$@"
