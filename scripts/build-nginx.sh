#!/bin/bash
# Builds nginx twice per version from the same upstream source, with the same flags:
#   target/nginx-<line>-stock    upstream nginx, unmodified (the baseline)
#   target/nginx-<line>-patched  with the reuseport patch (scripts/nginx-patch.sh: the
#                                version's hooks plus the shared glue), linked with the
#                                library (target/release/libreuseport.a)
#   target/nginx-<line>-stock-nooverlap  (--nooverlap only) upstream nginx whose master
#                                does not wait 100 ms after starting a reload's workers
#                                before it tells the old ones to quit: a diagnostic
#                                baseline (docs/benchmarks.md, "Reload latency")
# <line> is the stable line: 1.22, 1.26, 1.30. target/nginx-stock and target/nginx-patched
# are links to the 1.22 builds (Debian 12's nginx). Each is a standard nginx prefix:
# sbin/nginx, conf/, html/, logs/.
#
# Usage: scripts/build-nginx.sh [VERSION...] [--tarball PATH] [--sha256 HEX] [--nooverlap]
#   VERSION   1.22 (1.22.1, Debian 12), 1.26 (1.26.3, Debian 13), 1.30 (1.30.6, Debian
#             unstable), or an exact version; default: all three lines.
#   --tarball an nginx source tarball (upstream's nginx-X.Y.Z.tar.gz, Debian's orig
#             tarball, or a `git archive` of nginx's repository): builds its version
#             (read from its src/core/nginx.h), instead of downloading.
#   --sha256  the digest the tarball must have (versions of the table below have theirs).
#   --nooverlap  also build the stock-nooverlap tree above.
#
# The source is, in this order: --tarball PATH (or $NGINX_TARBALL); the cached copy
# target/nginx/nginx_<version>.orig.tar.gz; Debian's source package of the suite that
# ships the version (`apt-get source --download-only nginx=<debian version>`), fetched
# with a private apt configuration under target/apt/ (its own deb-src list, package lists
# and cache): the machine's apt setup (/etc/apt, /var/lib/apt/lists) is not changed.
# Failing those, for a line (1.30), any cached tarball of that line
# (target/nginx/nginx_1.30.*.orig.tar.gz, left by an earlier --tarball). A tarball of a
# version in the table must have that version's sha256 (upstream's, which Debian ships
# unchanged as its orig tarball); another version's is used as given, unless --sha256.
#
# Missing build packages are installed (root or sudo). Incremental: a tree is unpacked,
# patched and configured again only when the tarball, the patch, the header or the flags
# changed; a new libreuseport.a only relinks the patched nginx. Exit status: 0 done;
# 1 failure; 77 packages are missing and this user cannot install them, or no source for
# a version could be had (ctest reports a skip; a failure when CI is set).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PATH="$HOME/.cargo/bin:$PATH"

# line  version  Debian suite  sha256 of upstream's nginx-<version>.tar.gz
KNOWN="
1.22 1.22.1 bookworm 9ebb333a9e82b952acd3e2b4aeb1d4ff6406f72491bab6cd9fe69f0dea737f31
1.26 1.26.3 trixie 69ee2b237744036e61d24b836668aad3040dda461fe6f570f1787eab570c75aa
1.30 1.30.6 sid 3cf46f5ed7504d460125866b7bea99fb357f31d887e2e63b35503310e9b8b6c8
"
DEFAULT_LINES="1.22 1.26 1.30"

TARBALL=${NGINX_TARBALL:-}
WANT_SHA=""
NOOVERLAP=""
REQUESTED=()

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit "${1:-0}"
}
while [ $# -gt 0 ]; do
    case "$1" in
        --tarball) TARBALL=${2:?--tarball needs a path}; shift 2 ;;
        --tarball=*) TARBALL=${1#*=}; shift ;;
        --sha256) WANT_SHA=${2:?--sha256 needs a hex digest}; shift 2 ;;
        --nooverlap) NOOVERLAP=1; shift ;;
        --nginx-version) REQUESTED+=("${2:?--nginx-version needs a version}"); shift 2 ;; # older spelling
        -h|--help) usage 0 ;;
        -*) echo "build-nginx.sh: unknown argument: $1" >&2; usage 1 >&2 ;;
        *) REQUESTED+=("$1"); shift ;;
    esac
done

say() { printf '==> %s\n' "$*"; }
die() { printf 'build-nginx.sh: error: %s\n' "$*" >&2; exit 1; }
# No source for a version: a skip for ctest, a failure in CI.
no_source() {
    printf 'build-nginx.sh: %s\n' "$*" >&2
    if [ -n "${CI:-}" ]; then exit 1; fi
    exit 77
}

CACHE_DIR=$ROOT/target/nginx
BUILD_ROOT=$CACHE_DIR/build
APT_DIR=$ROOT/target/apt
LIB=$ROOT/target/release/libreuseport.a
# The header and rustc's list of the system libraries the static library needs, as the
# CMake build makes them (cmake/CargoBuild.cmake, the same cargo arguments: one build).
HEADER=$CACHE_DIR/include/reuseport.h
NATIVE_LIBS=$CACHE_DIR/native-static-libs.txt
mkdir -p "$CACHE_DIR" "$BUILD_ROOT"

line_of() { printf '%s' "$1" | cut -d. -f1,2; }
known_field() { # known_field LINE-OR-VERSION COLUMN (2 version, 3 suite, 4 sha256)
    awk -v k="$1" -v c="$2" 'NF == 4 && ($1 == k || $2 == k) { print $c }' <<<"$KNOWN"
}

# Root, or sudo, for apt-get. Without either, a missing package is exit 77 (a skip for
# ctest) unless CI is set, where it is a failure.
as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "build-nginx.sh: needs root or sudo to run: $*" >&2
        if [ -n "${CI:-}" ]; then exit 1; fi
        exit 77
    fi
}

# --- 1. build packages ------------------------------------------------------------------
# libssl-dev: the HTTP/3 (QUIC) module of nginx >= 1.25, built into both kinds so that
# `listen ... quic reuseport` can be tested next to the library's TCP listeners.
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
if command -v dpkg-query >/dev/null 2>&1; then
    missing=""
    for pkg in build-essential libpcre3-dev zlib1g-dev libssl-dev patch; do
        installed "$pkg" || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        say "installing:$missing"
        as_root apt-get update -qq
        # shellcheck disable=SC2086 # the package list is split on purpose
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
else
    say "not a Debian system: assuming a C compiler, make, patch, PCRE, zlib and OpenSSL headers are there"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust (https://rustup.rs) first"

# --- 2. the library ---------------------------------------------------------------------
say "cargo rustc --release --lib (cmake/CargoBuild.cmake)"
command -v cmake >/dev/null 2>&1 || die "cmake not found: run scripts/install-deps.sh"
cmake -DCARGO=cargo -DSOURCE_DIR="$ROOT" -DTARGET_DIR="$ROOT/target" -DPROFILE=release \
    -DHEADER_OUT="$HEADER" -DNATIVE_LIBS_OUT="$NATIVE_LIBS" -P "$ROOT/cmake/CargoBuild.cmake" \
    || die "the library did not build"
[ -f "$LIB" ] || die "cargo did not produce $LIB"
[ -f "$HEADER" ] || die "$HEADER is missing"

# --- 3. the nginx source ----------------------------------------------------------------
sha_of() { sha256sum "$1" | cut -d' ' -f1; }
# The version a tarball holds, from its src/core/nginx.h.
version_in() {
    tar -xzOf "$1" --wildcards '*/src/core/nginx.h' 2>/dev/null \
        | sed -n 's/^#define NGINX_VERSION *"\([^"]*\)".*/\1/p' | head -n 1
}

# shellcheck source=scripts/lib/private-apt.sh
. "$ROOT/scripts/lib/private-apt.sh"

# Downloads Debian's orig tarball of VERSION into the cache: each Debian revision of it
# in turn (they share one orig tarball, and a mirror may lack one revision's files).
fetch_debian_source() {
    local version=$1 suite=$2 tmp v
    command -v apt-get >/dev/null 2>&1 || return 1
    # One list for every suite of the table: one update serves all the versions.
    # shellcheck disable=SC2046 # one suite per word
    private_apt_update $(awk 'NF == 4 { print $3 }' <<<"$KNOWN" | sort -u) || return 1
    tmp=$(private_apt_tmpdir)
    for v in $(private_apt_source_versions nginx); do
        case "$v" in
            "$version"-*|*:"$version"-*) ;;
            *) continue ;;
        esac
        say "apt-get source --download-only nginx=$v (private apt configuration, $suite)"
        (cd "$tmp" && private_apt_get source --download-only -qq "nginx=$v") >/dev/null 2>&1 || true
        if [ -f "$tmp/nginx_$version.orig.tar.gz" ]; then
            cp "$tmp/nginx_$version.orig.tar.gz" "$CACHE_DIR/nginx_$version.orig.tar.gz.tmp"
            mv "$CACHE_DIR/nginx_$version.orig.tar.gz.tmp" "$CACHE_DIR/nginx_$version.orig.tar.gz"
            rm -rf "$tmp"
            return 0
        fi
    done
    rm -rf "$tmp"
    return 1
}

# Sets SOURCE and VERSION for a requested line or version (or for --tarball).
find_source() {
    local req=$1 line version suite newest
    if [ -n "$TARBALL" ]; then
        [ -f "$TARBALL" ] || die "--tarball $TARBALL: no such file"
        VERSION=$(version_in "$TARBALL")
        [ -n "$VERSION" ] || die "$TARBALL: no src/core/nginx.h with NGINX_VERSION in it: not an nginx source tarball"
        if [ -n "$req" ] && [ "$req" != "$VERSION" ] && [ "$req" != "$(line_of "$VERSION")" ]; then
            die "--tarball $TARBALL holds nginx $VERSION, not $req"
        fi
        say "nginx $VERSION source: $TARBALL"
        SOURCE=$TARBALL
        return
    fi
    line=$(line_of "$req")
    version=$req
    [ "$req" = "$line" ] && version=$(known_field "$line" 2)
    [ -n "$version" ] || die "nginx $req: not a version this script knows (have: $DEFAULT_LINES); pass --tarball PATH"
    VERSION=$version
    SOURCE=$CACHE_DIR/nginx_$version.orig.tar.gz
    if [ -f "$SOURCE" ]; then
        say "nginx $version source: $SOURCE (cached)"
        return
    fi
    suite=$(known_field "$version" 3)
    if [ -n "$suite" ] && fetch_debian_source "$version" "$suite"; then
        say "nginx $version source: Debian's source package ($suite)"
        return
    fi
    # The suite's pool may lag its index (the source package listed, its files not yet
    # served): a tarball of the same line given earlier with --tarball is used instead.
    newest=$(find "$CACHE_DIR" -maxdepth 1 -name "nginx_$line.*.orig.tar.gz" -printf '%f\n' | sort -V | tail -n 1)
    if [ -n "$newest" ] && [ "$req" = "$line" ]; then
        SOURCE=$CACHE_DIR/$newest
        VERSION=$(version_in "$SOURCE")
        say "nginx $line: Debian's $version could not be downloaded; using the cached $newest (nginx $VERSION)"
        return
    fi
    no_source "no source for nginx $version: not cached, and Debian's source package (${suite:-no suite}) could not be downloaded; pass --tarball PATH"
}

# --- 4. the two trees -------------------------------------------------------------------
build_version() {
    local req=$1 got known line
    find_source "$req"
    line=$(line_of "$VERSION")
    got=$(sha_of "$SOURCE")
    known=${WANT_SHA:-$(known_field "$VERSION" 4)}
    if [ -n "$known" ]; then
        [ "$got" = "$known" ] || die "$SOURCE: sha256 is $got, expected $known (upstream nginx-$VERSION.tar.gz); \
remove it if it is a stale cached copy, or pass the right tarball"
        say "sha256 ok: $got"
    else
        say "nginx $VERSION is not in this script's table: its tarball is used as given (sha256 $got)"
    fi
    CACHED=$CACHE_DIR/nginx_$VERSION.orig.tar.gz
    if [ "$SOURCE" != "$CACHED" ]; then
        cp "$SOURCE" "$CACHED.tmp" && mv "$CACHED.tmp" "$CACHED"
    fi
    HOOKS=$("$ROOT/scripts/nginx-patch.sh" --hooks "$VERSION") \
        || die "no reuseport patch for nginx $VERSION (c-examples/nginx/hooks/): see docs/nginx.md, porting"
    BUILD_DIR=$BUILD_ROOT/$VERSION
    mkdir -p "$BUILD_DIR"
    PATCH=$BUILD_DIR/nginx-$VERSION-reuseport.patch
    "$ROOT/scripts/nginx-patch.sh" "$VERSION" >"$PATCH.tmp" && mv "$PATCH.tmp" "$PATCH"

    # Identical flags for both kinds, so the only difference is the patch and the library:
    # default modules plus the stream module (so `listen ... reuseport` in stream{} is
    # covered too) and, from 1.25 on, HTTP/3 (OpenSSL's QUIC compatibility layer with
    # Debian 12's OpenSSL 3.0). -I include is given to both (harmless for stock) so that
    # the compiler flags are the same.
    common_flags=(--with-stream "--with-cc-opt=-I$CACHE_DIR/include -O2 -g")
    case "$line" in
        1.2[0-4]) ;;
        *) common_flags+=(--with-http_ssl_module --with-http_v3_module) ;;
    esac
    # Only the patched nginx gets the library on its link line: stock nginx calls none of
    # its functions, and the baseline must stay exactly upstream nginx. Static library after
    # nginx's objects (nginx's Makefile puts --with-ld-opt there), then the system libraries
    # rustc names for it.
    patched_ld="$LIB $(cat "$NATIVE_LIBS")"
    build_tree stock
    build_tree patched
    if [ -n "$NOOVERLAP" ]; then build_tree stock-nooverlap; fi
}

# The stock-nooverlap tree: on a reload, nginx's master starts the new workers, sleeps
# 100 ms ("allow new processes to start") and only then tells the old ones to quit, so
# for those 100 ms both generations accept from the same inherited sockets. Without the
# sleep they do not overlap; nothing else changes.
NOOVERLAP_FILE=src/os/unix/ngx_process_cycle.c
NOOVERLAP_SED='/allow new processes to start/{n;s/^\([[:space:]]*\)ngx_msleep(100);/\1\/* no overlap (build-nginx.sh --nooverlap) *\//}'
remove_overlap() {
    local src=$1
    sed -i "$NOOVERLAP_SED" "$src/$NOOVERLAP_FILE"
    grep -q 'no overlap (build-nginx.sh --nooverlap)' "$src/$NOOVERLAP_FILE" \
        || die "$VERSION stock-nooverlap: the master's 100 ms wait was not found in $NOOVERLAP_FILE"
}

# What a tree's unpacked, patched and configured state depends on.
source_stamp() {
    local kind=$1
    {
        echo "nginx $VERSION $(sha_of "$SOURCE")"
        printf '%s\n' "${common_flags[@]}"
        if [ "$kind" = patched ]; then
            echo "ld: $patched_ld"
            sha_of "$PATCH"
            sha_of "$HEADER"
        fi
        if [ "$kind" = stock-nooverlap ]; then echo "$NOOVERLAP_SED"; fi
    } | sha256sum | cut -d' ' -f1
}

build_tree() {
    local kind=$1 src prefix stamp want relink="" configure
    src=$BUILD_DIR/$kind
    prefix=$ROOT/target/nginx-$line-$kind
    stamp=$BUILD_DIR/$kind.stamp
    want="source $(source_stamp "$kind")"
    [ "$kind" = patched ] && want="$want
lib $(sha_of "$LIB")"

    if [ -f "$stamp" ] && [ -x "$prefix/sbin/nginx" ] && [ -d "$src/objs" ]; then
        if [ "$(cat "$stamp")" = "$want" ]; then
            say "$VERSION $kind: up to date ($prefix/sbin/nginx)"
            return
        fi
        if [ "$(head -n 1 "$stamp")" = "$(head -n 1 <<<"$want")" ]; then
            relink=1 # same source, patch and flags: only libreuseport.a changed
        fi
    fi
    # No stale nginx stays installed if this build fails.
    rm -f "$stamp"
    rm -rf "$prefix"

    if [ -n "$relink" ]; then
        say "$VERSION $kind: libreuseport.a changed: relinking"
        rm -f "$src/objs/nginx"
    else
        say "$VERSION $kind: unpacking into $src"
        rm -rf "$src"
        mkdir -p "$src"
        tar -xzf "$SOURCE" -C "$src" --strip-components=1
        if [ "$kind" = patched ]; then
            say "$VERSION $kind: patch -p1 < ${PATCH#"$ROOT"/} (hooks: ${HOOKS#"$ROOT"/})"
            (cd "$src" && patch -p1 --forward --batch < "$PATCH" >"$src/patch.log") \
                || { cat "$src/patch.log" >&2; die "the patch does not apply to nginx $VERSION"; }
        fi
        if [ "$kind" = stock-nooverlap ]; then remove_overlap "$src"; fi
        local flags=(--prefix="$prefix" "${common_flags[@]}")
        [ "$kind" = patched ] && flags+=("--with-ld-opt=$patched_ld")
        # A release tarball has ./configure; a `git archive` of the repository auto/configure.
        configure=./configure
        [ -x "$src/configure" ] || configure=auto/configure
        say "$VERSION $kind: $configure ${flags[*]}"
        (cd "$src" && $configure "${flags[@]}" >"$src/configure.log" 2>&1) \
            || { tail -n 30 "$src/configure.log" >&2; die "$VERSION $kind: configure failed (log: $src/configure.log)"; }
    fi

    say "$VERSION $kind: make -j$(nproc)"
    (cd "$src" && make -j"$(nproc)" >"$src/make.log" 2>&1) \
        || { grep -E 'error|Error' "$src/make.log" | head -n 30 >&2; die "$VERSION $kind: make failed (log: $src/make.log)"; }
    say "$VERSION $kind: make install -> $prefix"
    (cd "$src" && make install >"$src/install.log" 2>&1) || die "$VERSION $kind: make install failed (log: $src/install.log)"
    [ -x "$prefix/sbin/nginx" ] || die "$VERSION $kind: $prefix/sbin/nginx was not installed"
    echo "$want" >"$stamp"
    "$prefix/sbin/nginx" -V 2>&1 | sed -n "1s/^/    $kind: /p"
}

if [ ${#REQUESTED[@]} = 0 ]; then
    if [ -n "$TARBALL" ]; then REQUESTED=(""); else read -r -a REQUESTED <<<"$DEFAULT_LINES"; fi
fi
[ -z "$TARBALL" ] || [ ${#REQUESTED[@]} = 1 ] || die "--tarball builds one version; give at most one"
built=()
for req in "${REQUESTED[@]}"; do
    build_version "$req"
    built+=("$VERSION")
done
# The 1.22 builds keep their historic paths (benchmarks and docs use them).
if [ -x "$ROOT/target/nginx-1.22-stock/sbin/nginx" ]; then
    for kind in stock patched; do
        if [ -L "$ROOT/target/nginx-$kind" ] || [ ! -e "$ROOT/target/nginx-$kind" ]; then
            ln -sfn "nginx-1.22-$kind" "$ROOT/target/nginx-$kind"
        elif [ -d "$ROOT/target/nginx-$kind" ]; then # a build of this script's earlier layout
            rm -rf "$ROOT/target/nginx-$kind"
            ln -sfn "nginx-1.22-$kind" "$ROOT/target/nginx-$kind"
        fi
    done
fi
say "done: nginx ${built[*]}: target/nginx-<line>-stock and target/nginx-<line>-patched"
