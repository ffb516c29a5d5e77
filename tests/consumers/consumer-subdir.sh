#!/bin/sh
# A parent project adds a read-only copy of the sources with add_subdirectory(), builds and
# runs a program linking reuseport::reuseport. Its ctest must list only its own test, its
# configure must not need Python (find_package(Python3) is disabled), and the build must
# write nothing into the sources.
# Usage: consumer-subdir.sh WORK_DIR CARGO_TARGET_DIR
. "$(dirname "$0")/common.sh"
work=$1 target=$2
fresh_dir "$work"
src=$work/src/reuseport
mkdir -p "$src"

# The sources as a release would ship them: tracked and new files, no build output.
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - 2>/dev/null) \
        | tar -C "$src" -xf -
else
    tar -C "$root" --exclude=./target --exclude=./build -cf - . | tar -C "$src" -xf -
fi
chmod -R a-w "$src"
# root ignores the permission bits, so also check afterwards that nothing was written.
stamp=$work/stamp
touch "$stamp"
sleep 1

cmake -S "$here/subdir" -B "$work/build" -DREUSEPORT_SOURCE="$src" \
    -DCMAKE_DISABLE_FIND_PACKAGE_Python3=TRUE -DREUSEPORT_CARGO_TARGET_DIR="$target" \
    || fail "the parent project does not configure"
cmake --build "$work/build" || fail "the parent project does not build"

listed=$(cd "$work/build" && ctest -N)
echo "$listed"
echo "$listed" | grep -q "Total Tests: 1$" || fail "the parent's ctest lists more than its own test"
echo "$listed" | grep -q "parent_consumer" || fail "the parent's own test is missing"
(cd "$work/build" && ctest --output-on-failure) || fail "the consumer program failed"

written=$(find "$src" -newer "$stamp")
[ -z "$written" ] || fail "the build wrote into the sources: $written"
echo "consumer_add_subdirectory: ok"
