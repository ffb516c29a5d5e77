#!/usr/bin/env python3
"""Lifecycle scenarios: rpserver under continuous load from loadclient, one scenario per
run, inside a private network namespace (tests/c/in-netns.sh puts us there).

Every scenario runs with a reuseport strategy (how a leaving worker's queue is kept) and
net.ipv4.tcp_migrate_req set as asked (the namespace's own copy). With a migrating
strategy (bpf, sysctl), no connection may fail, except that a killed (SIGKILL) or
fast-stopped (TERM) worker loses what it had already accepted: the server counts that per
worker, and client failures may never exceed it. With drain and none, the failures are
recorded (none is the baseline) and only what holds there is asserted.

After the events, the processes must hold exactly the sockets the design says: the
master none, every worker one listening socket per address.

The stall scenarios (stall2, stall4, stall_reload, stall_upgrade; meaningful with the bpf
strategy) stop one worker (SIGSTOP) for 4 s under a load at saturation: the library must
steer new connections away from it and move its queue to a healthy sibling, so that no
connection fails but those the worker had accepted before it stopped, and (stall2,
stall4) the others keep up the throughput and the load is even again after SIGCONT. Their
figures (rates before and during the stall, accepted at the stop, timeouts) go into the
results line whether or not the checks pass.

Usage: run.py --server PATH --client PATH --strategy S --sysctl 0|1 [--results FILE] SCENARIO
"""

import argparse
import json
import os
import signal
import socket
import sys
import tempfile
import time

from harness import (PORT, SERVER_CPUS, Failure, Load, Server, check, close_race_resets, describe_stall, failed_of, fds_of, listen_sockets_of,
                     stall_under_load, uid_of, wait_for)

SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def connectable(port, host="127.0.0.1"):
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


# Each scenario performs its events under load and returns nothing; it may assert things
# of its own. The runner then checks the failures against the migration setting.

@scenario
def steady(srv, ctx):
    """Four workers, no event: every worker gets a fair share."""
    srv.configure(4, [f"127.0.0.1:{PORT}"])
    srv.start()
    load = ctx.load()
    time.sleep(3)
    ctx.result = load.stop()
    shares = ctx.result["workers"]
    total = sum(shares.values())
    check(len(shares) == 4, f"{len(shares)} workers served, expected 4: {shares}")
    for pid, n in shares.items():
        check(n >= total * 0.10, f"worker {pid} served {n} of {total} (less than 10%)")
    srv.check_sockets(srv.master())


@scenario
def reload10(srv, ctx):
    """Ten reloads with the same config."""
    srv.configure(2, [f"127.0.0.1:{PORT}", f"[::1]:{PORT}"])
    srv.start()
    master = srv.master()
    load = ctx.load(targets=[f"127.0.0.1:{PORT}", f"[::1]:{PORT}"])
    time.sleep(0.5)
    for _ in range(10):
        srv.signal(master, signal.SIGHUP)
        time.sleep(0.3)
    srv.wait_settled(master)
    time.sleep(0.3)
    ctx.result = load.stop()
    srv.check_sockets(master)


@scenario
def workers_change(srv, ctx):
    """worker_processes 2 -> 4 -> 1 -> 3 by reload."""
    srv.configure(2, [f"127.0.0.1:{PORT}"])
    srv.start()
    master = srv.master()
    load = ctx.load()
    time.sleep(0.5)
    for n in (4, 1, 3):
        srv.configure(n, srv.listens)
        srv.reload(master, n, command=True)
        srv.check_sockets(master)
        time.sleep(0.5)
    ctx.result = load.stop()


@scenario
def addresses_change(srv, ctx):
    """A reload adds one address and removes another; the load stays on the kept one."""
    srv.configure(2, [f"127.0.0.1:{PORT}", f"127.0.0.1:{PORT + 1}"])
    srv.start()
    master = srv.master()
    check(connectable(PORT + 1), "the address to be removed serves before the reload")
    load = ctx.load()
    time.sleep(0.5)
    srv.configure(2, [f"127.0.0.1:{PORT}", f"127.0.0.1:{PORT + 2}"])
    srv.reload(master)
    time.sleep(0.5)
    ctx.result = load.stop()
    check(connectable(PORT + 2), "the added address serves")
    check(not connectable(PORT + 1), "the removed address is closed")
    srv.check_sockets(master)


def revert_by_term(srv, old, new):
    """Reverts an upgrade by TERM to the new master; returns once the old one owns the pid
    file again."""
    srv.signal(new, signal.SIGTERM)
    srv.wait_exit(new)
    wait_for(lambda: srv.master() == old, 5, "the old master to take its pid file back")


def start_upgrade(srv):
    """USR2 to the master; returns (old, new) once the new master runs its workers."""
    old = srv.master()
    srv.signal(old, signal.SIGUSR2)
    # master() is None while the new master is writing the file.
    wait_for(lambda: os.path.exists(srv.pid_path + ".oldbin") and srv.master() not in (None, old), 10,
             "the new master's pid file")
    new = srv.master()
    srv.wait_settled(new)
    return old, new


@scenario
def upgrade(srv, ctx):
    """Binary upgrade: USR2, WINCH to the old master, QUIT to the old master."""
    srv.configure(2, [f"127.0.0.1:{PORT}"])
    srv.start()
    load = ctx.load()
    time.sleep(0.5)
    old, new = start_upgrade(srv)
    check(listen_sockets_of(new) == [], "the new master released its sockets")
    srv.signal(old, signal.SIGWINCH)
    srv.wait_settled(old, 0)
    time.sleep(0.5)
    srv.signal(old, signal.SIGQUIT)
    srv.wait_exit(old)
    time.sleep(0.3)
    ctx.result = load.stop()
    check(not os.path.exists(srv.pid_path + ".oldbin"), "the .oldbin pid file is gone")
    check(srv.master() == new, "the pid file names the new master")
    srv.check_sockets(new)


@scenario
def revert_hup(srv, ctx):
    """Upgrade, WINCH the old master, then revert: HUP to the old master, QUIT to the new."""
    srv.configure(2, [f"127.0.0.1:{PORT}"])
    srv.start()
    load = ctx.load()
    time.sleep(0.5)
    old, new = start_upgrade(srv)
    srv.signal(old, signal.SIGWINCH)
    srv.wait_settled(old, 0)
    time.sleep(0.3)
    srv.reload(old)
    srv.signal(new, signal.SIGQUIT)
    srv.wait_exit(new)
    time.sleep(0.3)
    ctx.result = load.stop()
    check(srv.master() == old, "the pid file names the old master again")
    check(not os.path.exists(srv.pid_path + ".oldbin"), "the .oldbin pid file is gone")
    srv.check_sockets(old)


@scenario
def revert_term(srv, ctx):
    """Upgrade, then revert by TERM to the new master while the old workers still run."""
    srv.configure(2, [f"127.0.0.1:{PORT}"])
    srv.start()
    load = ctx.load()
    time.sleep(0.5)
    old, new = start_upgrade(srv)
    time.sleep(0.5)
    revert_by_term(srv, old, new)
    time.sleep(0.3)
    ctx.result = load.stop()
    srv.check_sockets(old)


@scenario
def kill9(srv, ctx):
    """SIGKILL a worker three times; the master respawns it."""
    srv.configure(3, [f"127.0.0.1:{PORT}"])
    srv.start()
    master = srv.master()
    load = ctx.load()
    time.sleep(0.5)
    for _ in range(3):
        victim = sorted(srv.workers_of(master))[0]
        srv.signal(victim, signal.SIGKILL)
        wait_for(lambda: victim not in srv.workers_of(master), 5, f"worker {victim} to be reaped")
        srv.wait_settled(master)
        time.sleep(0.3)
    ctx.result = load.stop()
    srv.check_sockets(master)


@scenario
def quit(srv, ctx):
    """Graceful shutdown: every request in flight when QUIT arrives is answered.

    The load stops first (a server that is going away cannot serve clients that keep
    coming: the last listener to close resets whatever completes its handshake at that
    instant, with or without migration, as in nginx). Twenty requests are held half-sent
    across the QUIT and completed after it; every one must get its response."""
    srv.configure(2, [f"127.0.0.1:{PORT}"])
    srv.start()
    master = srv.master()
    load = ctx.load()
    time.sleep(1)
    ctx.result = load.stop()
    held = [socket.create_connection(("127.0.0.1", PORT), timeout=5) for _ in range(20)]
    for s in held:
        s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")
    time.sleep(0.2)  # the workers accept them
    srv.signal(master, signal.SIGQUIT)
    time.sleep(0.3)  # the workers are shutting down, listeners closed, the requests open
    check(not connectable(PORT), "new connections are refused once the listeners are closed")
    for s in held:
        s.sendall(b"Connection: close\r\n\r\n")
    answered = 0
    for s in held:
        reply = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
        answered += reply.startswith(b"HTTP/1.1 200 OK")
        s.close()
    check(answered == len(held), f"{answered} of {len(held)} requests in flight at QUIT were answered")
    srv.wait_exit(master)
    check(not os.path.exists(srv.pid_path), "the pid file is removed")


@scenario
def reload50_fds(srv, ctx):
    """Fifty reloads leak no fd in the master and leave each worker one socket per address."""
    srv.configure(2, [f"127.0.0.1:{PORT}", f"[::1]:{PORT}"])
    srv.start()
    master = srv.master()
    before = len(fds_of(master))
    load = ctx.load(targets=[f"127.0.0.1:{PORT}", f"[::1]:{PORT}"], rate=1000)
    for _ in range(50):
        srv.reload(master)
    srv.check_sockets(master)
    after = len(fds_of(master))
    check(after == before, f"the master had {before} fds before 50 reloads and {after} after")
    ctx.result = load.stop()


def exchange(data, port=PORT, timeout=3):
    """Sends raw bytes, returns everything the server sends back until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return out
            out += chunk


@scenario
def bad_input(srv, ctx):
    """Garbage gets a 400 and a close; a flood of idle connections, five times what the
    workers may hold, does not stop them from accepting and serving everyone else."""
    srv.configure(2, [f"127.0.0.1:{PORT}"], extra="worker_connections 128;\nclient_header_timeout 20s;\n")
    srv.start()
    for garbage in (b"garbage\r\n\r\n", b"GET\r\n\r\n", b"get / HTTP/1.1\r\n\r\n", b"GET / FTP/1.0\r\n\r\n",
                    b"\x00\xff\xfe\r\n\r\n"):
        reply = exchange(garbage)
        check(reply.startswith(b"HTTP/1.1 400 "), f"{garbage!r} got {reply[:40]!r}")
        check(b"Connection: close" in reply, f"{garbage!r}: no Connection: close")
    check(exchange(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n").startswith(b"HTTP/1.1 431 "),
          "an oversized header is refused with 431")
    keepalive = exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    check(keepalive.count(b"HTTP/1.1 200 OK") == 2, f"two pipelined requests on a keep-alive connection: {keepalive!r}")
    idle = []
    for _ in range(640):
        idle.append(socket.create_connection(("127.0.0.1", PORT), timeout=3))
    load = ctx.load()
    time.sleep(2)
    ctx.result = load.stop()
    for s in idle:
        s.close()
    srv.check_sockets(srv.master())


@scenario
def unprivileged(srv, ctx):
    """A master running as nobody, handed the migration program by a root launcher across
    exec, reloads and upgrades (its new binary gets the program across exec too)."""
    check(ctx.args.launcher, "needs --launcher")
    os.chmod(srv.dir, 0o777)
    srv.unprivileged_master = True
    srv.configure(2, [f"127.0.0.1:{PORT}", f"[::1]:{PORT}"])
    srv.start(prefix=[ctx.args.launcher, "RPSERVER_REUSEPORT_PROGRAM_FD", "nobody"])
    master = srv.master()
    check(uid_of(master) == 65534, f"the master runs as uid {uid_of(master)}")
    load = ctx.load(targets=[f"127.0.0.1:{PORT}", f"[::1]:{PORT}"])
    time.sleep(0.5)
    for _ in range(3):
        srv.reload(master)
        time.sleep(0.3)
    old, new = start_upgrade(srv)
    check(uid_of(new) == 65534, f"the new master runs as uid {uid_of(new)}")
    srv.signal(old, signal.SIGWINCH)
    srv.wait_settled(old, 0)
    time.sleep(0.3)
    srv.signal(old, signal.SIGQUIT)
    srv.wait_exit(old)
    time.sleep(0.3)
    ctx.result = load.stop()
    srv.check_sockets(new)


@scenario
def stall2(srv, ctx):
    """Two workers, one address, a load at saturation: one worker (not the first) is
    stopped for 4 s. Nothing fails but what it had accepted; the other keeps at least 90%
    of the throughput; after SIGCONT both get at least 60% of a fair share again."""
    stall_scenario(srv, ctx, 2)


@scenario
def stall4(srv, ctx):
    """stall2 with four workers."""
    stall_scenario(srv, ctx, 4)


@scenario
def stall_reload(srv, ctx):
    """Two workers, one stopped; HUP to the master while it is stopped. The new generation
    starts, the stopped worker gets QUIT and exits once continued (4 s after its stop).
    Nothing fails but what it had accepted."""
    def during(master, victim):
        before = srv.generation(master)
        srv.signal(master, signal.SIGHUP)
        wait_for(lambda: srv.generation(master) > before, 10, f"master {master} to start a new generation")
        gen = srv.generation(master)
        wait_for(lambda: len({p for p, g in srv.workers_of(master).items() if g == gen} & srv.started()) == 2,
                 15, f"the 2 workers of generation {gen}")

    def after(master, victim):
        srv.wait_exit(victim)
        srv.wait_settled(master)

    stall_scenario(srv, ctx, 2, during=during, after=after, even=False)


@scenario
def stall_upgrade(srv, ctx):
    """Two workers, one stopped; binary upgrade while it is stopped: USR2, then QUIT to
    the old master. The old master exits once the stopped worker, continued 4 s after its
    stop, has. Nothing fails but what it had accepted."""
    masters = {}

    def during(master, victim):
        old, new = start_upgrade(srv)
        check(listen_sockets_of(new) == [], "the new master released its sockets")
        srv.signal(old, signal.SIGQUIT)
        masters["new"] = new

    def after(master, victim):
        srv.wait_exit(master)
        check(not os.path.exists(srv.pid_path + ".oldbin"), "the .oldbin pid file is gone")
        check(srv.master() == masters["new"], "the pid file names the new master")

    stall_scenario(srv, ctx, 2, during=during, after=after, even=False)


@scenario
def stall_after_revert(srv, ctx):
    """An upgrade reverted by TERM to the new master, then stall2 on the old master's
    workers: the new master's steering program stayed in the group when it exited, and
    the old master takes the steering back (reuseport_master_reclaim()), so the stopped
    worker is steered around as before the upgrade."""
    def before():
        old, new = start_upgrade(srv)
        time.sleep(0.3)
        revert_by_term(srv, old, new)
        time.sleep(0.3)

    stall_scenario(srv, ctx, 2, before=before)


def stall_scenario(srv, ctx, workers, during=None, after=None, even=True, before=None):
    """The stall scenarios (harness.stall_under_load): `workers` workers on one address,
    the last spawned one stopped; during(master, victim) runs while it is stopped,
    after(master, victim) once it is continued. With even, the ok rate during the stall is
    checked against the steady one, and a separate load after SIGCONT must reach every
    worker of the master then running (the pid file's) evenly. The checks run after the
    figures are recorded (ctx.checks)."""
    srv.configure(workers, [f"127.0.0.1:{PORT}"])
    srv.start(cpus=SERVER_CPUS)  # the load client runs on the other CPU (STALL_LOAD)
    if before:
        before()
    master = srv.master()
    victim = list(srv.workers_of(master))[-1]  # in spawn order: not the first, which adopted the sockets
    ctx.result, ctx.figures, checks = stall_under_load(
        ctx.load, srv.signal, victim, PORT, during=during and (lambda: during(master, victim)),
        after=after and (lambda: after(master, victim)),
        workers=(lambda: srv.workers_of(srv.master())) if even else None)
    ctx.checks += checks
    srv.check_sockets(srv.master())


class Context:
    def __init__(self, args, workdir):
        self.args, self.workdir, self.result = args, workdir, None
        self.loads = []
        self.figures = {}  # what a scenario measured beyond the load's counts, for the results line
        self.checks = []  # (ok, what): checked once the results line is written

    def load(self, targets=None, rate=None, concurrency=None, **kw):
        """A load client in the background (harness.Load; kw: its timeout_ms, duration,
        timeline_ms); rate and concurrency default to the command line's."""
        rate = self.args.rate if rate is None else min(rate, self.args.rate or rate)
        load = Load(self.args.client, self.workdir, targets or [f"127.0.0.1:{PORT}"],
                    concurrency=concurrency or self.args.concurrency, rate=rate, **kw)
        self.loads.append(load)
        return load


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--server", required=True)
    p.add_argument("--client", required=True)
    p.add_argument("--strategy", choices=("auto", "bpf", "sysctl", "drain", "drain-keep-backlog", "none"),
                   required=True)
    p.add_argument("--sysctl", type=int, choices=(0, 1), required=True, help="net.ipv4.tcp_migrate_req")
    p.add_argument("--results", help="append a JSON line with the counts to this file")
    p.add_argument("--launcher", help="tests/c/launch_unprivileged, for the unprivileged scenario")
    p.add_argument("--rate", type=int, default=4000, help="new connections per second (0: as fast as possible)")
    p.add_argument("--concurrency", type=int, default=32, help="connections in flight at most")
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    args = p.parse_args()

    with open("/proc/sys/net/ipv4/tcp_migrate_req", "w") as f:
        f.write(str(args.sysctl))
    name = f"{args.scenario} (strategy {args.strategy}, tcp_migrate_req={args.sysctl})"
    workdir = tempfile.mkdtemp(prefix=f"rp-{args.scenario}-")
    srv = Server(args.server, workdir)
    srv.strategy = args.strategy
    ctx = Context(args, workdir)
    passed = True
    try:
        SCENARIOS[args.scenario](srv, ctx)
        r = ctx.result
        failed = failed_of(r)
        lost = srv.lost_in_flight()
        check(r["ok"] > 0, "no request succeeded")
        summary = (f"{name}: requests={r['requests']} ok={r['ok']} refused={r['refused']} reset={r['reset']} "
                   f"timeout={r['timeout']} other={r['other']} in_flight_at_death={lost} workers_seen={len(r['workers'])}")
        print(summary)
        if ctx.figures:
            print(f"{name}: {describe_stall(ctx.figures)}")
        if args.results:
            with open(args.results, "a") as f:
                f.write(json.dumps({"scenario": args.scenario, "strategy": args.strategy,
                                    "tcp_migrate_req": args.sysctl, "in_flight_at_death": lost, **r,
                                    **ctx.figures}) + "\n")
        for ok, what in ctx.checks:
            check(ok, what)
        got = {ev.get("strategy") for ev in srv.events() if ev["event"] == "strategy"}
        if args.strategy != "auto":
            expected = args.strategy.split("-")[0]
            check(got == {expected}, f"the server's listeners got strategies {got}, not {expected}")
        if args.strategy in ("bpf", "sysctl"):
            # Nothing that waited in a listen queue may be lost; only what a dead process
            # had already accepted.
            # A stopped worker's accepted connections time out too (the stall scenarios).
            held = ctx.figures.get("accepted_at_stop", 0)
            # The sysctl alone leaves the kernel's close-instant race (close_race_resets());
            # only resets in flight at a close are put down to it.
            raced = close_race_resets(r, srv.close_instants()) if args.strategy == "sysctl" else 0
            if raced:
                print(f"{name}: {raced} reset(s) in flight at the instant a listener closed (the kernel's "
                      "close-instant race, which only the library's program removes)")
            check(failed <= lost + held + raced,
                  f"{failed} connections failed, but dead workers had only {lost} in flight"
                  + (f" and the stopped one had accepted {held}" if held else "")
                  + (f", and {raced} were in flight at a listener's close" if raced else ""))
        else:
            print(f"{name}: recorded, {failed} failed without migration")
    except Failure as e:
        passed = False
        print(f"{name}: FAILED: {e}", file=sys.stderr)
        tail = srv.log_lines()[-30:]
        if tail:
            print("last lines of the server log:\n" + "".join(tail), file=sys.stderr)
    finally:
        for load in ctx.loads:
            load.abort()
        srv.stop()
    print(f"scenario {args.scenario}: {1 if passed else 0} passed, {0 if passed else 1} failed")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
