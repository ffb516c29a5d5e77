#!/bin/sh
# A Debian-style install: configured for /usr, installed per component into a staging
# directory (DESTDIR), each listing compared with what its package ships
# (expected-files.txt: libreuseport-dev = Development, libreuseport0.1 = Runtime).
# Usage: staged-install.sh WORK_DIR CARGO_TARGET_DIR
. "$(dirname "$0")/common.sh"
work=$1 target=$2
fresh_dir "$work"
build_and_install "$work/build" /usr "$target"
libdir=$(sed -n 's/^CMAKE_INSTALL_LIBDIR:[A-Z]*=//p' "$work/build/CMakeCache.txt")
version=$(sed -n 's/^CMAKE_PROJECT_VERSION:[A-Z]*=//p' "$work/build/CMakeCache.txt")
abi=$(dynamic_entries "$work/build/lib/libreuseport.so.$version" SONAME | sed 's/^libreuseport\.so\.//')
status=0
for component in Development Runtime; do
    stage=$work/stage-$component
    DESTDIR=$stage cmake --install "$work/build" --component "$component" >/dev/null
    (cd "$stage" && find . \( -type f -o -type l \) | sed 's|^\./||' | sort) >"$work/$component.got"
    sed -n "/^\[$component\]/,/^\[/p" "$here/expected-files.txt" | grep -v -e '^\[' -e '^#' -e '^$' \
        | sed -e "s|@LIBDIR@|$libdir|" -e "s|@VERSION@|$version|" -e "s|@ABI@|$abi|" | sort \
        >"$work/$component.expected"
    echo "== $component (DESTDIR=$stage)"
    cat "$work/$component.got"
    diff -u "$work/$component.expected" "$work/$component.got" || status=1
done
[ "$status" = 0 ] || fail "the staged install differs from the expected file lists"
echo "staged_install: ok"
