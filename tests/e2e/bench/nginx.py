"""The nginx comparison benchmark: a stock nginx build and the same nginx with the
reuseport patch, side by side in one run, interleaved per round (the order of the two
alternates from round to round, so that drift in the machine's load hits both):

1. throughput at saturation: the `serve` scenario (2 workers, IPv4 and IPv6) with the load
   client uncapped (--rate 0, 64 connections in flight, a new connection per request) for
   a few seconds: requests per second, and the ratio patched / stock per round;
2. lifecycle events at a fixed load (4,000 new connections per second, 32 in flight, as
   the tests): requests, failures by kind, failures per 100k, and what killed or
   fast-stopped workers held (in flight at death);
3. the listen sockets each process holds with 4 addresses x 4 workers (`sockets`).

Every run is e2e.run in a fresh private network namespace, with
net.ipv4.tcp_migrate_req=0 there, and without --expect-zero: the counts are recorded for
both builds; patched runs whose failures exceed what dead workers held are listed."""

import json
import os
import platform
import statistics
import sys
import time

from ..servers.nginx import NginxBuild
from .runs import default, failed_of, require_root, run_scenario

EVENTS = ["reload10", "workers_change", "upgrade", "revert_hup", "revert_term", "kill9_worker0", "kill9_other"]
KINDS = ("stock", "patched")


class Runner:
    def __init__(self, args):
        self.args = args
        self.prefix = {"stock": args.stock, "patched": args.patched}
        self.failures = []  # (what, exit status, output tail)
        self.over = []  # patched runs that lost more than dead workers held
        self.runs = 0

    def run(self, label, kind, scenario, extra):
        """One e2e.run run; its JSON record, or None when it failed."""
        self.runs += 1
        server = ["nginx", "--prefix", self.prefix[kind], "--kind", kind, "--client", self.args.client, "--sysctl", "0"]
        record, rc, out, took = run_scenario(server, scenario, extra)
        summary = ""
        if record and "requests" in record:
            summary = (f"requests={record['requests']} failed={failed_of(record)} "
                       f"in_flight_at_death={record['in_flight_at_death']} rate_per_s={record['rate_per_s']}")
        elif record and "listen_sockets" in record:
            summary = f"listen sockets {record['listen_sockets']}"
        print(f"  {label}: {scenario} {kind}: exit {rc}, {took:.1f} s {summary}", file=sys.stderr, flush=True)
        if rc != 0:
            self.failures.append((f"{label}: {scenario} {kind}", rc, "\n".join(out.splitlines()[-15:])))
            print("    " + "\n    ".join(out.splitlines()[-15:]), file=sys.stderr, flush=True)
        if record and "requests" in record and kind == "patched":
            allowed = record["in_flight_at_death"] + record.get("in_flight_slack", 0)
            if failed_of(record) > allowed:
                self.over.append((f"{label}: {scenario} {kind}", failed_of(record), allowed, record,
                                  [line for line in out.splitlines() if line.startswith("loadclient: failure")]))
                print("    " + "\n    ".join(self.over[-1][4]), file=sys.stderr, flush=True)
        return record


def add_arguments(p):
    p.add_argument("--stock", default=default("target", "nginx-stock"))
    p.add_argument("--patched", default=default("target", "nginx-patched"))
    p.add_argument("--client", default=default("build", "c-examples", "loadclient"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--events", default=",".join(EVENTS), help="lifecycle scenarios of e2e.run, comma-separated")
    p.add_argument("--rate", type=int, default=4000, help="new connections per second during the events")
    p.add_argument("--concurrency", type=int, default=32, help="connections in flight during the events")
    p.add_argument("--saturation-seconds", type=float, default=5, help="seconds of each throughput run")
    p.add_argument("--saturation-concurrency", type=int, default=64)


def main(args):
    require_root()
    for kind in KINDS:
        prefix = getattr(args, kind)
        if not os.access(os.path.join(prefix, "sbin", "nginx"), os.X_OK):
            print(f"{prefix}/sbin/nginx not found: run scripts/build-nginx.sh", file=sys.stderr)
            return 2
    version = NginxBuild.at(args.stock, "stock").version
    events = [e for e in args.events.split(",") if e]
    runner = Runner(args)
    started = time.monotonic()

    throughput = {k: [] for k in KINDS}  # per round: rate_per_s (None when the run failed)
    saturation_failed = {k: 0 for k in KINDS}
    sums = {}
    sockets = {k: [] for k in KINDS}
    fixed = ["--rate", str(args.rate), "--concurrency", str(args.concurrency)]
    for rnd in range(args.rounds):
        order = KINDS if rnd % 2 == 0 else KINDS[::-1]
        label = f"round {rnd + 1}/{args.rounds}"
        print(f"{label} (order: {', '.join(order)})", file=sys.stderr, flush=True)
        for kind in order:
            r = runner.run(label, kind, "serve", ["--rate", "0", "--concurrency", str(args.saturation_concurrency),
                                                  "--duration", str(args.saturation_seconds)])
            throughput[kind].append(r["rate_per_s"] if r and "rate_per_s" in r else None)
            if r and "requests" in r:
                saturation_failed[kind] += failed_of(r)
        for scenario in events:
            for kind in order:
                r = runner.run(label, kind, scenario, fixed)
                if not r or "requests" not in r:
                    continue
                acc = sums.setdefault((scenario, kind), {"runs": 0, "requests": 0, "ok": 0, "refused": 0, "reset": 0,
                                                         "timeout": 0, "other": 0, "in_flight_at_death": 0,
                                                         "in_flight_slack": 0, "beyond": 0})
                acc["runs"] += 1
                acc["beyond"] += max(0, failed_of(r) - r["in_flight_at_death"])
                for k in ("requests", "ok", "refused", "reset", "timeout", "other", "in_flight_at_death",
                          "in_flight_slack"):
                    acc[k] += r.get(k, 0)
        for kind in order:
            r = runner.run(label, kind, "sockets", [])
            if r and "listen_sockets" in r:
                sockets[kind].append(r["listen_sockets"])

    elapsed = time.monotonic() - started
    uname = platform.uname()
    print(f"# nginx {version}: stock and with the reuseport patch\n")
    print(f"{args.rounds} rounds, interleaved; Linux {uname.release}, {os.cpu_count()} CPUs (client and server "
          f"share them); net.ipv4.tcp_migrate_req=0; {runner.runs} runs in {elapsed / 60:.1f} min.\n")

    print("## Throughput at saturation\n")
    print(f"`serve`: 2 workers, IPv4 and IPv6, the load client uncapped with {args.saturation_concurrency} "
          f"connections in flight (one request per connection) for {args.saturation_seconds:g} s per run.\n")
    print("| round | stock requests/s | patched requests/s | patched / stock |")
    print("|---|---|---|---|")
    ratios = []
    for rnd in range(args.rounds):
        s, pt = throughput["stock"][rnd], throughput["patched"][rnd]
        ratio = pt / s if s and pt else None
        if ratio is not None:
            ratios.append(ratio)
        print(f"| {rnd + 1} | {s if s is not None else 'failed'} | {pt if pt is not None else 'failed'} | "
              f"{f'{ratio:.3f}' if ratio is not None else '-'} |")

    def mean(xs):
        xs = [x for x in xs if x is not None]
        return statistics.mean(xs) if xs else None

    ms, mp = mean(throughput["stock"]), mean(throughput["patched"])
    if ms and mp and ratios:
        print(f"| **mean** | {ms:.1f} | {mp:.1f} | {statistics.mean(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f}) |")
    print(f"\nFailed connections during these runs: stock {saturation_failed['stock']}, "
          f"patched {saturation_failed['patched']}.\n")

    print(f"## Lifecycle events at {args.rate} new connections/s, {args.concurrency} in flight\n")
    head = ("scenario", "nginx", "runs", "requests", "ok", "refused", "reset", "timeout", "other",
            "failed per 100k", "in flight at death", "failed beyond in flight at death")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    totals = {}
    for scenario in events:
        for kind in KINDS:
            a = sums.get((scenario, kind))
            if not a:
                continue
            failed = failed_of(a)
            t = totals.setdefault(kind, [0, 0, 0, 0])
            t[0] += a["requests"]
            t[1] += failed
            t[2] += a["in_flight_at_death"]
            t[3] += a["beyond"]
            per100k = 100000 * failed / a["requests"] if a["requests"] else 0
            lost = str(a["in_flight_at_death"]) + (f" (+{a['in_flight_slack']} possible)" if a["in_flight_slack"] else "")
            print(f"| {scenario} | {kind} | {a['runs']} | {a['requests']} | {a['ok']} | {a['refused']} | "
                  f"{a['reset']} | {a['timeout']} | {a['other']} | {per100k:.1f} | {lost} | {a['beyond']} |")
    for kind in KINDS:
        if kind in totals:
            req, failed, dead, beyond = totals[kind]
            print(f"| **all** | {kind} | | {req} | | | | | | {100000 * failed / req:.1f} | {dead} | {beyond} |")
    print()
    print("In flight at death: the connections the killed (SIGKILL) or fast-stopped (TERM to the new master in "
          "revert_term) workers had accepted, counted by the runner; \"possible\" is its bound on what they may "
          "also have accepted on resuming. Failed beyond: the sum over runs of the failures in excess of that count "
          "(without the \"possible\" ones): connections lost from queues and handshakes.\n")

    print("## Listen sockets, 4 addresses x 4 workers\n")
    print("| nginx | held by the master | by each worker | in all |")
    print("|---|---|---|---|")
    for kind in KINDS:
        seen = {json.dumps(c, sort_keys=True) for c in sockets[kind]}
        for c in (json.loads(x) for x in sorted(seen)):
            print(f"| {kind} | {c['master']} | {' '.join(map(str, c['workers']))} | "
                  f"{c['master'] + sum(c['workers'])} |")
        if len(seen) > 1:
            print(f"| {kind} | (differed between rounds) | | |")
    print()

    if runner.over:
        print("## Patched runs that lost more than dead workers held\n")
        for what, failed, allowed, r, details in runner.over:
            print(f"- {what}: {failed} failed, {allowed} allowed; refused {r['refused']}, reset {r['reset']}, "
                  f"timeout {r['timeout']}, other {r['other']}")
            for line in details:
                print(f"  - `{line}`")
        print()
    if runner.failures:
        print("## Runs that failed\n")
        for what, rc, tail in runner.failures:
            print(f"- {what}: exit {rc}\n\n```\n{tail}\n```\n")
    return 0

