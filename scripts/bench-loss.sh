#!/bin/sh
# scripts/bench.sh loss: see there for what it measures and its options.
exec "$(dirname "$0")/bench.sh" loss "$@"
