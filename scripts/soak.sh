#!/bin/bash
# The soak, in one command: rpserver and patched nginx side by side, each under load,
# through a seeded random schedule of reloads (bursts of up to 10 a second), worker-count
# changes, upgrades, both reverts, SIGKILLed and SIGSTOPped workers, for N minutes, in a
# private network namespace (root). Checked every minute and at the end
# (tests/e2e/soak.py): no failure beyond what killed workers held, no growth of the
# master's and workers' fds and RSS, no process or listener left after the stop, the
# kernel's reuseport BPF programs and maps back to where they started.
#
#   scripts/soak.sh --minutes 30 [--seed S] [--out soak.jsonl] [--only rpserver|nginx] [--keep-going]
#
# Builds what is missing first (scripts/build.sh, scripts/build-nginx.sh). CI runs 2
# minutes (ctest -R soak). docs/benchmarks.md reports a 30-minute run.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$HOME/.cargo/bin:$PATH"

minutes=""
extra=()
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) minutes=$2; shift 2 ;;
        --out) extra+=(--out "$(realpath -m "$2")"); shift 2 ;;
        --seed|--rate|--window) extra+=("$1" "$2"); shift 2 ;;
        --only) only=$2; shift 2 ;;
        --keep-going) extra+=(--keep-going); shift ;;
        *) echo "usage: $0 --minutes N [--seed S] [--out FILE] [--rate N] [--window S] [--only rpserver|nginx] [--keep-going]" >&2
           exit 2 ;;
    esac
done
[ -n "$minutes" ] || { echo "usage: $0 --minutes N ..." >&2; exit 2; }

scripts/build.sh >/dev/null
servers=()
if [ "$only" != nginx ]; then servers+=(--rpserver "$PWD/build/c-examples/rpserver"); fi
if [ "$only" != rpserver ]; then
    scripts/build-nginx.sh >/dev/null
    servers+=(--nginx "$PWD/target/nginx-patched")
fi
cd tests
exec env PYTHONPATH="$PWD:$PWD/../tools" ./c/in-netns.sh python3 -m e2e.soak \
    --client "$PWD/../build/c-examples/loadclient" "${servers[@]}" --minutes "$minutes" "${extra[@]}"
