#!/bin/sh
# A plain compiler line with pkg-config, against the installed prefix: shared
# (`pkg-config --libs`) and static (`--static`, Libs.private from rustc).
# Usage: consumer-pkg-config.sh WORK_DIR PREFIX CC
. "$(dirname "$0")/common.sh"
work=$1 prefix=$2 cc=$3
fresh_dir "$work"
pc=$(find "$prefix" -name reuseport.pc)
[ -n "$pc" ] || fail "no reuseport.pc under $prefix"
PKG_CONFIG_PATH=$(dirname "$pc")
export PKG_CONFIG_PATH
pkg-config --print-errors --exists reuseport || fail "pkg-config does not find reuseport"
libdir=$(pkg-config --variable=libdir reuseport)

set -x
# shellcheck disable=SC2046 # pkg-config's flags are split on purpose
"$cc" -Wall -Werror "$here/main.c" $(pkg-config --cflags --libs reuseport) -Wl,-rpath,"$libdir" \
    -o "$work/shared"
# shellcheck disable=SC2046
"$cc" -Wall -Werror "$here/main.c" $(pkg-config --cflags reuseport) \
    $(pkg-config --static --libs reuseport | sed 's/-lreuseport\b/-l:libreuseport.a/') -o "$work/static"
set +x
"$work/shared" || fail "the shared build failed"
"$work/static" || fail "the static build failed"
echo "consumer_pkg_config: ok ($(pkg-config --static --libs reuseport))"
