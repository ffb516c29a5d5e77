#!/bin/sh
# The demo: builds everything, then runs the example server with 4 workers under load
# through a reload, a worker-count change, a binary upgrade and a revert, printing a
# timeline and the final tally. Stops by itself. As root it runs in a private network
# namespace with queue migration on; otherwise on this machine's loopback.
set -eu
cd "$(dirname "$0")/.."
scripts/build.sh >/dev/null
exec env PYTHONPATH=tools python3 scripts/demo.py build/c-examples/rpserver build/c-examples/loadclient
