#!/bin/sh
# Regenerates the committed include/reuseport.h from the doc comments in src/capi/ (the
# only build that writes into the source tree: REUSEPORT_UPDATE_HEADER=1 asks build.rs to).
set -eu
cd "$(dirname "$0")/.."
PATH="$HOME/.cargo/bin:$PATH"
REUSEPORT_UPDATE_HEADER=1 CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}" \
    cargo build --locked --release --lib --features capi-header
echo "include/reuseport.h regenerated"
