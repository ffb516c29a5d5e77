#!/bin/sh
# An outside CMake project finds the installed package (consumer-install.sh's prefix) with
# find_package(reuseport) and links the shared and the static library.
# Usage: consumer-find-package.sh WORK_DIR PREFIX
. "$(dirname "$0")/common.sh"
work=$1 prefix=$2
fresh_dir "$work"
cmake -S "$here/find-package" -B "$work/build" -DCMAKE_PREFIX_PATH="$prefix" \
    || fail "find_package(reuseport) failed"
cmake --build "$work/build" || fail "the consumer does not build"
"$work/build/consumer_shared" || fail "consumer_shared failed"
"$work/build/consumer_static" || fail "consumer_static failed"
dynamic_entries "$work/build/consumer_shared" NEEDED | grep -q '^libreuseport\.so\.' \
    || fail "consumer_shared does not load libreuseport.so"
if dynamic_entries "$work/build/consumer_static" NEEDED | grep -q libreuseport; then
    fail "consumer_static loads libreuseport.so"
fi
echo "consumer_find_package: ok"
