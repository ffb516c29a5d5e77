#!/bin/sh
# Runs a test in a private network namespace with loopback up, so it may bind privileged
# ports and change sysctls without touching the machine. Exit 77 = skipped (ctest).
if [ "$(id -u)" != 0 ] || ! unshare -n true 2>/dev/null; then
    if [ -n "${CI:-}" ]; then
        echo "FAILED: CI must run as root to create a network namespace (unshare -n)" >&2
        exit 1
    fi
    echo "SKIPPED: needs root to create a network namespace (unshare -n); run the tests as root"
    exit 77
fi
exec unshare -n sh -c 'ip link set lo up && exec "$@"' in-netns "$@"
