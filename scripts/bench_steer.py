#!/usr/bin/env python3
"""The steering benchmark (scripts/bench-steer.sh runs it, as root, in a private network
namespace, with kernel.bpf_stats_enabled=1 for its duration). Prints Markdown tables:

1. cost: the group program's ns per new connection (the kernel's run_time_ns / run_cnt)
   at 2, 64, 256 and 1024 workers, steering versus the plain migration program, side by
   side in one run; connections per second with each and with no program; workers that
   served (c-examples/steercost.c); then the reference programs beside them: one trivial
   helper call, one bpf_sk_select_reuseport() call that selects nothing, and one that
   selects hash % workers (the least any selecting program does), each to the migration
   program's cost in the same run;
2. the master's watch: wakeups per second and CPU of an idle rpserver master (4 workers,
   1 address), and under load with 64 workers x 4 addresses;
3. stall detection: from SIGSTOP of one worker under load to the master's verdict;
4. a busy worker: 1 request in 50 blocks its worker for 20 ms (/block?ms=20): plain
   reuseport (no program), one shared socket (no reuseport), the library (steering):
   requests per second and latency p50/p99/p999/max.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "build", "c-examples")
STEERCOST, RPSERVER, LOADCLIENT = (os.path.join(BUILD, b) for b in ("steercost", "rpserver", "loadclient"))
TICK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def wait_for(pred, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


# ---- 1. cost per connection ------------------------------------------------------------

# What each program steercost runs is called in the group (its name, as the kernel holds it).
PROGRAMS = {"steer": "reuseport_steer", "migrate": "reuseport_mig", "none": "none", "helper": "rp_helper",
            "select-none": "rp_select_none", "select-hash": "rp_select_hash"}
REFERENCES = ["helper", "select-none", "select-hash"]


def steercost(workers, program, connections):
    out = subprocess.run([STEERCOST, "--workers", str(workers), "--program", program, "--connections",
                          str(connections)], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"steercost {workers} {program}: {out.stderr.strip()}")
    res = json.loads(out.stdout)
    # A column must measure what it says: the program the group held, every connection
    # made, every worker served (a program that sent everything to one socket would be cheap
    # for the wrong reason).
    problems = []
    if res["held"] != PROGRAMS[program]:
        problems.append(f"the group held {res['held']!r}, not {PROGRAMS[program]!r}")
    if res["failed"]:
        problems.append(f"{res['failed']} of {connections} connections failed")
    if res["accepted"] < res["ok"]:
        problems.append(f"{res['accepted']} of {res['ok']} connections accepted")
    # The program ran for the connections (a reference program is attached by hand: its
    # name alone says only that it was loaded).
    if res["run_cnt"] < res["ok"] and program != "none":
        problems.append(f"the program ran {res['run_cnt']} times for {res['ok']} connections")
    if res["served_workers"] != workers:
        problems.append(f"{res['served_workers']} of {workers} workers served")
    if problems:
        raise RuntimeError(f"steercost {workers} {program}: " + "; ".join(problems))
    return res


def cost_table(args):
    rows = []
    programs = ["steer", "migrate", "none"] + REFERENCES
    for n in args.workers:
        runs = {p: [] for p in programs}
        for r in range(args.rounds):
            for p in programs if r % 2 == 0 else programs[::-1]:
                log(f"cost: {n} workers, {p}, round {r + 1}")
                runs[p].append(steercost(n, p, args.connections))
        ns = {p: sum(x["run_time_ns"] for x in v) / max(1, sum(x["run_cnt"] for x in v)) for p, v in runs.items()}
        cps = {p: sum(x["conn_per_s"] for x in v) / len(v) for p, v in runs.items()}
        served = {p: min(x["served_workers"] for x in v) for p, v in runs.items()}
        rows.append((n, ns, cps, served))

    def ratio(ns, p):
        return ns[p] / ns["migrate"] if ns["migrate"] else float("nan")

    print("### Cost per new connection\n")
    print("| workers | steering ns/conn | migration ns/conn | steering / migration | conn/s steering | conn/s migration"
          " | conn/s no program | workers served (steering / migration / none) |")
    print("|---|---|---|---|---|---|---|---|")
    for n, ns, cps, served in rows:
        print(f"| {n} | {ns['steer']:.0f} | {ns['migrate']:.0f} | {ratio(ns, 'steer'):.2f} | {cps['steer']:.0f} | "
              f"{cps['migrate']:.0f} | {cps['none']:.0f} | {served['steer']} / {served['migrate']} / {served['none']} of {n} |")
    print()
    print("### What any program pays: reference programs in the same run\n")
    print("ns per connection (ratio to the migration program). helper: one trivial helper call; select-none: one "
          "bpf_sk_select_reuseport() call with a key past its map's end (selects nothing); select-hash: one call "
          "selecting hash % workers (the least a selecting program does); steering: the library's program.\n")
    print("| workers | migration | helper | select-none | select-hash | steering | steering - select-hash ns |")
    print("|---|---|---|---|---|---|---|")
    for n, ns, _, _ in rows:
        cells = " | ".join(f"{ns[p]:.0f} ({ratio(ns, p):.2f})" for p in REFERENCES + ["steer"])
        print(f"| {n} | {ns['migrate']:.0f} | {cells} | {ns['steer'] - ns['select-hash']:.0f} |")
    print()


# ---- rpserver ----------------------------------------------------------------------------

class Server:
    def __init__(self, workers, ports, extra=""):
        self.dir = tempfile.mkdtemp(prefix="bench-steer-")
        self.conf, self.pid_path, self.log = (os.path.join(self.dir, f) for f in ("conf", "pid", "log"))
        self.workers, self.ports = workers, ports
        with open(self.conf, "w") as f:
            f.write(f"worker_processes {workers};\nuser nobody;\npid {self.pid_path};\nerror_log {self.log};\n")
            f.write(f"worker_connections 4096;\n{extra}")
            for p in ports:
                f.write(f"listen 127.0.0.1:{p} backlog=4096;\n")

    def __enter__(self):
        self.proc = subprocess.Popen([RPSERVER, "-c", self.conf], stdin=subprocess.DEVNULL)
        wait_for(lambda: os.path.exists(self.pid_path), 10, "the pid file")
        wait_for(lambda: self.count("event=worker_start") >= self.workers, 60, "the workers")
        self.master = int(open(self.pid_path).read())
        return self

    def __exit__(self, *exc):
        os.kill(self.master, signal.SIGTERM)
        self.proc.wait(timeout=30)

    def lines(self):
        with open(self.log, errors="replace") as f:
            return f.read().splitlines()

    def count(self, what):
        return sum(what in line for line in self.lines()) if os.path.exists(self.log) else 0

    def worker_pids(self):
        return [int(m.group(1)) for m in (re.search(r"event=spawn pid=(\d+)", l) for l in self.lines()) if m]


def proc_counters(pid):
    """(context switches, CPU seconds) of a process so far."""
    status = open(f"/proc/{pid}/status").read()
    switches = sum(int(m) for m in re.findall(r"(?:non)?voluntary_ctxt_switches:\s+(\d+)", status))
    stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return switches, (int(stat[11]) + int(stat[12])) / TICK


def loadclient(targets, seconds, concurrency=64, rate=0, extra=()):
    return subprocess.Popen([LOADCLIENT, "-j", "-q", "-c", str(concurrency), "-r", str(rate), "-d", str(seconds),
                             "-t", "3000", *extra, *targets], stdout=subprocess.PIPE, text=True)


def measure_master(srv, seconds):
    s0, c0 = proc_counters(srv.master)
    t0 = time.monotonic()
    time.sleep(seconds)
    s1, c1 = proc_counters(srv.master)
    dt = time.monotonic() - t0
    return (s1 - s0) / dt, 100 * (c1 - c0) / dt


# ---- 2. the master's watch ----------------------------------------------------------------

def watch_table(args):
    print("### The master's watch\n")
    print("| setup | seconds | master wakeups/s | master CPU % | requests/s |")
    print("|---|---|---|---|---|")
    log(f"watch: idle master, 4 workers, 1 address, {args.idle_seconds} s")
    with Server(4, [18080]) as srv:
        time.sleep(2)  # past the start's second of quick ticks
        w, cpu = measure_master(srv, args.idle_seconds)
        print(f"| idle: 4 workers x 1 address | {args.idle_seconds} | {w:.1f} | {cpu:.2f} | 0 |")
    log(f"watch: 64 workers x 4 addresses under load, {args.load_seconds} s")
    ports = [18081, 18082, 18083, 18084]
    with Server(64, ports) as srv:
        lc = loadclient([f"127.0.0.1:{p}" for p in ports], args.load_seconds + 1)
        time.sleep(0.5)
        w, cpu = measure_master(srv, args.load_seconds)
        res = json.loads(lc.communicate()[0])
        rps = res["ok"] / res["duration_s"] if res.get("duration_s") else 0
        print(f"| under load: 64 workers x 4 addresses | {args.load_seconds} | {w:.1f} | {cpu:.2f} | {rps:.0f} |")
    print()


# ---- 3. stall detection --------------------------------------------------------------------

def log_time(line):
    """The time.time() of an rpserver log line ("2026/12/01 21:04:54.123 [warn] ...")."""
    m = re.match(r"(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d)\.(\d{3}) ", line)
    if not m:
        raise ValueError(f"no time stamp in the log line {line!r}")
    return time.mktime(time.strptime(m.group(1), "%Y/%m/%d %H:%M:%S")) + int(m.group(2)) / 1000


def stall_table(args):
    print("### Stall detection\n")
    print("| round | threshold ms | SIGSTOP to verdict ms | verdict - threshold ms |")
    print("|---|---|---|---|")
    for r in range(args.rounds):
        log(f"stall: round {r + 1}")
        with Server(4, [18090], "reuseport_health_threshold 50ms;\n") as srv:
            lc = loadclient(["127.0.0.1:18090"], 6, concurrency=32, rate=4000)
            time.sleep(2)
            victim = srv.worker_pids()[1]
            before = srv.count("is not accepting")
            t0 = time.time()
            os.kill(victim, signal.SIGSTOP)
            try:
                wait_for(lambda: srv.count("is not accepting") > before, 5, "the verdict")
            finally:
                os.kill(victim, signal.SIGCONT)
            lc.communicate()
            # The verdict's time is its log line's (rpserver stamps each line to the
            # millisecond), not when this loop, polling every 20 ms, saw it.
            verdict = [line for line in srv.lines() if "is not accepting" in line][before]
            ms = (log_time(verdict) - t0) * 1000
            print(f"| {r + 1} | 50 | {ms:.0f} | {ms - 50:.0f} |")
    print()


# ---- 4. a busy worker -----------------------------------------------------------------------

SETUPS = [
    ("plain reuseport (no program)", "reuseport_strategy none;\nreuseport_health_threshold 0;\n"),
    ("one shared socket (no reuseport)", "shared_socket on;\nreuseport_strategy none;\nreuseport_health_threshold 0;\n"),
    ("library (steering)", "reuseport_health_threshold 50ms;\n"),
]


def busy_table(args):
    results = {name: [] for name, _ in SETUPS}
    for r in range(args.rounds):
        order = SETUPS if r % 2 == 0 else SETUPS[::-1]
        for name, extra in order:
            log(f"busy: {name}, round {r + 1}")
            with Server(args.busy_workers, [18100], extra) as srv:
                lc = loadclient(["127.0.0.1:18100"], args.busy_seconds, concurrency=args.busy_concurrency,
                                extra=("--slow-every", "50", "--slow-path", "/block?ms=20"))
                results[name].append(json.loads(lc.communicate()[0]))
    print(f"### A busy worker: 1 request in 50 blocks its worker for 20 ms\n")
    print(f"{args.busy_workers} workers, {args.busy_concurrency} connections in flight, a new connection per request, "
          f"{args.busy_seconds} s x {args.rounds} rounds (interleaved); latency over all rounds' samples "
          "(worst round for max).\n")
    print("| setup | requests/s | failed | p50 ms | p99 ms | p999 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    for name, _ in SETUPS:
        rs = results[name]
        rps = sum(x["ok"] for x in rs) / sum(x["duration_s"] for x in rs)
        failed = sum(x["requests"] - x["ok"] for x in rs)
        lat = {k: sum(x["latency_ms"][k] for x in rs) / len(rs) for k in ("p50", "p99", "p999")}
        mx = max(x["latency_ms"]["max"] for x in rs)
        print(f"| {name} | {rps:.0f} | {failed} | {lat['p50']:.2f} | {lat['p99']:.2f} | {lat['p999']:.2f} | {mx:.1f} |")
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 64, 256, 1024])
    ap.add_argument("--connections", type=int, default=20000)
    ap.add_argument("--idle-seconds", type=int, default=20)
    ap.add_argument("--load-seconds", type=int, default=10)
    ap.add_argument("--busy-workers", type=int, default=4)
    ap.add_argument("--busy-seconds", type=int, default=6)
    ap.add_argument("--busy-concurrency", type=int, default=64)
    ap.add_argument("--only", nargs="+", choices=["cost", "watch", "stall", "busy"],
                    default=["cost", "watch", "stall", "busy"])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"),
                    help="the cmake build directory holding c-examples/ (default: build)")
    args = ap.parse_args()
    global STEERCOST, RPSERVER, LOADCLIENT
    STEERCOST, RPSERVER, LOADCLIENT = (os.path.join(args.build, "c-examples", b)
                                       for b in ("steercost", "rpserver", "loadclient"))
    for name in args.only:
        {"cost": cost_table, "watch": watch_table, "stall": stall_table, "busy": busy_table}[name](args)


if __name__ == "__main__":
    main()
