#!/bin/bash
# Every nginx scenario for every nginx line (1.22, 1.26, 1.30), stock recorded and patched
# judged, and the adoption scenarios across lines: what CI runs for 1.22 and 1.26 only
# (REUSEPORT_NGINX_LINES, tests/e2e/CMakeLists.txt), here for all. Reconfigures build/
# with the lines asked for, runs `ctest -L nginx`, prints the tables, then puts the
# build's line list back as it was.
#
# Usage: scripts/test-nginx-versions.sh [LINE...] [-- CTEST-ARGS...]
#   LINE  1.22 1.26 1.30 (default: all three). 1.30's source: Debian unstable's source
#         package, or a tarball given once: scripts/build-nginx.sh 1.30 --tarball PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$HOME/.cargo/bin:$PATH"
lines=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do lines+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#lines[@]} -gt 0 ] || lines=(1.22 1.26 1.30)
scripts/build.sh >/dev/null
previous=$(sed -n 's/^REUSEPORT_NGINX_LINES:STRING=//p' build/CMakeCache.txt)
restore() { cmake -S . -B build "-DREUSEPORT_NGINX_LINES=${previous:-1.22;1.26}" >/dev/null; }
trap restore EXIT
list=$(IFS=';'; echo "${lines[*]}")
cmake -S . -B build "-DREUSEPORT_NGINX_LINES=$list" >/dev/null
rm -f build/nginx-results.jsonl
status=0
ctest --test-dir build -L nginx --output-on-failure "$@" 2>&1 | tee build/ctest-nginx.log || status=$?
if [ -s build/nginx-results.jsonl ]; then
    echo
    echo "nginx scenarios under load, stock and patched, per version (net.ipv4.tcp_migrate_req=0):"
    env PYTHONPATH=tests:tools python3 -m e2e.table nginx build/nginx-results.jsonl
fi
grep -E '^[0-9]+% tests passed' build/ctest-nginx.log | tail -n 1
exit $status
