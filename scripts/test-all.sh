#!/bin/sh
# Every test: installs what is missing, builds the library, the header, the examples and
# the C tests with cmake, then runs everything with ctest (C tests, cargo test, the header
# drift check, the README example, the demo). Tests that need root run in their own
# network namespace; run this as root to run them all (CI does).
set -eu
cd "$(dirname "$0")/.."
PATH="$HOME/.cargo/bin:$PATH"
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)"
ctest --test-dir build --output-on-failure
