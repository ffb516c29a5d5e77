"""The soak: rpserver and patched nginx side by side, each under its own load, through a
seeded random schedule of lifecycle events and faults for N minutes, checked every minute
and at the end (scripts/soak.sh runs it in a private network namespace, as root):

  python3 -m e2e.soak --client LOADCLIENT [--rpserver BIN] [--nginx PREFIX]
                      --minutes N [--seed S] [--out FILE.jsonl]

Events (soak_schedule.py): reload bursts of up to 10 HUPs a second, worker-count
changes, binary upgrades, both reverts (HUP to the old master, TERM to the new), SIGKILL
of a worker, a worker SIGSTOPped for up to 2 s (under the load's 3 s timeout).

Every minute, per server (soak_checks.py):
  - failures beyond what killed or fast-stopped workers held (verdict.losses) = 0;
  - the master's fds and RSS, the workers' fds and RSS, the server's processes, its
    listen sockets, and the BPF programs and maps its processes hold: recorded, and
    judged against the first minute (see soak_checks.growth);
and at the end: no process of either server left after a graceful stop, no listener on
their ports, and the kernel's reuseport BPF programs and maps back to where they started
(soak_kernel.py).

Exit status: 0 passed, 1 failed, 77 skipped."""

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback

from prefork.reaping import become_subreaper, reap
from prefork.wait import Failure

from . import soak_checks, soak_kernel
from .servers.nginx import Nginx, NginxBuild
from .servers.rpserver import Rpserver
from .soak_schedule import Schedule

RPSERVER_PORT = 8080
NGINX_PORT = 8090


def arguments():
    p = argparse.ArgumentParser(prog="python3 -m e2e.soak", description=__doc__.split("\n")[0])
    p.add_argument("--client", required=True, help="build/c-examples/loadclient")
    p.add_argument("--rpserver", help="build/c-examples/rpserver")
    p.add_argument("--nginx", help="target/nginx-patched (scripts/build-nginx.sh)")
    p.add_argument("--minutes", type=float, required=True)
    p.add_argument("--seed", type=int, help="the schedule's seed (default: random, printed)")
    p.add_argument("--rate", type=int, default=1500, help="new connections per second, per server")
    p.add_argument("--window", type=float, default=60, help="seconds between checks")
    p.add_argument("--out", help="append one JSON line per server and window to this file")
    p.add_argument("--keep-going", action="store_true",
                   help="record a window's problems and go on (the run still fails at the end)")
    return p.parse_args()


class Soak:
    """One server through the schedule, window by window, in its own thread."""

    def __init__(self, srv, args, seed, out_lock):
        self.srv, self.args, self.out_lock = srv, args, out_lock
        self.schedule = Schedule(random.Random(f"{seed}/{srv.name}"), srv)
        self.records, self.errors = [], []
        self.history = soak_checks.History(srv.name)

    def run(self, windows):
        try:
            self.srv.configure(2, self.srv.listens)
            self.srv.start()
            for window in range(1, windows + 1):
                self.one_window(window, time.monotonic() + self.args.window)
        except Exception as e:  # a Failure, or a bug: either way this server's soak failed
            self.errors.append(f"{self.srv.label}: {e if isinstance(e, Failure) else traceback.format_exc()}")
            # Said at once: the other server's soak goes on to the end.
            print(f"soak {self.srv.label}: stopped: {self.errors[-1]}", flush=True)

    def one_window(self, window, end):
        srv = self.srv
        before = soak_checks.deaths_mark(srv)
        load = srv_load(srv, self.args)
        events = self.schedule.run_until(end)
        master = self.schedule.settle()
        result = load.stop()
        losses = soak_checks.judge_losses(srv, result, before)
        sample = soak_checks.sample(srv, master)
        record = {"server": srv.label, "window": window, "t_s": round(time.monotonic() - self.args.t0, 1),
                  "events": events, **soak_checks.counts(result), "unexcused": losses.unexcused,
                  **sample}
        self.records.append(record)
        problems = ([] if losses.ok else [losses.explain()]) + self.history.add(record)
        record["problems"] = problems
        print(soak_checks.describe(record), flush=True)
        if self.args.out:
            with self.out_lock, open(self.args.out, "a") as f:
                f.write(json.dumps(record) + "\n")
        if problems:
            if not self.args.keep_going:
                raise Failure(f"window {window}: " + "; ".join(problems))
            self.errors.append(f"{srv.label}: window {window}: " + "; ".join(problems))


def srv_load(srv, args):
    from prefork.load import Load
    return Load(args.client, srv.dir, srv.listens, concurrency=32, rate=args.rate, timeout_ms=3000,
                duration=min(600, int(args.window) + 300), quiet=True)


def make_servers(args, workdir):
    servers = []
    if args.rpserver:
        d = os.path.join(workdir, "rpserver")
        os.makedirs(d)
        srv = Rpserver(args.rpserver, d, "bpf")
        srv.listens = [f"127.0.0.1:{RPSERVER_PORT}", f"[::1]:{RPSERVER_PORT}"]
        servers.append(srv)
    if args.nginx:
        d = os.path.join(workdir, "nginx")
        os.makedirs(d)
        srv = Nginx(NginxBuild.at(args.nginx, "patched"), d)
        srv.listens = [f"127.0.0.1:{NGINX_PORT}", f"[::1]:{NGINX_PORT}"]
        servers.append(srv)
    return servers


def main():
    args = arguments()
    if not (args.rpserver or args.nginx):
        print("give --rpserver, --nginx or both", file=sys.stderr)
        return 2
    if args.nginx and not os.access(os.path.join(args.nginx, "sbin", "nginx"), os.X_OK):
        print(f"{args.nginx}/sbin/nginx not found: run scripts/build-nginx.sh", file=sys.stderr)
        return 1
    try:
        with open("/proc/sys/net/ipv4/tcp_migrate_req", "w") as f:
            f.write("0")
    except OSError as e:
        print(f"cannot set net.ipv4.tcp_migrate_req ({e}): run through tests/c/in-netns.sh, as root",
              file=sys.stderr)
        return 1
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 32)
    print(f"soak: seed {seed} (rerun with --seed {seed}), {args.minutes:g} minutes, "
          f"{args.rate} connections/s per server", flush=True)
    become_subreaper()
    kernel_before = soak_kernel.snapshot()
    print(f"soak: kernel before: {soak_kernel.describe(kernel_before)}", flush=True)
    workdir = tempfile.mkdtemp(prefix="e2e-soak-")
    servers = make_servers(args, workdir)
    lock = threading.Lock()
    soaks = [Soak(s, args, seed, lock) for s in servers]
    args.t0 = time.monotonic()
    windows = max(1, round(args.minutes * 60 / args.window))
    threads = [threading.Thread(target=s.run, args=(windows,), name=s.srv.label) for s in soaks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [e for s in soaks for e in s.errors]
    for s in soaks:
        try:
            soak_checks.graceful_stop(s.srv)
        except Failure as e:
            errors.append(f"{s.srv.label}: {e}")
        finally:
            s.srv.stop()
            reap(os.path.basename(s.srv.binary))
    try:
        kernel_after = soak_kernel.settled_after(kernel_before)
        print(f"soak: kernel after: {soak_kernel.describe(kernel_after)}", flush=True)
        errors += soak_kernel.leftovers(kernel_before, kernel_after)
    except Failure as e:
        errors.append(str(e))
    for s in soaks:
        print(soak_checks.summary(s.srv.label, s.records), flush=True)
    if errors:
        print("soak: FAILED (seed %d):\n  " % seed + "\n  ".join(errors), file=sys.stderr)
        for s in soaks:
            tail = s.srv.log_tail()
            if tail:
                print(f"last lines of {s.srv.label}'s log:\n{tail}", file=sys.stderr)
        print(f"the servers' directories are kept in {workdir}", file=sys.stderr)
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    print(f"soak: passed ({args.minutes:g} minutes, seed {seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
