#!/bin/sh
# A Cargo project depends on the crate by path, uses the Rust API and its own `log`
# logger, and does not compile cbindgen (a build dependency only of the capi-header feature).
# Usage: consumer-cargo.sh WORK_DIR CARGO_TARGET_DIR
. "$(dirname "$0")/common.sh"
work=$1 target=$2
fresh_dir "$work"
cp -r "$here/cargo/src" "$work/src"
sed "s|@REUSEPORT_SOURCE@|$root|" "$here/cargo/Cargo.toml.in" >"$work/Cargo.toml"
# The library's own lock as a start: the same dependency versions, no index lookup needed.
cp "$root/Cargo.lock" "$work/Cargo.lock"
cd "$work"
if cargo tree --offline -e normal,build --prefix none 2>/dev/null | grep -q '^cbindgen '; then
    fail "a Rust user compiles cbindgen"
fi
CARGO_TARGET_DIR=$target cargo run --offline || CARGO_TARGET_DIR=$target cargo run \
    || fail "the Cargo consumer failed"
echo "consumer_cargo: ok"
