#!/bin/sh
# The steering benchmark: cost per connection (steering vs the migration program, 2 to
# 1024 workers), the master's watch idle and under load, stall detection, and a busy
# worker's effect on latency. Root: it runs in a private network namespace and turns
# kernel.bpf_stats_enabled on for its duration (a global switch: turned off again on
# exit). Tables on stdout, progress on stderr. Options: see scripts/bench_steer.py -h.
set -eu
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "bench-steer: needs root (a network namespace, CAP_BPF, kernel.bpf_stats_enabled)" >&2
    exit 1
fi
scripts/build.sh >&2
was=$(sysctl -n kernel.bpf_stats_enabled)
trap 'sysctl -q -w kernel.bpf_stats_enabled="$was"' EXIT INT TERM
sysctl -q -w kernel.bpf_stats_enabled=1
echo "Measured $(date -u +%Y-%m-%d) at commit $(git rev-parse --short HEAD), Linux $(uname -r), $(nproc) cores."
echo
unshare -n sh -c 'ip link set lo up && exec python3 scripts/bench_steer.py "$@"' bench-steer "$@"
