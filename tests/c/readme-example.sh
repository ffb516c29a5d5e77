#!/bin/sh
# Extracts the first ```c block of the README, compiles it against the library and runs it.
# Usage: readme-example.sh README.md CC INCLUDE_DIR LIBREUSEPORT_A OUT_DIR NATIVE_LIBS
# (NATIVE_LIBS: the system libraries rustc names for the static library, "-lgcc_s ...")
set -eu
readme=$1 cc=$2 inc=$3 lib=$4 out=$5 native_libs=$6
awk '/^```c$/{on=1; next} /^```$/{if(on){exit}} on{print}' "$readme" > "$out/readme_example.c"
test -s "$out/readme_example.c" || { echo "README.md has no \`\`\`c block" >&2; exit 1; }
# shellcheck disable=SC2086 # the library list is split on purpose
"$cc" -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -I "$inc" "$out/readme_example.c" "$lib" \
    $native_libs -o "$out/readme_example"
"$out/readme_example"
