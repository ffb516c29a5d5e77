#!/bin/sh
# Fails when the committed include/reuseport.h differs from the header build.rs generates
# from the current sources (cbindgen, feature capi-header).
#
# Usage: tests/check-header.sh [GENERATED_HEADER]
#   GENERATED_HEADER  a header the build generated (CMake: build/include/reuseport.h);
#                     without it, cargo generates one (target/header-check/).
set -eu
cd "$(dirname "$0")/.."
PATH="$HOME/.cargo/bin:$PATH"
generated=${1:-}
if [ -z "$generated" ]; then
    out=target/header-check
    mkdir -p "$out"
    cmake -DCARGO=cargo -DSOURCE_DIR="$PWD" -DTARGET_DIR="$PWD/target" -DPROFILE=release \
        -DHEADER_OUT="$out/reuseport.h" -DNATIVE_LIBS_OUT="$out/native-static-libs.txt" \
        -P cmake/CargoBuild.cmake
    generated=$out/reuseport.h
fi
[ -f "$generated" ] || { echo "check-header: $generated does not exist: build first" >&2; exit 1; }
if diff -u include/reuseport.h "$generated"; then
    echo "include/reuseport.h matches the generated header"
    exit 0
fi
echo "include/reuseport.h is stale: run scripts/update-header.sh and commit it with the Rust change" >&2
exit 1
