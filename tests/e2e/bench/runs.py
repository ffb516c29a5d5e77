"""One scenario run for a benchmark: `python3 -m e2e.run ...` in a fresh network namespace
(tests/c/in-netns.sh), its results record read back."""

import json
import os
import subprocess
import sys
import tempfile
import time

from ..verdict import failed_of

__all__ = ["default", "failed_of", "require_root", "run_scenario", "IN_NETNS"]

TESTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROOT = os.path.dirname(TESTS)
IN_NETNS = os.path.join(TESTS, "c", "in-netns.sh")


def default(*parts):
    """A path in the source tree (target/..., build/...)."""
    return os.path.join(ROOT, *parts)


def require_root():
    if os.getuid() != 0:
        print("the benchmarks need root: every run is a private network namespace", file=sys.stderr)
        sys.exit(2)


def run_scenario(server_args, scenario, extra=(), timeout=None):
    """Runs `python3 -m e2e.run SERVER_ARGS... EXTRA... SCENARIO` (the records go to a
    temporary file); returns (its last results record or None, exit status, output,
    seconds)."""
    with tempfile.NamedTemporaryFile(prefix="e2e-bench-", suffix=".jsonl", delete=False) as f:
        results = f.name
    cmd = [IN_NETNS, sys.executable, "-m", "e2e.run"] + list(server_args) + ["--results", results] + list(extra) \
        + [scenario]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        out, rc = p.stdout, p.returncode
    except subprocess.TimeoutExpired as e:
        out, rc = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), -1
    took = time.monotonic() - t0
    with open(results) as f:
        lines = f.read().splitlines()
    os.unlink(results)
    return (json.loads(lines[-1]) if lines else None), rc, out, took
