#!/bin/bash
# Builds nginx twice from the same upstream source, with the same flags:
#   target/nginx-stock    upstream nginx, unmodified (the baseline)
#   target/nginx-patched  with c-examples/nginx/nginx-<version>-reuseport.patch applied,
#                         linked with the library (target/release/libreuseport.a)
# Each is a standard nginx prefix: sbin/nginx, conf/, html/, logs/.
#
# Usage: scripts/build-nginx.sh [--tarball PATH] [--nginx-version V --sha256 HEX]
#
# The source is, in this order: --tarball PATH (or $NGINX_TARBALL); the cached copy
# target/nginx/nginx_<version>.orig.tar.gz; Debian's source package (`apt-get source
# --download-only nginx`, adding a deb-src entry when the machine has none). Whatever it
# is, its sha256 must be the one below (that of upstream's nginx-<version>.tar.gz, which
# Debian ships unchanged as its orig tarball). Missing build packages are installed (root
# or sudo). Incremental: a tree is unpacked, patched and configured again only when the
# tarball, the patch (and the files beside it), the header or the flags changed; a new
# libreuseport.a only relinks the patched nginx. Exit status: 0 done; 1 failure; 77
# packages are missing and this user cannot install them (ctest reports a skip; not in CI).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PATH="$HOME/.cargo/bin:$PATH"

NGINX_VERSION=1.22.1
NGINX_SHA256=9ebb333a9e82b952acd3e2b4aeb1d4ff6406f72491bab6cd9fe69f0dea737f31
TARBALL=${NGINX_TARBALL:-}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit "${1:-0}"
}
while [ $# -gt 0 ]; do
    case "$1" in
        --tarball) TARBALL=${2:?--tarball needs a path}; shift 2 ;;
        --tarball=*) TARBALL=${1#*=}; shift ;;
        --nginx-version) NGINX_VERSION=${2:?--nginx-version needs a version}; shift 2 ;;
        --sha256) NGINX_SHA256=${2:?--sha256 needs a hex digest}; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "build-nginx.sh: unknown argument: $1" >&2; usage 1 >&2 ;;
    esac
done

say() { printf '==> %s\n' "$*"; }
die() { printf 'build-nginx.sh: error: %s\n' "$*" >&2; exit 1; }

CACHE_DIR=$ROOT/target/nginx
CACHED=$CACHE_DIR/nginx_$NGINX_VERSION.orig.tar.gz
BUILD_DIR=$CACHE_DIR/build
PATCH_DIR=$ROOT/c-examples/nginx
PATCH=$PATCH_DIR/nginx-$NGINX_VERSION-reuseport.patch
LIB=$ROOT/target/release/libreuseport.a
# The header and rustc's list of the system libraries the static library needs, as the
# CMake build makes them (cmake/CargoBuild.cmake, the same cargo arguments: one build).
HEADER=$CACHE_DIR/include/reuseport.h
NATIVE_LIBS=$CACHE_DIR/native-static-libs.txt
mkdir -p "$CACHE_DIR" "$BUILD_DIR"

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
APT_UPDATED=""
apt_update() {
    say "apt-get update"
    as_root apt-get update -qq
    APT_UPDATED=1
}

# --- 1. build packages ------------------------------------------------------------------
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
if command -v dpkg-query >/dev/null 2>&1; then
    missing=""
    for pkg in build-essential libpcre3-dev zlib1g-dev patch; do
        installed "$pkg" || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        say "installing:$missing"
        apt_update
        # shellcheck disable=SC2086 # the package list is split on purpose
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
else
    say "not a Debian system: assuming a C compiler, make, patch, PCRE and zlib headers are there"
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

has_deb_src() {
    # deb-src in a one-line list, or a deb822 stanza whose Types include deb-src.
    grep -Eqs '^[[:space:]]*deb-src[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        || grep -Eiqs '^Types:.*([[:space:]]|:)deb-src([[:space:]]|$)' /etc/apt/sources.list.d/*.sources
}

# Writes a deb-src entry mirroring the machine's deb entries: a deb822 file beside
# debian.sources (Debian 12's default), or a one-line list mirroring sources.list.
add_deb_src() {
    local deb822=/etc/apt/sources.list.d/debian.sources entries
    if [ -f "$deb822" ]; then
        # Every enabled stanza whose Types include "deb": Types becomes deb-src; URIs,
        # Suites, Components and Signed-By (with its continuation lines, for an inline
        # key) are kept; comments and other fields are dropped.
        entries=$(awk '
            function flush() {
                if (isdeb && enabled && body != "") { printf "%s%s", (n++ ? "\n" : ""), "Types: deb-src\n" body }
                body = ""; isdeb = 0; enabled = 1; keep = 0
            }
            BEGIN { enabled = 1 }
            /^[[:space:]]*$/ { flush(); next }
            /^#/ { next }
            /^[ \t]/ { if (keep) body = body $0 "\n"; next }
            {
                field = tolower($0); sub(/:.*/, "", field)
                value = $0; sub(/^[^:]*:[ \t]*/, "", value)
                keep = 0
                if (field == "types") { isdeb = (" " value " " ~ /[ \t]deb[ \t]/) }
                else if (field == "enabled") { enabled = (tolower(value) != "no") }
                else if (field == "uris" || field == "suites" || field == "components" || field == "signed-by") {
                    body = body $0 "\n"; keep = 1
                }
            }
            END { flush() }' "$deb822")
        [ -n "$entries" ] || die "no deb entry in $deb822 to mirror as deb-src"
        say "adding deb-src entries: /etc/apt/sources.list.d/reuseport-src.sources"
        printf '# Added by scripts/build-nginx.sh (reuseport) for `apt-get source nginx`.\n%s\n' "$entries" \
            | as_root tee /etc/apt/sources.list.d/reuseport-src.sources >/dev/null
    elif grep -Eqs '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list; then
        say "adding deb-src lines: /etc/apt/sources.list.d/reuseport-src.list"
        { echo '# Added by scripts/build-nginx.sh (reuseport) for `apt-get source nginx`.'
          sed -n -E 's/^[[:space:]]*deb([[:space:]])/deb-src\1/p' /etc/apt/sources.list
        } | as_root tee /etc/apt/sources.list.d/reuseport-src.list >/dev/null
    else
        die "found no deb entry (in $deb822 or /etc/apt/sources.list) to mirror as deb-src; pass --tarball PATH"
    fi
}

source_versions() { apt-cache showsrc nginx 2>/dev/null | sed -n 's/^Version: //p' | sort -rV | uniq; }

# `apt-get source --download-only nginx` (the candidate version); when that fails or is
# another upstream version, each Debian revision of $NGINX_VERSION in turn: they share one
# orig tarball, and a mirror may lack one revision's files (here, the security archive's
# source pool answers 404).
download_orig() {
    local dir=$1 v
    say "apt-get source --download-only nginx (in $dir)"
    if (cd "$dir" && apt-get source --download-only -qq nginx) && [ -f "$dir/nginx_$NGINX_VERSION.orig.tar.gz" ]; then
        return 0
    fi
    say "no nginx_$NGINX_VERSION.orig.tar.gz from the candidate source package: trying each Debian revision of $NGINX_VERSION"
    for v in $(source_versions); do
        case "$v" in
            "$NGINX_VERSION"-*|*:"$NGINX_VERSION"-*) ;;
            *) continue ;;
        esac
        say "apt-get source --download-only nginx=$v"
        if (cd "$dir" && apt-get source --download-only -qq "nginx=$v") && [ -f "$dir/nginx_$NGINX_VERSION.orig.tar.gz" ]; then
            return 0
        fi
    done
    return 1
}

fetch_debian_source() {
    command -v apt-get >/dev/null 2>&1 || die "no --tarball given, none cached at $CACHED, and no apt-get to fetch Debian's"
    local tmp
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/nginx-src.XXXXXX")
    # apt downloads as its user _apt, which must be able to write there (else it warns and
    # downloads as root).
    chmod 755 "$tmp"
    if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
    # shellcheck disable=SC2064 # expand $tmp now
    trap "rm -rf '$tmp'" EXIT
    if ! has_deb_src; then
        add_deb_src
        apt_update
    fi
    if ! download_orig "$tmp"; then
        if [ -z "$APT_UPDATED" ]; then
            # A deb-src entry whose index was never fetched, or is stale: update once, retry.
            apt_update
            download_orig "$tmp" || die "could not download nginx_$NGINX_VERSION.orig.tar.gz from Debian (source versions known: $(source_versions | xargs)); pass --tarball PATH"
        else
            die "could not download nginx_$NGINX_VERSION.orig.tar.gz from Debian (source versions known: $(source_versions | xargs)); pass --tarball PATH"
        fi
    fi
    cp "$tmp/nginx_$NGINX_VERSION.orig.tar.gz" "$CACHED.tmp"
    mv "$CACHED.tmp" "$CACHED"
    rm -rf "$tmp"
    trap - EXIT
}

if [ -n "$TARBALL" ]; then
    [ -f "$TARBALL" ] || die "--tarball $TARBALL: no such file"
    say "nginx source: $TARBALL"
    SOURCE=$TARBALL
elif [ -f "$CACHED" ]; then
    say "nginx source: $CACHED (cached)"
    SOURCE=$CACHED
else
    say "nginx source: Debian's source package"
    fetch_debian_source
    SOURCE=$CACHED
fi
got=$(sha_of "$SOURCE")
if [ "$got" != "$NGINX_SHA256" ]; then
    die "$SOURCE: sha256 is $got, expected $NGINX_SHA256 (upstream nginx-$NGINX_VERSION.tar.gz); \
remove it if it is a stale cached copy, or pass the right tarball"
fi
say "sha256 ok: $NGINX_SHA256"
if [ "$SOURCE" != "$CACHED" ]; then
    cp "$SOURCE" "$CACHED.tmp" && mv "$CACHED.tmp" "$CACHED"
fi

# --- 4. the two trees -------------------------------------------------------------------
# Identical flags for both, so the only difference is the patch and the library: default
# modules plus the stream module (so `listen ... reuseport` in stream{} is covered too).
# -I include is given to both (harmless for stock) so that the compiler flags are the same.
common_flags=(--with-stream "--with-cc-opt=-I$CACHE_DIR/include -O2 -g")
# Only the patched nginx gets the library on its link line: stock nginx calls none of its
# functions (the linker would pull nothing from the archive anyway), and the baseline must
# stay exactly upstream nginx. Static library after nginx's objects (nginx's Makefile puts
# --with-ld-opt there), then the system libraries rustc names for it.
patched_ld="$LIB $(cat "$NATIVE_LIBS")"

if [ ! -f "$PATCH" ]; then
    cat >&2 <<EOF

************************************************************************************
* WARNING: $PATCH does not exist.
* target/nginx-patched is built WITHOUT the patch: it is stock nginx (linked with the
* library, which it does not call). Its scenarios test nothing of the library.
************************************************************************************

EOF
fi

# What a tree's unpacked, patched and configured state depends on.
source_stamp() {
    local kind=$1
    {
        echo "nginx $NGINX_VERSION $NGINX_SHA256"
        printf '%s\n' "${common_flags[@]}"
        if [ "$kind" = patched ]; then
            echo "ld: $patched_ld"
            if [ -f "$PATCH" ]; then sha_of "$PATCH"; else echo "no patch"; fi
            # Files beside the patch (sources it may copy in, a module config).
            find "$PATCH_DIR" -maxdepth 1 -type f ! -name README.md ! -name '*.patch' -print0 2>/dev/null \
                | sort -z | xargs -0 -r sha256sum
            sha_of "$HEADER"
        fi
    } | sha256sum | cut -d' ' -f1
}

build_tree() {
    local kind=$1 src prefix stamp want relink=""
    src=$BUILD_DIR/$kind
    prefix=$ROOT/target/nginx-$kind
    stamp=$BUILD_DIR/$kind.stamp
    want="source $(source_stamp "$kind")"
    [ "$kind" = patched ] && want="$want
lib $(sha_of "$LIB")"

    if [ -f "$stamp" ] && [ -x "$prefix/sbin/nginx" ] && [ -d "$src/objs" ]; then
        if [ "$(cat "$stamp")" = "$want" ]; then
            say "$kind: up to date ($prefix/sbin/nginx)"
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
        say "$kind: libreuseport.a changed: relinking"
        rm -f "$src/objs/nginx"
    else
        say "$kind: unpacking into $src"
        rm -rf "$src"
        mkdir -p "$src"
        tar -xzf "$SOURCE" -C "$src" --strip-components=1
        if [ "$kind" = patched ] && [ -f "$PATCH" ]; then
            say "$kind: patch -p1 < ${PATCH#"$ROOT"/}"
            (cd "$src" && patch -p1 --forward --batch < "$PATCH") || die "the patch does not apply to nginx $NGINX_VERSION"
        fi
        local flags=(--prefix="$prefix" "${common_flags[@]}")
        [ "$kind" = patched ] && flags+=("--with-ld-opt=$patched_ld")
        # A patch may come with a module of its own (c-examples/nginx/config).
        [ "$kind" = patched ] && [ -f "$PATCH_DIR/config" ] && flags+=("--add-module=$PATCH_DIR")
        say "$kind: ./configure ${flags[*]}"
        (cd "$src" && ./configure "${flags[@]}" >"$src/configure.log" 2>&1) \
            || { tail -n 30 "$src/configure.log" >&2; die "$kind: configure failed (log: $src/configure.log)"; }
    fi

    say "$kind: make -j$(nproc)"
    (cd "$src" && make -j"$(nproc)" >"$src/make.log" 2>&1) \
        || { grep -E 'error|Error' "$src/make.log" | head -n 30 >&2; die "$kind: make failed (log: $src/make.log)"; }
    say "$kind: make install -> $prefix"
    (cd "$src" && make install >"$src/install.log" 2>&1) || die "$kind: make install failed (log: $src/install.log)"
    [ -x "$prefix/sbin/nginx" ] || die "$kind: $prefix/sbin/nginx was not installed"
    echo "$want" >"$stamp"
    "$prefix/sbin/nginx" -V 2>&1 | sed -n "1s/^/    $kind: /p"
}

build_tree stock
build_tree patched
say "done: target/nginx-stock/sbin/nginx, target/nginx-patched/sbin/nginx"
