"""End-to-end tests: real servers (rpserver, stock and patched nginx) under load from the
counting load client, each run in its own network namespace (tests/c/in-netns.sh).

- run.py        one scenario against one server: `python3 -m e2e.run rpserver|nginx ...`
- servers/      an adapter per server: start, signal, find the workers, count what a
                dying worker held, check the listen sockets each process holds
- scenarios/    each scenario once, written against the adapters' common interface
- stall.py      the stall sequence: a worker stopped (SIGSTOP) under a load at saturation
- verdict.py    what may fail and what a stall must look like (pure; test_verdict.py)
- test_registry.py  ctest registers each scenario for the servers it applies to
- bench/        the benchmarks: `python3 -m e2e.bench loss|nginx|stall`
- table.py      the results files as Markdown tables

The processes, the load client and /proc come from tools/prefork, shared with the demo.
Both tools/ and tests/ go on PYTHONPATH (ctest and scripts/ set it)."""


class Skip(Exception):
    """The scenario cannot run here; the message says why (exit 77, ctest's skip)."""
