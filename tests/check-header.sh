#!/bin/sh
# Fails when include/reuseport.h differs from what build.rs generates. The build (which ran
# before the tests) regenerated it, so any difference from the committed file is drift.
cd "$(dirname "$0")/.." || exit 1
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "SKIPPED: not a git checkout, nothing to compare the generated header with"
    exit 77
fi
if git ls-files --error-unmatch include/reuseport.h >/dev/null 2>&1; then
    if git diff --exit-code -- include/reuseport.h; then
        echo "include/reuseport.h matches the generated header"
        exit 0
    fi
    echo "include/reuseport.h is stale: build, then commit the regenerated header with the Rust change" >&2
    exit 1
fi
echo "include/reuseport.h is not committed" >&2
exit 1
