#!/bin/sh
# Installs what is missing and builds everything (library, header, examples, C tests)
# into build/ with cmake. The other scripts start with it.
set -eu
cd "$(dirname "$0")/.."
PATH="$HOME/.cargo/bin:$PATH"
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" "$@"
