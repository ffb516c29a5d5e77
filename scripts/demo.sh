#!/bin/sh
# The demo: builds the library and runs the lifecycle once (a master, a first worker that
# adopts the master's sockets, two workers that bind their own, a client), printing what
# each process holds after each step. Stops by itself.
set -eu
cd "$(dirname "$0")/.."
PATH="$HOME/.cargo/bin:$PATH"
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" --target lifecycle_demo >/dev/null
exec build/c-examples/lifecycle_demo "$@"
