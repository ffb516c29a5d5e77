#!/bin/bash
# Prints the reuseport patch for one nginx version: that version's hooks
# (c-examples/nginx/hooks/nginx-<version>.patch, else nginx-<major.minor>.patch for the
# whole stable line) followed by the glue every version shares, added as the new files
# src/core/ngx_reuseport.c and src/core/ngx_reuseport.h (c-examples/nginx/glue/).
#
# One copy of the glue: the hooks are what differs between nginx versions (a few lines
# each in nginx's own files); the glue (the calls into the library) does not, so a fix to
# it reaches every version at once.
#
# Usage: scripts/nginx-patch.sh VERSION            the patch, on stdout
#        scripts/nginx-patch.sh --hooks VERSION    the path of the hooks patch it uses
#        scripts/nginx-patch.sh --versions         the versions (lines) it has hooks for
#        scripts/nginx-patch.sh --check            each committed c-examples/nginx/
#                                                  nginx-<v>-reuseport.patch is what this
#                                                  prints for <v> (exit 1 if not)
#        scripts/nginx-patch.sh --write            rewrites those committed patches
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$ROOT/c-examples/nginx
GLUE=(ngx_reuseport.c ngx_reuseport.h)

die() { printf 'nginx-patch.sh: %s\n' "$*" >&2; exit 1; }

# The hooks of nginx VERSION: an exact match first, then its stable line (1.30.6 -> 1.30).
hooks_of() {
    local v=$1 line
    line=$(printf '%s' "$v" | cut -d. -f1,2)
    if [ -f "$DIR/hooks/nginx-$v.patch" ]; then
        echo "$DIR/hooks/nginx-$v.patch"
    elif [ -f "$DIR/hooks/nginx-$line.patch" ]; then
        echo "$DIR/hooks/nginx-$line.patch"
    else
        return 1
    fi
}

versions() {
    find "$DIR/hooks" -name 'nginx-*.patch' -printf '%f\n' | sed -e 's/^nginx-//' -e 's/\.patch$//' | sort -V
}

# A new file as `diff -ruN` writes it, without timestamps (so the output is reproducible).
new_file_diff() {
    local name=$1 path=$DIR/glue/$1 n
    n=$(wc -l <"$path")
    printf 'diff -ruN a/src/core/%s b/src/core/%s\n' "$name" "$name"
    printf -- '--- a/src/core/%s\n+++ b/src/core/%s\n' "$name" "$name"
    printf '@@ -0,0 +1,%d @@\n' "$n"
    sed 's/^/+/' "$path"
}

patch_of() {
    local hooks
    hooks=$(hooks_of "$1") || die "no hooks for nginx $1 (have: $(versions | xargs)); see docs/nginx.md, porting"
    cat "$hooks"
    for f in "${GLUE[@]}"; do new_file_diff "$f"; done
}

committed_patches() {
    find "$DIR" -maxdepth 1 -name 'nginx-*-reuseport.patch' | sort
}

case "${1:-}" in
    --hooks) hooks_of "${2:?--hooks needs a version}" || die "no hooks for nginx $2" ;;
    --versions) versions ;;
    --check)
        status=0
        for p in $(committed_patches); do
            v=$(basename "$p" | sed -e 's/^nginx-//' -e 's/-reuseport\.patch$//')
            if ! patch_of "$v" | cmp -s - "$p"; then
                echo "nginx-patch.sh: ${p#"$ROOT"/} differs from hooks + glue: edit c-examples/nginx/glue or hooks, then run scripts/nginx-patch.sh --write" >&2
                status=1
            fi
        done
        for v in $(versions); do
            [ -f "$DIR/nginx-$v-reuseport.patch" ] || { echo "nginx-patch.sh: c-examples/nginx/nginx-$v-reuseport.patch is missing: run scripts/nginx-patch.sh --write" >&2; status=1; }
        done
        [ $status = 0 ] && echo "nginx patches match hooks + glue: $(versions | xargs)"
        exit $status ;;
    --write)
        for v in $(versions); do
            patch_of "$v" >"$DIR/nginx-$v-reuseport.patch.tmp"
            mv "$DIR/nginx-$v-reuseport.patch.tmp" "$DIR/nginx-$v-reuseport.patch"
            echo "wrote c-examples/nginx/nginx-$v-reuseport.patch"
        done ;;
    ""|-h|--help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' ;;
    -*) die "unknown option $1" ;;
    *) patch_of "$1" ;;
esac
