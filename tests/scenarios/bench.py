#!/usr/bin/env python3
"""The loss benchmark: lifecycle scenarios under load, once per strategy, over several
rounds, side by side in one run, at saturation by default (no rate cap, 64 connections
in flight: the queues are never empty, as on a busy server); prints scenario x strategy
-> requests, failures by kind and failures per 100k connections. `none` (the kernel resets a closing listener's
queue) is the baseline.

Each run is a fresh private network namespace (root needed), as in the tests.

Usage: bench.py --server PATH --client PATH [--rounds N] [--scenarios a,b] [--strategies x,y]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

from harness import failed_of

HERE = os.path.dirname(os.path.abspath(__file__))
IN_NETNS = os.path.join(HERE, "..", "c", "in-netns.sh")

SCENARIOS = ["reload10", "workers_change", "addresses_change", "upgrade", "revert_hup", "revert_term", "kill9"]
# (strategy, net.ipv4.tcp_migrate_req)
STRATEGIES = {"none": 0, "drain-keep-backlog": 0, "drain": 0, "sysctl": 1, "bpf": 0}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--server", required=True)
    p.add_argument("--client", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--rate", type=int, default=0, help="new connections per second; 0 (default) saturates")
    p.add_argument("--concurrency", type=int, default=64)
    args = p.parse_args()
    if os.getuid() != 0:
        print("bench.py needs root: every run is a private network namespace", file=sys.stderr)
        return 2
    scenarios = args.scenarios.split(",")
    strategies = args.strategies.split(",")
    results = tempfile.mktemp(prefix="rp-bench-", suffix=".jsonl")
    total = len(scenarios) * len(strategies) * args.rounds
    done = 0
    for rnd in range(args.rounds):
        # Rounds interleave the strategies, so that drift in the machine's load hits all.
        for scenario in scenarios:
            for strategy in strategies:
                done += 1
                print(f"[{done}/{total}] round {rnd + 1}: {scenario} with {strategy}", file=sys.stderr, flush=True)
                cmd = [IN_NETNS, sys.executable, os.path.join(HERE, "run.py"), "--server", args.server,
                       "--client", args.client, "--strategy", strategy, "--sysctl", str(STRATEGIES[strategy]),
                       "--rate", str(args.rate), "--concurrency", str(args.concurrency), "--results", results,
                       scenario]
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"  run failed (exit {r.returncode}):\n{r.stdout}{r.stderr}", file=sys.stderr)

    sums = {}
    with open(results) as f:
        for line in f:
            r = json.loads(line)
            key = (r["scenario"], r["strategy"])
            acc = sums.setdefault(key, {"runs": 0, "requests": 0, "refused": 0, "reset": 0, "timeout": 0,
                                        "other": 0, "in_flight_at_death": 0})
            acc["runs"] += 1
            for k in ("requests", "refused", "reset", "timeout", "other", "in_flight_at_death"):
                acc[k] += r[k]
    os.unlink(results)

    head = ("scenario", "strategy", "runs", "requests", "refused", "reset", "timeout", "other",
            "failed per 100k", "in flight at death")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    totals = {}
    for scenario in scenarios:
        for strategy in strategies:
            a = sums.get((scenario, strategy))
            if not a:
                continue
            failed = failed_of(a)
            t = totals.setdefault(strategy, [0, 0])
            t[0] += a["requests"]
            t[1] += failed
            per100k = 100000 * failed / a["requests"] if a["requests"] else 0
            print(f"| {scenario} | {strategy} | {a['runs']} | {a['requests']} | {a['refused']} | {a['reset']} | "
                  f"{a['timeout']} | {a['other']} | {per100k:.1f} | {a['in_flight_at_death']} |")
    for strategy in strategies:
        if strategy in totals:
            req, failed = totals[strategy]
            print(f"| **all** | {strategy} | | {req} | | | | | {100000 * failed / req:.1f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
