"""The stall benchmark: what one stopped worker (SIGSTOP for 4 s) costs a prefork server
under a load at saturation, for four setups side by side in one run:

- stock nginx, `listen ... reuseport` (a socket per worker: the stopped worker's
  queue keeps getting its share of the new connections, and nobody accepts them);
- stock nginx, plain `listen` (one socket for all workers: the running one accepts
  everything);
- rpserver, with the library's health-aware steering (strategy bpf);
- nginx with the reuseport patch (the library, the same steering).

Each is the `stall2` scenario (`stall2_plain` for the plain listen) of e2e.run, in a
fresh private network namespace (tests/c/in-netns.sh, root needed) with
net.ipv4.tcp_migrate_req=0: 2 workers, 64 connections in flight, a new connection per
request, 2 s client timeout; the highest-pid (nginx) or last-spawned
(rpserver) worker stopped 1.5 s into the load and continued 4 s later. The library rows
run with their scenario's checks (--expect-zero);
their verdicts are listed under the table. With several rounds the setups take turns in
a rotating order, and each cell is the mean (min-max).

Prints one Markdown table on stdout, progress on stderr.
"""

import os
import platform
import statistics
import sys
import time

from ..stall import STALL_LOAD
from ..verdict import STALL_AFTER_S, STALL_S, STALL_STEADY_S
from .runs import default, require_root, run_scenario

# (label, runner, its arguments, scenario)
SETUPS = [
    ("stock nginx, `listen ... reuseport`", "nginx", ["--kind", "stock"], "stall2"),
    ("stock nginx, plain `listen`", "nginx", ["--kind", "stock"], "stall2_plain"),
    ("rpserver (library, steering)", "rpserver", ["--strategy", "bpf", "--expect-zero"], "stall2"),
    ("patched nginx (library, steering)", "nginx", ["--kind", "patched", "--expect-zero"], "stall2"),
]
COLUMNS = [("steady req/s", "steady_rate", "{:.0f}"), ("req/s during the stall", "stall_rate", "{:.0f}"),
           ("stall / steady", "stall_ratio", "{:.3f}"),
           ("accepted by the stopped worker at the stop", "accepted_at_stop", "{:.0f}"),
           ("client timeouts", "timeouts", "{:.0f}"), ("other failures", "other_failures", "{:.0f}")]


def run(args, setup, label):
    """One scenario run; (its results record or None, exit status, its FAILED lines)."""
    name, runner, extra, scenario = setup
    if runner == "nginx":
        server = ["nginx", "--prefix", args.patched if "patched" in extra else args.stock]
    else:
        server = ["rpserver", "--binary", args.server]
    server += ["--client", args.client, "--sysctl", "0"] + extra
    record, rc, out, took = run_scenario(server, scenario, timeout=300)
    failed = [line.strip() for line in out.splitlines() if ": FAILED: " in line]
    figures = (", ".join(f"{key}={record[key]}" for _, key, _ in COLUMNS if key in record)
               if record else "no record")
    print(f"  {label}: {name}: exit {rc}, {took:.1f} s: {figures}", file=sys.stderr,
          flush=True)
    if not record or "stall_rate" not in record:
        tail = [line for line in out.splitlines() if not line.startswith("loadclient: ")][-15:]
        print("    " + "\n    ".join(tail), file=sys.stderr, flush=True)
    return record, rc, failed


def cell(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "failed"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def add_arguments(p):
    p.add_argument("--stock", default=default("target", "nginx-stock"))
    p.add_argument("--patched", default=default("target", "nginx-patched"))
    p.add_argument("--server", default=default("build", "c-examples", "rpserver"))
    p.add_argument("--client", default=default("build", "c-examples", "loadclient"))
    p.add_argument("--rounds", type=int, default=1)


def main(args):
    require_root()
    for path in (os.path.join(args.stock, "sbin", "nginx"), os.path.join(args.patched, "sbin", "nginx"),
                 args.server, args.client):
        if not os.access(path, os.X_OK):
            print(f"{path} not found: run scripts/build.sh and scripts/build-nginx.sh", file=sys.stderr)
            return 2

    started = time.monotonic()
    records = {s[0]: [] for s in SETUPS}
    verdicts = {s[0]: [] for s in SETUPS}  # (round, exit status, FAILED lines) of the runs that checked
    for rnd in range(args.rounds):
        order = SETUPS[rnd % len(SETUPS):] + SETUPS[:rnd % len(SETUPS)]
        label = f"round {rnd + 1}/{args.rounds}"
        print(f"{label}", file=sys.stderr, flush=True)
        for setup in order:
            record, rc, failed = run(args, setup, label)
            records[setup[0]].append(record if record and "stall_rate" in record else None)
            if "--expect-zero" in setup[2] or not record:
                verdicts[setup[0]].append((rnd + 1, rc, failed))

    uname = platform.uname()
    print(f"One worker of two stopped (SIGSTOP) for {STALL_S:g} s under load: {STALL_LOAD['concurrency']} "
          f"connections in flight, a new connection per request, no rate cap, {STALL_LOAD['timeout_ms']} ms client "
          f"timeout; steady rate from 0.5 s to the stop at {STALL_STEADY_S:g} s and in the {STALL_AFTER_S:g} s "
          f"after SIGCONT (from +0.3 s). {args.rounds} round"
          f"{'s' if args.rounds > 1 else ''}; Linux {uname.release}, {os.cpu_count()} CPUs (the client on one, the "
          f"server on the others); net.ipv4.tcp_migrate_req=0; {(time.monotonic() - started) / 60:.1f} min.\n")
    print("| setup | " + " | ".join(c[0] for c in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, *_ in SETUPS:
        rs = records[name]
        cells = [cell([r[key] if r else None for r in rs], fmt) for _, key, fmt in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print()
    print("req/s: ok responses per second, from the load client's 100 ms timeline. Without steering, the "
          "connections in flight pile up on the stopped worker's queue until they time out.\n")
    for name, runs in verdicts.items():
        for rnd, rc, failed in runs:
            verdict = "checks passed" if rc == 0 else f"checks failed (exit {rc})"
            print(f"- {name}, round {rnd}: {verdict}" + (f": {failed[0].split(': FAILED: ', 1)[1]}" if failed else ""))
    return 0

