#!/bin/bash
# Runs the fuzz targets (fuzz/, cargo-fuzz on the nightly toolchain), each for the time
# given, seeded from the committed corpus (fuzz/corpus/<target>). New inputs go to
# target/fuzz/corpus/<target>, crashes to target/fuzz/artifacts/<target>/; a crash
# ends the run with its input's path and exits 1. capi_sequence binds loopback ports and
# loads eBPF programs: it runs in a private network namespace (as root).
#
#   scripts/fuzz.sh --minutes 30                  # every target, 30 minutes each
#   scripts/fuzz.sh --seconds 60 --target spec_parse
#
# It installs the nightly toolchain (rustup) and cargo-fuzz (cargo +nightly install
# cargo-fuzz) when they are missing; when they cannot be had it exits 77 (skipped), or 1
# when CI is set.
set -euo pipefail
cd "$(dirname "$0")/.."
PATH="$HOME/.cargo/bin:$PATH"

seconds=60
targets=(spec_parse capi_sequence)
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) seconds=$(($2 * 60)); shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --target) targets=("$2"); shift 2 ;;
        *) echo "usage: $0 [--minutes N | --seconds N] [--target spec_parse|capi_sequence]" >&2; exit 2 ;;
    esac
done

skip() {
    if [ -n "${CI:-}" ]; then
        echo "FAILED: $1" >&2
        exit 1
    fi
    echo "SKIPPED: $1"
    exit 77
}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "installing the nightly toolchain (rustup toolchain install nightly --profile minimal)"
    rustup toolchain install nightly --profile minimal >/dev/null 2>&1 ||
        skip "the fuzz targets need a nightly toolchain, and rustup could not install it: rustup toolchain install nightly"
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz (cargo +nightly install cargo-fuzz)"
    cargo +nightly install --locked cargo-fuzz
fi

work=target/fuzz
status=0
for t in "${targets[@]}"; do
    corpus=$work/corpus/$t
    artifacts=$work/artifacts/$t
    mkdir -p "$corpus" "$artifacts"
    # Built outside the namespace (cargo may need the registry), run inside it.
    cargo +nightly fuzz build --fuzz-dir fuzz "$t"
    run=(cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$corpus" "fuzz/corpus/$t" --
         -max_total_time="$seconds" -artifact_prefix="$artifacts/" -print_final_stats=1)
    echo "fuzzing $t for ${seconds}s (seed corpus fuzz/corpus/$t)"
    if [ "$t" = capi_sequence ]; then
        tests/c/in-netns.sh "${run[@]}" || status=$?
    else
        "${run[@]}" || status=$?
    fi
    if [ "$status" != 0 ]; then
        [ "$status" = 77 ] && exit 77
        echo "FAILED: $t found a failing input: $(ls -t "$artifacts"/* 2>/dev/null | head -n 1)" >&2
        echo "reproduce: cargo +nightly fuzz run --fuzz-dir fuzz $t <that file>" >&2
        exit 1
    fi
done
