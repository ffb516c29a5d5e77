#!/bin/bash
# Builds Debian's own nginx source package with the reuseport patch and the library:
# installable .debs (nginx, nginx-common, the module packages...) of the version the
# suite ships, with "+reuseport1" appended to it.
#
# Usage: scripts/build-nginx-deb.sh [--suite SUITE]    (default: bookworm, Debian 12)
#
# 1. `apt-get source nginx` of the suite, through a private apt configuration
#    (target/apt-<suite>: its own deb-src list, package lists and cache; the machine's
#    apt setup is not changed), into target/nginx-deb/<suite>/.
# 2. The patch for that nginx version (scripts/nginx-patch.sh: hooks plus the shared
#    glue) becomes debian/patches/reuseport.patch, last in debian/patches/series; a
#    changelog entry names the new version.
# 3. Build dependencies: `apt-get build-dep` of the unpacked source (installs from the
#    machine's own package lists; root).
# 4. The library (target/release/libreuseport.a, the header) is built as for
#    scripts/build-nginx.sh and given to Debian's build through dpkg-buildflags'
#    environment: DEB_CFLAGS_APPEND (-I the header's directory) and DEB_LDFLAGS_APPEND (the
#    static library and the system libraries it needs; nginx puts its --with-ld-opt after
#    its objects).
# 5. dpkg-buildpackage -b -uc -us: the .debs land in target/nginx-deb/<suite>/.
# 6. Debian's own nginx and nginx-common binary packages of the same version (`apt-get
#    download`, same private configuration), unpacked beside them: the stock binary a
#    user runs after `apt install nginx`, for the adoption scenarios (stock package to
#    patched package and back). Prefixes: target/nginx-deb-<suite>-patched and
#    target/nginx-deb-<suite>-stock.
#
# Incremental: nothing is rebuilt when the source version, the patch and the library are
# those of the last build. Prints the directory of the .debs last. Exit 77 when this user
# cannot install packages, or the suite's source cannot be downloaded (a failure in CI).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PATH="$HOME/.cargo/bin:$PATH"
SUITE=bookworm
while [ $# -gt 0 ]; do
    case "$1" in
        --suite) SUITE=${2:?--suite needs a suite name}; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-nginx-deb.sh: unknown argument: $1" >&2; exit 1 ;;
    esac
done

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-nginx-deb.sh: error: %s\n' "$*" >&2; exit 1; }
skip() {
    printf 'build-nginx-deb.sh: %s\n' "$*" >&2
    if [ -n "${CI:-}" ]; then exit 1; fi
    exit 77
}
[ "$(id -u)" = 0 ] || skip "needs root (apt-get build-dep)"
command -v apt-get >/dev/null 2>&1 || skip "not a Debian system"

OUT=$ROOT/target/nginx-deb/$SUITE
APT_DIR=$ROOT/target/apt-$SUITE
CACHE_DIR=$ROOT/target/nginx
HEADER=$CACHE_DIR/include/reuseport.h
NATIVE_LIBS=$CACHE_DIR/native-static-libs.txt
LIB=$ROOT/target/release/libreuseport.a
mkdir -p "$OUT"

# shellcheck source=scripts/lib/private-apt.sh
. "$ROOT/scripts/lib/private-apt.sh"

for pkg in dpkg-dev build-essential fakeroot quilt; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" && continue
    say "installing $pkg"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null; } \
        || die "could not install $pkg"
done

# --- the library ----------------------------------------------------------------------
say "cargo rustc --release --lib (cmake/CargoBuild.cmake)"
cmake -DCARGO=cargo -DSOURCE_DIR="$ROOT" -DTARGET_DIR="$ROOT/target" -DPROFILE=release \
    -DHEADER_OUT="$HEADER" -DNATIVE_LIBS_OUT="$NATIVE_LIBS" -P "$ROOT/cmake/CargoBuild.cmake" >&2 \
    || die "the library did not build"

# --- Debian's source ------------------------------------------------------------------
APT_BINARIES=1 private_apt_update "$SUITE" || skip "apt-get update of $SUITE's package lists failed"
src_dir=""
for v in $(private_apt_source_versions nginx); do
    upstream=${v#*:}
    upstream=${upstream%-*}
    if [ -d "$OUT/src-$v/nginx-$upstream/debian" ]; then
        src_dir=$OUT/src-$v/nginx-$upstream
        DEB_VERSION=$v
        break
    fi
    tmp=$(private_apt_tmpdir)
    say "apt-get source nginx=$v ($SUITE, private apt configuration)"
    if (cd "$tmp" && private_apt_get source -qq "nginx=$v" >/dev/null 2>&1) && [ -d "$tmp/nginx-$upstream/debian" ]; then
        rm -rf "$OUT/src-$v"
        mv "$tmp" "$OUT/src-$v"
        src_dir=$OUT/src-$v/nginx-$upstream
        DEB_VERSION=$v
        break
    fi
    rm -rf "$tmp"
done
[ -n "$src_dir" ] || skip "no nginx source package of $SUITE could be downloaded (versions: $(private_apt_source_versions nginx | xargs))"
UPSTREAM=${DEB_VERSION#*:}
UPSTREAM=${UPSTREAM%-*}
NEW_VERSION=$DEB_VERSION+reuseport1
PATCH=$src_dir/debian/patches/reuseport.patch

stamp_want=$( { echo "$NEW_VERSION"; "$ROOT/scripts/nginx-patch.sh" "$UPSTREAM" | sha256sum; sha256sum <"$LIB"; cat "$NATIVE_LIBS"; } | sha256sum | cut -d' ' -f1)
# The packaged binary unpacked (dpkg-deb -x of the nginx and nginx-common packages) into
# target/nginx-deb/<suite>/root, and an nginx prefix for the scenarios beside it:
# target/nginx-deb-<suite>-patched/sbin/nginx and conf/ (Debian's /etc/nginx).
unpack() {
    local root=$OUT/root prefix=$ROOT/target/nginx-deb-$SUITE-patched deb
    rm -rf "$root" "$prefix"
    mkdir -p "$root" "$prefix/sbin"
    for deb in "$OUT"/nginx_*+reuseport1_*.deb "$OUT"/nginx-common_*+reuseport1_*.deb; do
        [ -f "$deb" ] || die "no $deb among the built packages"
        dpkg-deb -x "$deb" "$root"
    done
    ln -s "$root/usr/sbin/nginx" "$prefix/sbin/nginx"
    ln -s "$root/etc/nginx" "$prefix/conf"
    say "unpacked: $root; prefix for the scenarios: $prefix"
}

# Debian's own binary packages of the version built, unpacked into
# target/nginx-deb/<suite>/stock-root, and the prefix target/nginx-deb-<suite>-stock.
stock_package() {
    local root=$OUT/stock-root prefix=$ROOT/target/nginx-deb-$SUITE-stock dir=$OUT/stock tmp deb
    if ! ls "$dir"/nginx_"${DEB_VERSION#*:}"_*.deb "$dir"/nginx-common_"${DEB_VERSION#*:}"_*.deb >/dev/null 2>&1; then
        tmp=$(private_apt_tmpdir)
        say "apt-get download nginx=$DEB_VERSION nginx-common=$DEB_VERSION (Debian's own binaries, private apt configuration)"
        (cd "$tmp" && private_apt_get download -qq "nginx=$DEB_VERSION" "nginx-common=$DEB_VERSION" >/dev/null 2>&1) \
            || { rm -rf "$tmp"; die "Debian's nginx $DEB_VERSION binary packages could not be downloaded from $APT_MIRROR $SUITE (the adoption scenarios need them)"; }
        rm -rf "$dir"
        mv "$tmp" "$dir"
    fi
    if [ -x "$prefix/sbin/nginx" ] && [ "$(cat "$root/.version" 2>/dev/null)" = "$DEB_VERSION" ]; then
        return 0
    fi
    rm -rf "$root" "$prefix"
    mkdir -p "$root" "$prefix/sbin"
    for deb in "$dir"/nginx_*.deb "$dir"/nginx-common_*.deb; do
        dpkg-deb -x "$deb" "$root"
    done
    echo "$DEB_VERSION" >"$root/.version"
    ln -s "$root/usr/sbin/nginx" "$prefix/sbin/nginx"
    ln -s "$root/etc/nginx" "$prefix/conf"
    say "Debian's nginx $DEB_VERSION unpacked: $root; prefix for the scenarios: $prefix"
}

if [ -f "$OUT/stamp" ] && [ "$(cat "$OUT/stamp")" = "$stamp_want" ] && ls "$OUT"/nginx_*+reuseport1_*.deb >/dev/null 2>&1; then
    say "up to date: $OUT"
    [ -x "$ROOT/target/nginx-deb-$SUITE-patched/sbin/nginx" ] || unpack
    stock_package
    echo "$OUT"
    exit 0
fi
rm -f "$OUT/stamp" "$OUT"/*.deb "$OUT"/*.buildinfo "$OUT"/*.changes

# --- patch, changelog -----------------------------------------------------------------
say "debian/patches/reuseport.patch: scripts/nginx-patch.sh $UPSTREAM"
"$ROOT/scripts/nginx-patch.sh" "$UPSTREAM" >"$PATCH.new"
if [ -f "$src_dir/.pc/applied-patches" ] && grep -qx reuseport.patch "$src_dir/.pc/applied-patches"; then
    (cd "$src_dir" && QUILT_PATCHES=debian/patches quilt pop -q reuseport.patch >/dev/null 2>&1 || QUILT_PATCHES=debian/patches quilt pop -aq >/dev/null)
fi
mv "$PATCH.new" "$PATCH"
grep -qx reuseport.patch "$src_dir/debian/patches/series" || echo reuseport.patch >>"$src_dir/debian/patches/series"
(cd "$src_dir" && QUILT_PATCHES=debian/patches quilt push -aq >/dev/null) \
    || die "the reuseport patch does not apply on top of Debian's patches (nginx $DEB_VERSION)"
if ! head -n 1 "$src_dir/debian/changelog" | grep -qF "($NEW_VERSION)"; then
    {
        echo "nginx ($NEW_VERSION) $SUITE; urgency=medium"
        echo
        echo "  * listen ... reuseport through the reuseport library (debian/patches/reuseport.patch)."
        echo
        echo " -- reuseport <reuseport@localhost>  $(date -R)"
        echo
        cat "$src_dir/debian/changelog"
    } >"$src_dir/debian/changelog.new"
    mv "$src_dir/debian/changelog.new" "$src_dir/debian/changelog"
fi

# --- build dependencies, build ----------------------------------------------------------
say "apt-get build-dep $src_dir"
DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -qq "$src_dir" >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get build-dep -y -qq "$src_dir" >/dev/null; } \
    || die "apt-get build-dep failed"

say "dpkg-buildpackage -b -uc -us (log: $OUT/build.log)"
export DEB_CFLAGS_APPEND="-I$(dirname "$HEADER")"
DEB_LDFLAGS_APPEND="$LIB $(cat "$NATIVE_LIBS")"
export DEB_LDFLAGS_APPEND
export DEB_BUILD_OPTIONS="parallel=$(nproc) nocheck"
(cd "$src_dir" && dpkg-buildpackage -b -uc -us >"$OUT/build.log" 2>&1) \
    || { tail -n 30 "$OUT/build.log" >&2; die "dpkg-buildpackage failed (log: $OUT/build.log)"; }
mv "$(dirname "$src_dir")"/*.deb "$OUT"/
mv "$(dirname "$src_dir")"/*.buildinfo "$(dirname "$src_dir")"/*.changes "$OUT"/ 2>/dev/null || true
unpack
stock_package
echo "$stamp_want" >"$OUT/stamp"
say "built: $(cd "$OUT" && ls ./*.deb | xargs)"
echo "$OUT"
