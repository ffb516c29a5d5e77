#!/bin/bash
# Every test: installs what is missing, builds the library, the header, the examples and
# the C tests with cmake, then runs everything with ctest (C tests, cargo test, the header
# drift check, the README example, the lifecycle scenarios under load), then prints the
# scenarios' failure counts as tables. Tests that need root run in their own network
# namespace; run this as root to run them all (CI does). `ctest --test-dir build -L fast`
# runs the fast tier only (unit, C and example tests: minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$HOME/.cargo/bin:$PATH"
scripts/build.sh
rm -f build/scenario-results.jsonl build/nginx-results.jsonl
status=0
ctest --test-dir build --output-on-failure 2>&1 | tee build/ctest.log || status=$?
# The sanitizer build: the C tests and one rpserver scenario again, with the C side (tests,
# rpserver, the load client) under ASan and UBSan (cmake/Sanitize.cmake). Same cargo
# target directory and profile: the Rust library is not rebuilt.
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Release -DREUSEPORT_SANITIZE=address,undefined >/dev/null
cmake --build build-asan -j "$(nproc)" >/dev/null
ctest --test-dir build-asan -L sanitize --output-on-failure 2>&1 | tee build/ctest-asan.log || status=$?
if [ -s build/scenario-results.jsonl ]; then
    echo
    echo "Lifecycle scenarios under load, rpserver (failures by kind, per strategy):"
    env PYTHONPATH=tests:tools python3 -m e2e.table rpserver build/scenario-results.jsonl
fi
if [ -s build/nginx-results.jsonl ]; then
    echo
    echo "nginx scenarios under load, stock and patched (net.ipv4.tcp_migrate_req=0):"
    env PYTHONPATH=tests:tools python3 -m e2e.table nginx build/nginx-results.jsonl
fi
echo
echo "sanitizer build (build-asan, ctest -L sanitize): $(grep -E '^[0-9]+% tests passed' build/ctest-asan.log | tail -n 1)"
# The full run's ctest verdict stays the last line.
grep -E '^[0-9]+% tests passed' build/ctest.log | tail -n 1
exit $status
