"""The reload-latency benchmark: what a reload, a reload storm, a worker-count change and an
upgrade cost in tail latency, for stock nginx, patched nginx and rpserver (the library), side
by side in one run, interleaved per round (the order alternates, so that drift in the
machine's load hits every server alike).

Each run is one e2e.run scenario with the load client at saturation (--rate 0, 64
connections in flight, a new connection per request): `serve` (nginx) or `steady`
(rpserver) with no event, `reload10` (ten HUPs 0.3 s apart), `reload_storm` (a HUP every
100 ms for --storm-seconds), `workers_change` (2 -> 4 -> 1 -> 3 by reload) and `upgrade`
(USR2, WINCH, QUIT), and for nginx `reload100w` (100 workers, three reloads). The load
client runs on one CPU and the server on the others (e2e.run --pin). The load client measures every request's latency, from the start of
its connect to the complete response: p50, p99, p999, max. The table gives, per scenario
and server, the median over rounds of each figure, and the patched / stock ratios (the
median of the per-round ratios): the goal is at most 1.1.

For the reload storm it also folds the completions that took --slow-ms or more by their
time since the last SIGHUP (phases.py): per thousand completions in each 10 ms of the
100 ms between reloads, summed over the rounds. A burst after the signal is the reload
itself; an even spread is a cost that lasts."""

import os
import platform
import statistics
import subprocess
import sys
import time

from ..phases import slow_by_phase
from ..servers.nginx import NginxBuild
from .runs import default, failed_of, require_root, run_scenario

SCENARIOS = ["steady", "reload10", "reload_storm", "workers_change", "upgrade", "reload100w", "workers200"]
# nginx's alone (scenarios/scale.py): 100 workers through 3 reloads; 200 workers, no reload
# (what the many workers cost by themselves, next to reload100w)
NGINX_ONLY = {"reload100w", "workers200"}
SERVERS = ["nginx stock", "nginx patched", "rpserver"]
# Not in the default list: patched nginx with `reuseport_health_threshold 0` (steered, no
# health verdicts: the master ticks once a second), to tell what the verdicts cost.
NOSTEER = "nginx patched-nosteer"
# Not in the default list either: another patched build (--alt PREFIX, e.g. one linked with
# the previous library), side by side with the rest, to measure a library change.
ALT = "nginx patched-alt"
# And another stock build (--stock-alt PREFIX, e.g. upstream nginx with one behaviour
# changed), to tell what in stock nginx a figure comes from.
STOCK_ALT = "nginx stock-alt"
FIGURES = ("p50", "p99", "p999", "max")
GOAL = 1.1


def add_arguments(p):
    p.add_argument("--stock", default=default("target", "nginx-stock"))
    p.add_argument("--patched", default=default("target", "nginx-patched"))
    p.add_argument("--alt", help=f"the prefix of another patched build, run as {ALT!r}")
    p.add_argument("--stock-alt", help=f"the prefix of another stock build, run as {STOCK_ALT!r}")
    p.add_argument("--rpserver", default=default("build", "c-examples", "rpserver"))
    p.add_argument("--client", default=default("build", "c-examples", "loadclient"))
    p.add_argument("--slow-ms", type=int, default=10,
                   help="what counts as slow in the reload storm's fold by time since the last SIGHUP")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated, of: " + ", ".join(SCENARIOS))
    p.add_argument("--servers", default=",".join(SERVERS),
                   help="comma-separated, of: " + ", ".join(SERVERS + [NOSTEER, ALT, STOCK_ALT]))
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--steady-seconds", type=float, default=10, help="length of nginx's steady run")
    p.add_argument("--storm-seconds", type=float, default=10, help="length of the reload storm")


def nginx_prefix(args, server):
    """The install prefix an nginx server of the table runs from."""
    return {NOSTEER: args.patched, ALT: args.alt, STOCK_ALT: args.stock_alt}.get(server) \
        or getattr(args, server.split()[1])


def server_args(args, server):
    if server == "rpserver":
        return ["rpserver", "--binary", args.rpserver, "--strategy", "bpf"]
    kind = "patched" if server in (NOSTEER, ALT) else "stock" if server == STOCK_ALT else server.split()[1]
    steering = ["--steering", "off"] if server == NOSTEER else []
    return ["nginx", "--prefix", nginx_prefix(args, server), "--kind", kind, *steering]


def scenario_of(server, scenario):
    """`steady` is nginx's `serve` (2 workers, IPv4 and IPv6, --duration s)."""
    return "serve" if scenario == "steady" and server != "rpserver" else scenario


def git_commit():
    try:
        return subprocess.run(["git", "-C", default(), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(args):
    require_root()
    servers = [s for s in args.servers.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    for s in servers + scenarios:
        if s not in SERVERS + [NOSTEER, ALT, STOCK_ALT] + SCENARIOS:
            print(f"unknown server or scenario {s!r}", file=sys.stderr)
            return 2
        if s == ALT and not args.alt:
            print(f"{ALT!r} needs --alt PREFIX (another patched build)", file=sys.stderr)
            return 2
        if s == STOCK_ALT and not args.stock_alt:
            print(f"{STOCK_ALT!r} needs --stock-alt PREFIX (another stock build)", file=sys.stderr)
            return 2
    for s in servers:
        if s == "rpserver":
            binary = args.rpserver
        else:
            binary = os.path.join(nginx_prefix(args, s), "sbin", "nginx")
        if not os.access(binary, os.X_OK):
            print(f"{binary} not found: run scripts/build.sh and scripts/build-nginx.sh", file=sys.stderr)
            return 2
    version = NginxBuild.at(args.stock, "stock").version if any(s.startswith("nginx") for s in servers) else None
    figures = {}  # (scenario, server) -> {figure: [per round]}, plus requests/failed
    failures = []
    started = time.monotonic()
    runs = 0
    for rnd in range(args.rounds):
        order = servers if rnd % 2 == 0 else servers[::-1]
        print(f"round {rnd + 1}/{args.rounds} (order: {', '.join(order)})", file=sys.stderr, flush=True)
        for scenario in scenarios:
            for server in order:
                if server == "rpserver" and scenario in NGINX_ONLY:
                    continue
                extra = ["--client", args.client, "--sysctl", "0", "--rate", "0",
                         "--concurrency", str(args.concurrency), "--pin"]
                if scenario == "reload_storm":
                    extra += ["--duration", str(args.storm_seconds), "--timeline", "1", "--slow-ms", str(args.slow_ms)]
                elif scenario == "steady":
                    extra += ["--duration", str(args.steady_seconds)]
                record, rc, out, took = run_scenario(server_args(args, server) + extra, scenario_of(server, scenario))
                runs += 1
                lat = (record or {}).get("latency_ms")
                f = figures.setdefault((scenario, server), {k: [] for k in FIGURES} | {"requests": 0, "failed": 0,
                                                                                        "runs": 0, "migrated": 0})
                if rc != 0 or not lat:
                    failures.append((f"round {rnd + 1}: {scenario} {server}", rc, "\n".join(out.splitlines()[-12:])))
                    for k in FIGURES:
                        f[k].append(None)
                    print(f"  {scenario} {server}: exit {rc}", file=sys.stderr, flush=True)
                    continue
                f["runs"] += 1
                f["requests"] += record["requests"]
                f["failed"] += failed_of(record)
                f["migrated"] += record.get("migrated", 0)
                if "timeline_slow" in record and "signals" in record:
                    fold = slow_by_phase(record, record["signals"])
                    summed = f.get("phases")
                    f["phases"] = fold if summed is None else [
                        (o, a + s, b + k) for (o, a, b), (_, s, k) in zip(summed, fold)]
                for k in FIGURES:
                    f[k].append(lat[k])
                print(f"  {scenario} {server}: {took:.1f} s, {record['requests']} requests, "
                      f"{failed_of(record)} failed, p99 {lat['p99']:.1f} p999 {lat['p999']:.1f} "
                      f"max {lat['max']:.1f} ms", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started

    def median(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    def ms(x):
        return "-" if x is None else f"{x:.1f}"

    uname = platform.uname()
    print("# Reload latency: stock nginx, patched nginx, rpserver\n")
    print(f"{time.strftime('%Y-%m-%d')}, commit {git_commit()}, Linux {uname.release}, {os.cpu_count()} CPUs (the load "
          f"client pinned to one, the server to the others); nginx {version}; {args.rounds} rounds, interleaved; "
          f"the load client at saturation, {args.concurrency} connections in flight, a new connection per request; "
          f"net.ipv4.tcp_migrate_req=0; {runs} runs in {elapsed / 60:.1f} min.\n")
    print("Latency in ms, the median over rounds of each run's figure.\n")
    print("`migrated`: connections the kernel moved from closing listeners to a sibling (what")
    print("leaving workers did not serve themselves), summed over the runs.\n")
    print("| scenario | server | runs | requests | failed | migrated | p50 | p99 | p999 | max |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for scenario in scenarios:
        for server in servers:
            f = figures.get((scenario, server))
            if not f:
                continue
            print(f"| {scenario} | {server} | {f['runs']} | {f['requests']} | {f['failed']} | {f['migrated']} | "
                  + " | ".join(ms(median(f[k])) for k in FIGURES) + " |")
    titles = {"nginx patched": "Patched", NOSTEER: "Patched, threshold 0", ALT: f"Patched-alt ({args.alt})",
              "nginx stock": "stock nginx", STOCK_ALT: f"stock-alt ({args.stock_alt})"}
    pairs = [(base, patched) for base in ("nginx stock", STOCK_ALT) for patched in ("nginx patched", NOSTEER, ALT)]
    for base, patched in pairs:
        if base not in servers or patched not in servers:
            continue
        print(f"\n## {titles[patched]} / {titles[base]}\n")
        print(f"The median over rounds of the per-round ratio; the goal is at most {GOAL} in every scenario.\n")
        print("| scenario | p50 | p99 | p999 | max | goal met |")
        print("|---|---|---|---|---|---|")
        for scenario in scenarios:
            s, p = figures.get((scenario, base)), figures.get((scenario, patched))
            if not s or not p:
                continue
            ratios = {}
            for k in FIGURES:
                per_round = [b / a for a, b in zip(s[k], p[k]) if a and b is not None]
                ratios[k] = median(per_round)
            met = all(ratios[k] is not None and ratios[k] <= GOAL for k in ("p99", "p999", "max"))
            print(f"| {scenario} | " + " | ".join("-" if ratios[k] is None else f"{ratios[k]:.2f}" for k in FIGURES)
                  + f" | {'yes' if met else 'no'} |")
    folded = [(server, figures[("reload_storm", server)]["phases"]) for server in servers
              if "phases" in figures.get(("reload_storm", server), {})]
    if folded:
        print("\n## Reload storm: slow requests by time since the last SIGHUP\n")
        print(f"Completions that took {args.slow_ms} ms or more, per thousand completions in each 10 ms "
              "after a SIGHUP, all rounds together (phases.py).\n")
        print("| ms after SIGHUP | " + " | ".join(server for server, _ in folded) + " |")
        print("|---|" + "---|" * len(folded))
        for k, (offset, _, _) in enumerate(folded[0][1]):
            cells = []
            for _, slices in folded:
                _, slow, ok = slices[k]
                cells.append("-" if not ok else f"{1000 * slow / ok:.1f}")
            print(f"| {offset}-{offset + 9} | " + " | ".join(cells) + " |")
    if failures:
        print("\n## Runs that failed\n")
        for what, rc, tail in failures:
            print(f"- {what}: exit {rc}\n\n```\n{tail}\n```\n")
    return 0
