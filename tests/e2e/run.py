"""One scenario against one server, under load, inside a private network namespace
(tests/c/in-netns.sh puts it there), with net.ipv4.tcp_migrate_req as asked (the
namespace's own copy):

  python3 -m e2e.run rpserver --binary PATH --strategy S ... SCENARIO
  python3 -m e2e.run nginx --prefix PREFIX [--kind stock|patched] [--version V] ... SCENARIO

After the scenario, the processes' listen sockets are checked (with the library: the
master holds none, each worker one per address, all distinct; stock nginx: printed), and
a results line goes to --results. With --expect-zero the load's failures are judged
(verdict.losses: nothing may fail but what dead or stopped workers had accepted, and
resets at the instant of a listener's close or a worker's kill); without it they are a
baseline recording: counted, printed, not judged.

Exit status: 0 passed, 1 failed, 77 skipped (ctest's SKIP_RETURN_CODE)."""

import argparse
import json
import os
import shutil
import sys
import tempfile
import traceback

from prefork.load import Load, cpu_split
from prefork.reaping import become_subreaper, reap
from prefork.wait import Failure, check

from . import Skip, verdict
from .scenarios import load_all
from .servers.nginx import Nginx, NginxBuild
from .servers.rpserver import Rpserver

STRATEGIES = ("auto", "bpf", "sysctl", "drain", "drain-keep-backlog", "none")


class Context:
    """What a scenario works with besides the server: the command line, its loads, and
    what it measured beyond the load's counts."""

    def __init__(self, args, srv):
        self.args, self.srv, self.result = args, srv, None
        self.loads = []
        self.figures = {}  # for the results line (the stall scenarios' rates)
        self.measured = {}  # other scenarios' figures, for the results line
        self.checks = []  # (ok, what): judged once the results line is written
        self.socket_counts = None  # the `sockets` scenario's counts, instead of a load
        self.cleanups = []  # run at the end, pass or fail

    def load(self, targets=None, rate=None, concurrency=None, **kw):
        """A load client in the background (prefork.load.Load; kw: its timeout_ms,
        duration, timeline_ms, cpus) on `targets` (default: the server's listen
        addresses); rate and concurrency default to the command line's, and a rate asked
        for is capped by the command line's (0: uncapped)."""
        rate = self.args.rate if rate is None else min(rate, self.args.rate or rate)
        if self.args.pin and kw.get("cpus") is None:
            kw["cpus"] = cpu_split()[0]
        if self.args.timeline and not kw.get("timeline_ms"):
            kw["timeline_ms"] = self.args.timeline
            kw.setdefault("slow_ms", self.args.slow_ms)
        load = Load(self.args.client, self.srv.dir, targets or self.srv.listens,
                    concurrency=concurrency or self.args.concurrency, rate=rate, quiet=False, **kw)
        self.loads.append(load)
        return load

    def note(self, text):
        print(f"  {self.srv.label}: {text}", flush=True)

    def check_sockets(self, master):
        self.srv.check_sockets(master)


def arguments(scenarios):
    p = argparse.ArgumentParser(prog="python3 -m e2e.run", description=__doc__.split("\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--client", required=True, help="build/c-examples/loadclient")
    common.add_argument("--sysctl", type=int, choices=(0, 1), required=True, help="net.ipv4.tcp_migrate_req")
    common.add_argument("--expect-zero", action="store_true",
                        help="judge the failures (verdict.losses); without it they are recorded only")
    common.add_argument("--results", help="append a JSON line with the counts to this file")
    common.add_argument("--rate", type=int, default=4000, help="new connections per second (0: as fast as possible)")
    common.add_argument("--concurrency", type=int, default=32, help="connections in flight at most")
    common.add_argument("--duration", type=float, default=3, help="seconds of load in serve, and of reloads in reload_storm")
    common.add_argument("--pin", action="store_true",
                        help="the load client on one CPU and the server on the others (benchmarks)")
    common.add_argument("--keep", action="store_true", help="keep the temporary directory (config, log) even when passing")
    common.add_argument("--slow-ms", type=int, metavar="MS",
                        help="with --timeline, what counts as slow in its timeline_slow (the client's default: 20)")
    common.add_argument("--timeline", type=int, default=0, metavar="MS",
                        help="the load client counts completions, and those of --slow-ms or more, per MS-wide "
                             "bucket; the results line also gets the signals sent (s since the client's t0)")
    common.add_argument("scenario", choices=sorted(scenarios))
    servers = p.add_subparsers(dest="server", required=True)
    rp = servers.add_parser("rpserver", parents=[common], help="c-examples/server")
    rp.add_argument("--binary", required=True, help="build/c-examples/rpserver")
    rp.add_argument("--strategy", choices=STRATEGIES, required=True)
    rp.add_argument("--launcher", help="build/tests/c/launch_unprivileged, for the unprivileged scenario")
    rp.add_argument("--shim", help="build/tests/c/libfaultshim.so, for the fault scenarios (LD_PRELOAD)")
    ng = servers.add_parser("nginx", parents=[common], help="an nginx build (scripts/build-nginx.sh)")
    ng.add_argument("--prefix", required=True, help="target/nginx-stock or target/nginx-patched")
    ng.add_argument("--kind", choices=("stock", "patched"), help="default: from the prefix's name")
    ng.add_argument("--version", help="default: what sbin/nginx -v prints")
    ng.add_argument("--to-prefix", help="the build an in-place upgrade adopts (the adopt_* scenarios)")
    ng.add_argument("--to-kind", choices=("stock", "patched"), help="default: from the prefix's name")
    ng.add_argument("--steering", choices=("on", "off"), default="on",
                    help="off: the patched build runs with reuseport_health_threshold 0 (no health "
                         "verdicts; the program still keeps new connections off leaving sockets)")
    ng.add_argument("--master-user", help="run the master as this user (no capabilities: no BPF), not root")
    return p.parse_args()


def make_server(args, workdir):
    if args.server == "rpserver":
        return Rpserver(args.binary, workdir, args.strategy)
    to = NginxBuild.at(args.to_prefix, args.to_kind) if args.to_prefix else None
    return Nginx(NginxBuild.at(args.prefix, args.kind, args.version), workdir, to, args.steering == "on",
                 args.master_user)


def summary(name, r, lost, slack):
    return (f"{name}: requests={r['requests']} ok={r['ok']} refused={r['refused']} reset={r['reset']} "
            f"timeout={r['timeout']} other={r['other']} in_flight_at_death={lost}"
            + (f" (+{slack} possible)" if slack else "") + f" workers_seen={len(r['workers'])}"
            + f" rate_per_s={r.get('rate_per_s')}")


def judge(name, srv, ctx, args, record):
    """Everything measured is in `record` (written by then); raises Failure on what does
    not hold."""
    for ok, what in ctx.checks if args.expect_zero else ():
        check(ok, what)
    srv.final_checks()
    r = ctx.result
    if r is None:
        return
    kills, lost, slack = srv.deaths()
    if not args.expect_zero:
        print(f"{name}: baseline recording, not judged: {verdict.failed_of(r)} failed")
        return
    windows = srv.close_windows() if srv.close_race_possible else ()
    v = verdict.losses(r, close_windows=windows, kills=kills, lost=lost + slack,
                       held=ctx.figures.get("accepted_at_stop", 0))
    record.update(close_race=v.close_race, kill_race=v.kill_race, unexcused=v.unexcused,
                  kills=[{"pid": k.pid, "sent_ns": k.sent_ns - r["t0_ns"], "dead_ns": k.dead_ns - r["t0_ns"],
                          "in_flight": k.in_flight} for k in kills])
    print(f"{name}: {v.explain()}")
    for k in kills:
        print(f"{name}: SIGKILL to worker {k.pid}: dead {(k.dead_ns - k.sent_ns) / 1e6:.2f} ms later, "
              f"{k.in_flight} in flight")
    if not v.ok:
        for line in verdict.placed(r, close_windows=windows, kills=kills):
            print(f"{name}: failure: {line}")
    check(v.ok, v.explain() + f"; dead workers had {sum(k.in_flight for k in kills) + lost} in flight"
          + (f" (+{slack} possible)" if slack else "")
          + (f" and the stopped one had accepted {ctx.figures['accepted_at_stop']}" if ctx.figures else ""))


def tcp_ext(names):
    """{name: value} of the network namespace's TcpExt counters (/proc/net/netstat): each run
    has a namespace of its own, so they count from its start."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for head, values in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            table = dict(zip(head.split()[1:], map(int, values.split()[1:])))
            return {n: table.get(n, 0) for n in names}
    return {n: 0 for n in names}


def run(args, sc, srv, ctx, name):
    master = sc.run(srv, ctx)
    if master is not None:
        ctx.check_sockets(master)
    record = {"scenario": args.scenario, **srv.record_fields(), "tcp_migrate_req": args.sysctl}
    if ctx.socket_counts is not None:
        c = ctx.socket_counts
        print(f"{name}: {len(srv.listens)} addresses x {len(c['workers'])} workers: master holds {c['master']} "
              f"listen sockets, workers hold {' '.join(map(str, c['workers']))}")
        if srv.strict:
            check(c["master"] == 0 and c["workers"] == [len(srv.listens)] * len(c["workers"]),
                  f"expected 0 for the master and {len(srv.listens)} per worker")
        record["listen_sockets"] = c
    elif ctx.result is not None:
        r = ctx.result
        check(r["ok"] > 0, "no request succeeded")
        kills, lost, slack = srv.deaths()
        dead = sum(k.in_flight for k in kills) + lost
        print(summary(name, r, dead, slack))
        if ctx.figures:
            print(f"{name}: {verdict.describe_stall(ctx.figures)}")
        record.update(in_flight_at_death=dead, in_flight_slack=slack, **r, **ctx.figures, **ctx.measured)
        if args.timeline and ctx.loads:
            # Seconds since the load client's t0 (the same clock), as its timeline counts.
            record["signals"] = [(round(t - r["t0_ns"] / 1e9, 4), what) for t, what in srv.timeline]
        # Connections a closing listener handed to a sibling (queued or half-open): what
        # leaving workers did not serve themselves.
        k = tcp_ext(["TCPMigrateReqSuccess", "TCPMigrateReqFailure"])
        record.update(migrated=k["TCPMigrateReqSuccess"], migrate_failed=k["TCPMigrateReqFailure"])
        print(f"{name}: the kernel migrated {record['migrated']} connection(s) from closing listeners "
              f"({record['migrate_failed']} failed)")
    else:
        print(f"{name}: every check passed (no load)")
        record["checks_passed"] = True
    try:
        judge(name, srv, ctx, args, record)
    finally:
        if args.results:
            with open(args.results, "a") as f:
                f.write(json.dumps(record) + "\n")


def main():
    scenarios = load_all()
    args = arguments(scenarios)
    sc = scenarios[args.scenario]
    if args.server not in sc.servers:
        print(f"SKIPPED: {args.scenario} is not a scenario for {args.server}")
        return 77
    if args.server == "nginx" and not os.access(os.path.join(args.prefix, "sbin", "nginx"), os.X_OK):
        print(f"{args.prefix}/sbin/nginx not found: run scripts/build-nginx.sh", file=sys.stderr)
        return 1
    try:
        with open("/proc/sys/net/ipv4/tcp_migrate_req", "w") as f:
            f.write(str(args.sysctl))
    except OSError as e:
        print(f"cannot set net.ipv4.tcp_migrate_req ({e}): run through tests/c/in-netns.sh, as root", file=sys.stderr)
        return 1
    become_subreaper()
    workdir = tempfile.mkdtemp(prefix=f"e2e-{args.server}-{args.scenario}-")
    srv = make_server(args, workdir)
    if args.pin:
        srv.default_cpus = cpu_split()[1]
    if sc.patched_only and not (srv.strict or (srv.to_build and srv.to_build.kind == "patched")):
        print(f"SKIPPED: {args.scenario} tests the library's build only")
        shutil.rmtree(workdir, ignore_errors=True)
        return 77
    extra = f"strategy {args.strategy}" if args.server == "rpserver" else f"nginx {srv.build.version} {srv.label}"
    if args.server == "nginx" and srv.to_build is not None:
        extra += f" -> {srv.to_build.version} {srv.to_build.kind}"
    if args.server == "nginx" and not srv.steering:
        extra += ", threshold 0"
    name = f"{args.scenario} ({extra}, tcp_migrate_req={args.sysctl})"
    if not args.expect_zero:
        print(f"{name}: a baseline recording: the failures are counted, not judged")
    ctx = Context(args, srv)
    status = 0
    try:
        run(args, sc, srv, ctx, name)
    except Skip as e:
        status = 77
        print(f"SKIPPED: {name}: {e}")
    except Exception as e:  # a Failure, or a bug of the runner: either way the scenario failed
        status = 1
        print(f"{name}: FAILED: {e if isinstance(e, Failure) else traceback.format_exc()}", file=sys.stderr)
        if ctx.loads and srv.timeline:
            # the load client's failure details count from its start, within milliseconds of this
            print("signals sent (s since the load started): " + srv.describe_signals(ctx.loads[0].started),
                  file=sys.stderr)
        tail = srv.log_tail()
        if tail:
            print("last lines of the server's log:\n" + tail, file=sys.stderr)
    finally:
        for load in ctx.loads:
            load.abort()
        srv.stop()
        reap(os.path.basename(srv.binary))
        for cleanup in ctx.cleanups:
            cleanup()
    if status == 1 or args.keep:
        print(f"the server's directory (config, log) is kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"scenario {args.scenario}: {1 if status == 0 else 0} passed, {1 if status == 1 else 0} failed")
    return status


if __name__ == "__main__":
    sys.exit(main())
