# Sourced by the consumer tests: paths and helpers. Each test works in a directory of its
# own (its first argument), emptied first.
set -eu
PATH="$HOME/.cargo/bin:$PATH"
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

fresh_dir() {
    if [ -d "$1" ]; then
        chmod -R u+w "$1"
        rm -rf "$1"
    fi
    mkdir -p "$1"
}

# The SONAME recorded in a shared library, or what an executable NEEDs.
dynamic_entries() { # FILE TAG
    readelf -d "$1" | sed -n "s/.*($2).*\[\(.*\)\]/\1/p"
}

# Configures, builds and installs this repository with PREFIX, sharing cargo's artifacts
# with the build that runs the tests (same sources, same profile: cargo has nothing to do).
build_and_install() { # BUILD_DIR PREFIX CARGO_TARGET_DIR [cmake --install args...]
    build=$1 prefix=$2 target=$3
    shift 3
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$prefix" \
        -DREUSEPORT_BUILD_TESTING=OFF -DREUSEPORT_CARGO_TARGET_DIR="$target" >/dev/null
    cmake --build "$build" >/dev/null
}
