#!/bin/sh
# Extracts the first ```c block of the README, compiles it against the library and runs it.
# Usage: readme-example.sh README.md CC INCLUDE_DIR LIBREUSEPORT_A OUT_DIR
set -eu
readme=$1 cc=$2 inc=$3 lib=$4 out=$5
awk '/^```c$/{on=1; next} /^```$/{if(on){exit}} on{print}' "$readme" > "$out/readme_example.c"
test -s "$out/readme_example.c" || { echo "README.md has no \`\`\`c block" >&2; exit 1; }
"$cc" -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -I "$inc" "$out/readme_example.c" "$lib" \
    -lgcc_s -lutil -lrt -lpthread -lm -ldl -o "$out/readme_example"
"$out/readme_example"
