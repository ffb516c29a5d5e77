"""The loss benchmark: rpserver's lifecycle scenarios under load, once per strategy, over
several rounds, side by side in one run, at saturation by default (no rate cap, 64
connections in flight: the queues are never empty, as on a busy server); prints scenario
x strategy -> requests, failures by kind and failures per 100k connections. `none` (the
kernel resets a closing listener's queue) is the baseline."""

import sys

from .runs import default, failed_of, require_root, run_scenario

SCENARIOS = ["reload10", "workers_change", "addresses_change", "upgrade", "revert_hup", "revert_term", "kill9"]
# (strategy, net.ipv4.tcp_migrate_req)
STRATEGIES = {"none": 0, "drain-keep-backlog": 0, "drain": 0, "sysctl": 1, "bpf": 0}
JUDGED = ("bpf", "sysctl")
COUNTED = ("requests", "refused", "reset", "timeout", "other", "in_flight_at_death")


def add_arguments(p):
    p.add_argument("--server", default=default("build", "c-examples", "rpserver"))
    p.add_argument("--client", default=default("build", "c-examples", "loadclient"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scenarios", default=",".join(SCENARIOS))
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--rate", type=int, default=0, help="new connections per second; 0 (default) saturates")
    p.add_argument("--concurrency", type=int, default=64)


def main(args):
    require_root()
    scenarios = args.scenarios.split(",")
    strategies = args.strategies.split(",")
    total = len(scenarios) * len(strategies) * args.rounds
    sums, done = {}, 0
    for rnd in range(args.rounds):
        # Rounds interleave the strategies, so that drift in the machine's load hits all.
        for scenario in scenarios:
            for strategy in strategies:
                done += 1
                print(f"[{done}/{total}] round {rnd + 1}: {scenario} with {strategy}", file=sys.stderr, flush=True)
                server = ["rpserver", "--binary", args.server, "--client", args.client, "--strategy", strategy,
                          "--sysctl", str(STRATEGIES[strategy]), "--rate", str(args.rate),
                          "--concurrency", str(args.concurrency)] + (["--expect-zero"] if strategy in JUDGED else [])
                r, rc, out, _ = run_scenario(server, scenario)
                if rc != 0:
                    print(f"  run failed (exit {rc}):\n{out}", file=sys.stderr)
                if not r or "requests" not in r:
                    continue
                acc = sums.setdefault((scenario, strategy), dict.fromkeys(("runs",) + COUNTED, 0))
                acc["runs"] += 1
                for k in COUNTED:
                    acc[k] += r[k]

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
