# shellcheck shell=bash
# A private apt configuration for Debian source packages: its own source list (deb-src
# entries for the suites asked for), package lists and cache under $APT_DIR (default
# target/apt), passed to apt-get and apt-cache with -o. The machine's apt setup
# (/etc/apt, /var/lib/apt/lists, /var/cache/apt) is neither read for sources nor written.
# Sourced by scripts/build-nginx.sh and scripts/build-nginx-deb.sh; needs $ROOT and say().
#
# private_apt_update SUITE...     writes the list (if it changed) and updates it when it
#                                 changed or is older than a day; APT_BINARIES=1 adds the
#                                 suites' binary packages
# private_apt_get ARGS...         apt-get with the private configuration
# private_apt_cache ARGS...       apt-cache with it
# private_apt_source_versions P   the source versions of package P it knows, newest first
# private_apt_tmpdir              a new directory apt's download user can write to

APT_DIR=${APT_DIR:-$ROOT/target/apt}
APT_MIRROR=${APT_MIRROR:-http://deb.debian.org/debian}
APT_KEYRING=${APT_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}

private_apt_opts() {
    printf '%s\n' -o "Dir::Etc::SourceList=$APT_DIR/sources.list" -o Dir::Etc::SourceParts=/dev/null \
        -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache"
}

private_apt_get() {
    local opts
    mapfile -t opts < <(private_apt_opts)
    apt-get "${opts[@]}" "$@"
}

private_apt_cache() {
    local opts
    mapfile -t opts < <(private_apt_opts)
    apt-cache "${opts[@]}" "$@"
}

# The lines for the suites, one per suite and kind (apt's one-line format takes one):
# deb-src, and deb too when APT_BINARIES=1 (Debian's own binary packages, for
# `private_apt_get download`).
private_apt_list() {
    local suite kind
    for suite in "$@"; do
        for kind in deb-src ${APT_BINARIES:+deb}; do
            printf '%s [signed-by=%s] %s %s main\n' "$kind" "$APT_KEYRING" "$APT_MIRROR" "$suite"
        done
    done
}

private_apt_update() {
    local want
    want=$(private_apt_list "$@")
    mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial"
    # apt downloads as its user _apt, which must be able to write there.
    if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then
        chown -R _apt "$APT_DIR/lists" "$APT_DIR/cache"
    fi
    if [ "$(cat "$APT_DIR/sources.list" 2>/dev/null)" = "$want" ] \
        && [ -n "$(find "$APT_DIR/lists" -maxdepth 1 -name '*Sources*' -mtime -1 2>/dev/null | head -n 1)" ]; then
        return 0
    fi
    printf '%s\n' "$want" >"$APT_DIR/sources.list"
    say "apt-get update (private configuration $APT_DIR: $*)"
    private_apt_get update -qq >/dev/null
}

private_apt_source_versions() {
    private_apt_cache showsrc "$1" 2>/dev/null | sed -n 's/^Version: //p' | sort -rV | uniq
}

private_apt_tmpdir() {
    local tmp
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/reuseport-apt.XXXXXX")
    chmod 755 "$tmp"
    if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
    echo "$tmp"
}
