#!/bin/sh
# Installs this repository into a prefix (the fixture of the find_package and pkg-config
# tests) and checks the shared library's SONAME and links.
# Usage: consumer-install.sh WORK_DIR CARGO_TARGET_DIR
. "$(dirname "$0")/common.sh"
work=$1 target=$2
fresh_dir "$work"
build_and_install "$work/build" "$work/prefix" "$target"
cmake --install "$work/build" >/dev/null || fail "cmake --install failed"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
major=${version%%.*} rest=${version#*.}
minor=${rest%%.*}
if [ "$major" = 0 ]; then abi=0.$minor; else abi=$major; fi
lib=$(find "$work/prefix" -name "libreuseport.so.$version" -type f)
[ -n "$lib" ] || fail "no libreuseport.so.$version installed"
libdir=$(dirname "$lib")
soname=$(dynamic_entries "$lib" SONAME)
[ "$soname" = "libreuseport.so.$abi" ] || fail "SONAME is '$soname', expected libreuseport.so.$abi"
[ "$(readlink "$libdir/libreuseport.so.$abi")" = "libreuseport.so.$version" ] || fail "libreuseport.so.$abi link"
[ "$(readlink "$libdir/libreuseport.so")" = "libreuseport.so.$abi" ] || fail "libreuseport.so link"
echo "consumer_install: $work/prefix, SONAME $soname"
