#!/bin/sh
# The lints that hold the line: rustfmt, and clippy with every warning an error (the
# crate denies unsafe_op_in_unsafe_fn and undocumented unsafe blocks itself). Run from
# the repository root; CARGO_TARGET_DIR may point at a shared target directory.
set -eu
cd "$(dirname "$0")/.."
PATH="$HOME/.cargo/bin:$PATH"
for tool in rustfmt clippy-driver; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "lint: $tool not found: install the rustfmt and clippy components of the Rust toolchain" >&2
        exit 1
    fi
done
cargo fmt --all -- --check
# The fuzz targets are their own workspace (fuzz/, nightly): formatted like the rest.
rustfmt --check --edition 2021 --config-path rustfmt.toml fuzz/fuzz_targets/*.rs
cargo clippy --all-targets --locked -- -D warnings
echo "lint: rustfmt and clippy clean"
