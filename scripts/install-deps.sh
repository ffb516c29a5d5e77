#!/bin/sh
# Installs what building and testing need on Debian 12 (cmake, a C compiler, valgrind for
# the misuse test, iproute2 and util-linux for network-namespace tests, pkg-config for the
# consumer tests, bpftool for the soak). Needs root or sudo
# when something is missing; does nothing when everything is there. Rust (cargo) itself is
# a prerequisite: https://rustup.rs.
set -eu

missing=""
need() { command -v "$1" >/dev/null 2>&1 || missing="$missing $2"; }
need cmake cmake
need cc gcc
need make make
need valgrind valgrind
need ip iproute2
need unshare util-linux
need git git
need python3 python3
need pkill procps
# the soak counts the kernel's BPF programs and maps (scripts/soak.sh)
need bpftool bpftool
# the consumer tests build against the installed library with it
need pkg-config pkg-config

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    echo "cargo not found: install Rust (rustup) first" >&2
    exit 1
fi
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "missing:$missing; run as root or install them yourself" >&2
    exit 1
fi
echo "installing:$missing"
$sudo apt-get update -qq
# shellcheck disable=SC2086 # word splitting of the package list is intended
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
