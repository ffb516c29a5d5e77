"""Drives a prefork server (a master and its workers) and a load client on this machine,
for the demo (scripts/demo.py) and the end-to-end tests (tests/e2e) alike:

- wait      Failure, check() and wait_for(): the one way a step gives up
- procfs    what /proc (and ss) say about processes and their sockets
- load      c-examples/loadclient in the background, and CPU pinning
- rpserver  an rpserver installation in a directory: config, start, signals, event log

Python's standard library only. Put tools/ on PYTHONPATH to import it (scripts/demo.sh
and ctest do)."""
