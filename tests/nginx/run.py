#!/usr/bin/env python3
"""nginx scenarios: stock or patched nginx (scripts/build-nginx.sh) with `listen ...
reuseport`, under continuous load from loadclient, one scenario per run, inside a private
network namespace (tests/c/in-netns.sh puts us there), with net.ipv4.tcp_migrate_req as
asked (the namespace's own copy).

The body nginx returns is "worker <pid>", so the load client counts what each worker
served. nginx has no event log and no in-flight counter: workers are the master's
children (found by their process title), and when a worker is killed (SIGKILL) or
fast-stopped (TERM to its master) the runner SIGSTOPs it first and counts the accepted
connections it holds, what it loses at death (for TERM, also what it accepts on resuming,
plus a bounded slack: NginxServer.term_master). With --expect-zero (the patched build),
client failures may never exceed that count. Without it (stock), they are recorded.

After the events the processes' listen sockets are checked (patched: the master holds
none, each worker exactly one per address, all distinct) or printed (stock, where the
master and every worker hold one per address and per worker). Workers run as nobody.

Scenarios that only make sense for the patched build (PATCHED_ONLY) exit 77 (skipped)
when given the stock one.

The stall scenarios (stall2, stall4, stall_reload, stall_upgrade) stop one worker (not the
first) with SIGSTOP for 4 s under a load at saturation, as tests/scenarios/run.py does for
rpserver: with --expect-zero, nothing may fail but what that worker had accepted, and
(stall2, stall4) the others keep 90% of the throughput and, after SIGCONT, every worker
gets 60% of a fair share. stall2_plain is stall2 with a plain `listen` (no reuseport: one
socket for all), stock nginx's other layout, for the stall benchmark (tests/stall). Their
figures go into the results line either way.

Usage: run.py --nginx PREFIX --client PATH --sysctl 0|1 [--expect-zero] [--results FILE]
              [--kind stock|patched] [--rate N] [--concurrency N] [--duration S] [--keep]
              SCENARIO
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

# nginx_harness puts tests/scenarios on the path and re-exports harness.py's helpers.
from nginx_harness import (Failure, Load, NginxServer, become_subreaper, check, listen_sockets_of, listening_addresses,
                           ncpu, reap, uid_of, wait_for)
from harness import SERVER_CPUS, describe_stall, stall_under_load

PORT = 8080
BOTH = [f"127.0.0.1:{PORT}", f"[::1]:{PORT}"]
SCENARIOS = {}
PATCHED_ONLY = set()


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def patched_only(fn):
    PATCHED_ONLY.add(fn.__name__)
    return fn


def get(host, port):
    """One request; the body ("worker <pid>") or None."""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            out = b""
            while chunk := s.recv(4096):
                out += chunk
        return out.split(b"\r\n\r\n", 1)[1].decode() if out.startswith(b"HTTP/1.1 200") else None
    except OSError:
        return None


# Each scenario performs its events under load (ctx.load()), stops the load into
# ctx.result, and returns the master whose sockets the runner checks afterwards.

@scenario
def serve(srv, ctx):
    """Two workers, no event: both serve, each at least 10%."""
    srv.configure(2, BOTH)
    srv.start()
    load = ctx.load(BOTH)
    time.sleep(ctx.args.duration)
    ctx.result = load.stop()
    shares = ctx.result["workers"]
    total = sum(shares.values())
    check(len(shares) == 2, f"{len(shares)} workers served, expected 2: {shares}")
    for pid, n in shares.items():
        check(n >= total * 0.10, f"worker {pid} served {n} of {total} (less than 10%)")
    return srv.master()


@scenario
def reload10(srv, ctx):
    """Ten HUP reloads, 0.3 s apart, IPv4 and IPv6."""
    srv.configure(2, BOTH)
    first = srv.start()
    master = srv.master()
    load = ctx.load(BOTH)
    time.sleep(0.5)
    for _ in range(10):
        srv.signal(master, signal.SIGHUP)
        time.sleep(0.3)
    srv.wait_settled(master, 2, old=first)
    time.sleep(0.3)
    ctx.result = load.stop()
    return master


@scenario
def workers_change(srv, ctx):
    """worker_processes 2 -> 4 -> 1 -> 3 by reload."""
    srv.configure(2, BOTH)
    srv.start()
    master = srv.master()
    load = ctx.load(BOTH)
    time.sleep(0.5)
    for n in (4, 1, 3):
        srv.configure(n, srv.listens)
        srv.reload(master, n)
        ctx.check_sockets(master)
        time.sleep(0.5)
    ctx.result = load.stop()
    return master


@scenario
def upgrade(srv, ctx):
    """Binary upgrade: USR2, WINCH to the old master, QUIT to the old master."""
    srv.configure(2, BOTH)
    srv.start()
    load = ctx.load(BOTH)
    time.sleep(0.5)
    old, new = srv.start_upgrade()
    ctx.note(f"after USR2: old {srv.describe_sockets(old)}")
    ctx.note(f"after USR2: new {srv.describe_sockets(new)}")
    if ctx.strict:
        check(listen_sockets_of(new) == [], f"the new master {new} holds listen sockets")
    srv.signal(old, signal.SIGWINCH)
    srv.wait_settled(old, 0)
    time.sleep(0.5)
    srv.signal(old, signal.SIGQUIT)
    srv.wait_exit(old)
    time.sleep(0.3)
    ctx.result = load.stop()
    check(srv.master(oldbin=True) is None, "nginx.pid.oldbin is gone")
    check(srv.master() == new, "the pid file names the new master")
    return new


@scenario
def revert_hup(srv, ctx):
    """Upgrade, WINCH the old master, then revert: HUP to the old master (it starts
    workers again), QUIT to the new one."""
    srv.configure(2, BOTH)
    srv.start()
    load = ctx.load(BOTH)
    time.sleep(0.5)
    old, new = srv.start_upgrade()
    srv.signal(old, signal.SIGWINCH)
    srv.wait_settled(old, 0)
    time.sleep(0.3)
    srv.signal(old, signal.SIGHUP)
    srv.wait_settled(old, 2)
    srv.signal(new, signal.SIGQUIT)
    srv.wait_exit(new)
    wait_for(lambda: srv.master() == old, 5, "the old master to take its pid file back")
    time.sleep(0.3)
    ctx.result = load.stop()
    check(srv.master(oldbin=True) is None, "nginx.pid.oldbin is gone")
    return old


@scenario
def revert_term(srv, ctx):
    """Upgrade, then revert by TERM to the new master while the old workers still run.
    The new workers are fast-stopped: what they hold is counted (see term_master)."""
    srv.configure(2, BOTH)
    srv.start()
    load = ctx.load(BOTH)
    time.sleep(0.5)
    old, new = srv.start_upgrade()
    time.sleep(0.5)
    lost, slack = srv.term_master(new)
    ctx.lost += lost
    ctx.slack += slack
    ctx.note(f"TERM to new master {new}: its workers had accepted {lost} connections when they exited "
             f"(+ at most {slack} more)")
    srv.wait_exit(new)
    wait_for(lambda: srv.master() == old, 5, "the old master to take its pid file back")
    time.sleep(0.3)
    ctx.result = load.stop()
    return old


def kill_twice(srv, ctx, pick):
    """SIGKILL the worker `pick` chooses, wait for the master to respawn it, then SIGKILL
    the replacement (the same worker slot) and wait again."""
    srv.configure(3, BOTH)
    workers = srv.start()
    master = srv.master()
    load = ctx.load(BOTH)
    time.sleep(0.5)
    victim = pick(workers)
    for _ in range(2):
        held = srv.kill9(victim)
        ctx.lost += held
        ctx.note(f"SIGKILL worker {victim}: it held {held} connections")
        survivors = [w for w in workers if w != victim]
        workers = srv.wait_settled(master, 3, old=[victim])
        replacement = sorted(set(workers) - set(survivors))
        check(len(replacement) == 1 and set(survivors) <= set(workers),
              f"one worker replaces {victim}: before {survivors}, now {workers}")
        victim = replacement[0]
        time.sleep(0.5)
    ctx.result = load.stop()
    return master


@scenario
def kill9_worker0(srv, ctx):
    """SIGKILL worker 0 (the lowest pid; for the patched build, the one that adopted the
    master's sockets), twice: the master respawns it."""
    return kill_twice(srv, ctx, min)


@scenario
def kill9_other(srv, ctx):
    """SIGKILL another worker (the highest pid), twice: the master respawns it."""
    return kill_twice(srv, ctx, max)


@scenario
def user_nobody_port80(srv, ctx):
    """Port 80 (privileged) with `user nobody`, the master root: workers serve as uid
    65534, before and after a reload."""
    check(os.getuid() == 0, "needs root (run through tests/c/in-netns.sh)")
    srv.configure(2, ["127.0.0.1:80"])
    srv.start()
    master = srv.master()
    load = ctx.load(["127.0.0.1:80"])
    time.sleep(1)
    ctx.check_sockets(master)
    srv.reload(master)
    time.sleep(1)
    ctx.result = load.stop()
    for pid in srv.workers_of(master):
        check(uid_of(pid) == 65534, f"worker {pid} runs as uid {uid_of(pid)}")
    check(len(ctx.result["workers"]) >= 2, f"workers served: {ctx.result['workers']}")
    return master


@scenario
def stream(srv, ctx):
    """HTTP and stream (TCP proxy module) reuseport listeners side by side, 2 workers,
    load on all four addresses (stream proxies to the HTTP listener), one reload."""
    stream_addrs = [f"127.0.0.1:{PORT + 1}", f"[::1]:{PORT + 1}"]
    srv.configure(2, BOTH, stream_listens=stream_addrs)
    srv.start()
    master = srv.master()
    load = ctx.load(BOTH + stream_addrs)
    time.sleep(1)
    srv.reload(master)
    time.sleep(1)
    ctx.result = load.stop()
    for host in ("127.0.0.1", "::1"):
        body = get(host, PORT + 1)
        check(body is not None and body.startswith("worker "), f"stream {host} port {PORT + 1} serves: {body!r}")
    return master


@scenario
def sockets(srv, ctx):
    """Four addresses, four workers, no load: how many listen sockets each process holds."""
    srv.configure(4, [f"127.0.0.1:{PORT}", f"[::1]:{PORT}", f"127.0.0.1:{PORT + 1}", f"[::1]:{PORT + 1}"])
    srv.start()
    master = srv.master()
    for host, port in (("127.0.0.1", PORT), ("::1", PORT), ("127.0.0.1", PORT + 1), ("::1", PORT + 1)):
        body = get(host, port)
        check(body is not None and body.startswith("worker "), f"{host} port {port} serves: {body!r}")
    counts = srv.socket_counts(master)
    ctx.socket_counts = {"master": counts[master], "workers": [n for pid, n in counts.items() if pid != master]}
    return master


@scenario
def config_test(srv, ctx):
    """`nginx -t` (the same -p and -c) ten times, 0.3 s apart, while nginx serves under
    load: each succeeds, and no connection is lost. nginx -t opens the listen sockets too,
    to check they can be bound. Stock nginx -t sets no SO_REUSEPORT (`reuseport &&
    !ngx_test_config`), so its bind fails with EADDRINUSE, which nginx -t ignores: it never
    joins the running groups. The patched nginx -t opens one socket per address through the
    library (reuseport_single_open): it joins the groups for the few milliseconds it runs,
    and what the kernel queues on its sockets meanwhile must migrate to the workers when it
    exits (the groups carry the library's program) instead of being reset."""
    srv.configure(2, BOTH)
    workers = srv.start()
    master = srv.master()
    load = ctx.load(BOTH)
    time.sleep(0.5)
    took = []
    for _ in range(10):
        t0 = time.monotonic()
        p = subprocess.run(srv.command("-t"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=30)
        took.append(time.monotonic() - t0)
        check(p.returncode == 0 and "test is successful" in p.stdout,
              f"nginx -t failed (exit {p.returncode}): {p.stdout.strip()}")
        time.sleep(0.3)
    ctx.note(f"nginx -t took {', '.join(f'{1000 * t:.0f}' for t in took)} ms")
    ctx.result = load.stop()
    check(srv.workers_of(master) == workers, f"the workers changed: {workers} -> {srv.workers_of(master)}")
    return master


@scenario
def single_process(srv, ctx):
    """`master_process off` and `daemon off`, nginx in the foreground as this process's
    child: it serves under load, holding one listen socket per reuseport address (the
    patched build; stock clones one per `worker_processes`, 2 here, and polls only the
    first), and QUIT stops it (exit 0, no listen socket left)."""
    srv.configure(2, BOTH, extra_main="master_process off;\ndaemon off;\n")
    pid = srv.start_foreground()
    held = srv.reuseport_sockets_of(pid)
    ctx.note(f"single process {pid} holds {len(held)} listen sockets for {len(BOTH)} addresses")
    if ctx.strict:
        check(len(held) == len(BOTH), f"process {pid} holds {len(held)} listen sockets, expected {len(BOTH)}")
    load = ctx.load(BOTH)
    time.sleep(3)
    ctx.result = load.stop()
    check(set(ctx.result["workers"]) == {str(pid)}, f"served by {ctx.result['workers']}, expected only {pid}")
    srv.signal(pid, signal.SIGQUIT)
    try:
        rc = srv.proc.wait(10)
    except subprocess.TimeoutExpired:
        raise Failure(f"nginx {pid} still runs 10 s after QUIT")
    check(rc == 0, f"nginx exited with status {rc} after QUIT")
    check(srv.master() is None, "the pid file is gone")
    left = listening_addresses()
    check(not left, f"listen sockets left after QUIT: {left}")
    return None


@scenario
def workers_auto(srv, ctx):
    """`worker_processes auto`: as many workers as CPUs (nginx 1.22.1 counts the online
    ones), each with its own socket per address in the patched build; all serve."""
    srv.configure("auto", BOTH)
    workers = srv.start()
    master = srv.master()
    affinity = len(os.sched_getaffinity(0))
    ctx.note(f"worker_processes auto: {len(workers)} workers; {ncpu()} CPUs online, {affinity} in this "
             f"process's affinity mask")
    check(len(workers) == ncpu(), f"{len(workers)} workers, expected {ncpu()}")
    load = ctx.load(BOTH)
    time.sleep(3)
    ctx.result = load.stop()
    shares = ctx.result["workers"]
    check(set(shares) == {str(w) for w in workers}, f"workers {workers} served {shares}")
    return master


@scenario
def mixed_listeners(srv, ctx):
    """reuseport and plain listeners in one config: 127.0.0.1:8080 reuseport and
    127.0.0.1:8081 (no reuseport) in a server; [::1]:8080 reuseport, [::1]:8081 and the same
    two IPv4 addresses again (no options) in another. Load on the four; a reload, then an
    upgrade (USR2, WINCH, QUIT to the old master). Each address without reuseport keeps one
    socket, which the master and every worker hold, through the reload and the upgrade (as
    stock nginx does); the reuseport ones follow the library's layout."""
    reuseport = [f"127.0.0.1:{PORT}", f"[::1]:{PORT}"]
    plain = [f"127.0.0.1:{PORT + 1}", f"[::1]:{PORT + 1}"]
    servers = [[f"127.0.0.1:{PORT} reuseport", f"127.0.0.1:{PORT + 1}"],
               [f"[::1]:{PORT} reuseport", f"[::1]:{PORT + 1}", f"127.0.0.1:{PORT}", f"127.0.0.1:{PORT + 1}"]]
    srv.configure(2, reuseport, servers=servers)
    check(srv.plain == sorted(plain), f"addresses without reuseport: {srv.plain}")
    srv.start()
    master = srv.master()
    shared = srv.shared_sockets(master)
    ctx.note(f"shared sockets: {shared}")
    load = ctx.load(reuseport + plain)
    time.sleep(0.5)
    srv.reload(master)
    ctx.check_sockets(master)
    check(srv.shared_sockets(master) == shared, f"after the reload: {srv.shared_sockets(master)}, before {shared}")
    time.sleep(0.5)
    old, new = srv.start_upgrade()
    ctx.note(f"after USR2: old {srv.describe_sockets(old)}")
    ctx.note(f"after USR2: new {srv.describe_sockets(new)}")
    if ctx.strict:
        check(srv.reuseport_sockets_of(new) == [], f"the new master {new} holds reuseport listen sockets")
    check(srv.shared_sockets(new) == shared, f"the new master's: {srv.shared_sockets(new)}, the old one's {shared}")
    srv.signal(old, signal.SIGWINCH)
    srv.wait_settled(old, 0)
    time.sleep(0.5)
    srv.signal(old, signal.SIGQUIT)
    srv.wait_exit(old)
    time.sleep(0.3)
    ctx.result = load.stop()
    check(srv.shared_sockets(new) == shared, f"after the upgrade: {srv.shared_sockets(new)}, before {shared}")
    for host, port in (("127.0.0.1", PORT), ("::1", PORT), ("127.0.0.1", PORT + 1), ("::1", PORT + 1)):
        body = get(host, port)
        check(body is not None and body.startswith("worker "), f"{host} port {port} serves: {body!r}")
    return new


@scenario
@patched_only
def error_log(srv, ctx):
    """The library's messages in nginx's error log, at nginx's levels. A normal start logs
    "[info] ... reuseport listener 127.0.0.1:8080: strategy bpf". Then, with a plain
    listener (no SO_REUSEPORT) opened by this runner on 127.0.0.1:8080, nginx must fail
    to start, and the error log (`error_log FILE info`) must hold the library's "[error]
    ... reuseport: ... without SO_REUSEPORT ..." line and nginx's "[emerg]" line.
    Patched only: stock nginx logs bind()'s own error and calls no library."""
    addr = f"127.0.0.1:{PORT}"
    srv.configure(2, [addr])
    srv.start()
    master = srv.master()
    ctx.check_sockets(master)
    body = get("127.0.0.1", PORT)
    check(body is not None and body.startswith("worker "), f"{addr} serves: {body!r}")
    srv.signal(master, signal.SIGQUIT)
    srv.wait_exit(master)
    lines = read_lines(srv.log)
    want = f"reuseport listener {addr}: strategy bpf"
    check(any("[info]" in line and want in line for line in lines),
          f"no [info] line with {want!r} in the error log:\n" + "".join(lines))

    os.replace(srv.log, srv.log + ".first")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as plain:
        # SO_REUSEADDR (as servers set it): the test's own connection may have left a
        # TIME_WAIT on the port. It lets no second listener in; only SO_REUSEPORT does.
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        plain.bind(("127.0.0.1", PORT))
        plain.listen(16)
        rc, out = srv.try_start()
        ctx.note(f"with a plain listener on {addr}: nginx exit {rc}, output: {out.strip()!r}")
        check(rc != 0, f"nginx started (exit 0) while a plain listener holds {addr}")
        check(srv.master() is None, "no pid file after a failed start")
        lines = read_lines(srv.log)
        error = [line for line in lines if "[error]" in line and "reuseport:" in line
                 and "without SO_REUSEPORT" in line]
        emerg = [line for line in lines if "[emerg]" in line]
        if not error:
            # Say where it went instead.
            default_log = os.path.join(srv.dir, "logs", "error.log")
            elsewhere = [f"{default_log} (nginx's built-in log, in use until the configured one is)"
                         for line in read_lines(default_log) if "without SO_REUSEPORT" in line][:1]
            elsewhere += ["nginx's stderr"] if "without SO_REUSEPORT" in out else []
            raise Failure(f"no [error] line with 'reuseport:' and 'without SO_REUSEPORT' in the error log "
                          f"{srv.log}" + (f"; it is in {' and in '.join(elsewhere)}" if elsewhere else "")
                          + ". The error log holds:\n" + "".join(lines))
        check(emerg, "no [emerg] line in the error log:\n" + "".join(lines))
        ctx.note(f"error log: {error[0].strip()}")
        ctx.note(f"error log: {emerg[0].strip()}")
        # what still holds the port is this runner's socket, and nothing of nginx
        check(list(listening_addresses().values()) == [addr], f"listen sockets: {listening_addresses()}")
    return None


@scenario
@patched_only
def health_threshold(srv, ctx):
    """The `reuseport_health_threshold` directive (main context, a time; 0 turns steering
    off): `nginx -t` refuses a value that is not a time and one above 60s; with 300ms, a
    worker stopped for 1 s under load is declared stalled after 300 ms (the warning in the
    error log names the threshold), and its queue goes to the other worker, so no
    connection fails; after a reload with 200ms, the same with 200 ms; and after reloads
    to 0 (steering off) and to 100ms, steering is back, at 100 ms. Patched only: stock
    nginx knows no such directive."""
    addr = f"127.0.0.1:{PORT}"
    for value, want in (("soon", "invalid value"), ("2m", "must be at most 60000ms")):
        srv.configure(2, [addr], extra_main=f"reuseport_health_threshold {value};\n")
        p = subprocess.run(srv.command("-t"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=30)
        check(p.returncode != 0 and want in p.stdout,
              f"nginx -t with reuseport_health_threshold {value}: exit {p.returncode}, wanted {want!r}: "
              f"{p.stdout.strip()}")
        ctx.note(f"reuseport_health_threshold {value}: "
                 + next(line for line in p.stdout.splitlines() if want in line).strip())
    srv.configure(2, [addr], extra_main="reuseport_health_threshold 300ms;\n")
    workers = srv.start()
    master = srv.master()
    load = ctx.load([addr], rate=1000, concurrency=16)
    try:
        for ms in (300, 200, 0, 100):
            if ms != 300:
                # a reload applies a new threshold
                srv.configure(2, [addr], extra_main=f"reuseport_health_threshold {ms}ms;\n")
                workers = srv.reload(master)
            if ms == 0:
                continue  # no steering: a stopped worker's share would wait for it
            victim = max(workers)
            srv.signal(victim, signal.SIGSTOP)
            time.sleep(1)
            srv.signal(victim, signal.SIGCONT)
            want = f"worker {victim} (slot"
            stalled = [line for line in read_lines(srv.log)
                       if "[warn]" in line and want in line and "is not accepting" in line]
            check(stalled, f"no [warn] line saying worker {victim} is not accepting in the error log")
            check(f"waited {ms} ms without a heartbeat" in stalled[0],
                  f"the warning does not name {ms} ms: {stalled[0].strip()}")
            ctx.note(f"error log: {stalled[0].strip()}")
    finally:
        ctx.result = load.stop()
    return master


@scenario
def stall2(srv, ctx):
    """Two workers, one reuseport address, a load at saturation: the second worker is
    stopped for 4 s, then continued; a separate load after that tells how evenly the
    workers share it."""
    return stall_scenario(srv, ctx, 2)


@scenario
def stall4(srv, ctx):
    """stall2 with four workers."""
    return stall_scenario(srv, ctx, 4)


@scenario
def stall2_plain(srv, ctx):
    """stall2 with `listen 127.0.0.1:8080` without reuseport: one socket, inherited by
    both workers, that the one running keeps accepting from."""
    return stall_scenario(srv, ctx, 2, plain=True)


@scenario
def stall_reload(srv, ctx):
    """Two workers, one stopped; HUP to the master while it is stopped: the new workers
    start, the stopped one exits once continued (4 s after its stop: it got QUIT)."""
    def during(master, first):
        srv.signal(master, signal.SIGHUP)
        wait_for(lambda: len(set(srv.workers_of(master)) - set(first)) == 2, 20, f"master {master}'s 2 new workers")

    def after(master, first, victim):
        srv.wait_exit(victim)
        srv.wait_settled(master, 2, old=first)

    return stall_scenario(srv, ctx, 2, during=during, after=after, even=False)


@scenario
def stall_upgrade(srv, ctx):
    """Two workers, one stopped; binary upgrade while it is stopped: USR2, then QUIT to
    the old master, which exits once the stopped worker (continued 4 s after its stop)
    has."""
    masters = {}

    def during(master, first):
        old, new = srv.start_upgrade()
        if ctx.strict:
            check(listen_sockets_of(new) == [], f"the new master {new} holds listen sockets")
        srv.signal(old, signal.SIGQUIT)
        masters["new"] = new

    def after(master, first, victim):
        srv.wait_exit(master)
        check(srv.master(oldbin=True) is None, "nginx.pid.oldbin is gone")
        check(srv.master() == masters["new"], "the pid file names the new master")

    return stall_scenario(srv, ctx, 2, during=during, after=after, even=False)


@scenario
def stall_after_revert(srv, ctx):
    """An upgrade reverted by TERM to the new master (no load yet), then stall2 on the old
    master's workers. Patched: the new master's steering program stayed in the group when
    it exited, and the old master takes the steering back, so the stopped worker is
    steered around as before the upgrade."""
    def before():
        old, new = srv.start_upgrade()
        time.sleep(0.3)
        srv.signal(new, signal.SIGTERM)
        srv.wait_exit(new)
        wait_for(lambda: srv.master() == old, 5, "the old master to take its pid file back")
        time.sleep(0.3)

    return stall_scenario(srv, ctx, 2, before=before)


def stall_scenario(srv, ctx, workers, during=None, after=None, even=True, plain=False, before=None):
    """The stall scenarios (harness.stall_under_load): `workers` workers on
    127.0.0.1:8080, the highest-pid one stopped; during(master, workers) runs while it is
    stopped, after(master, workers, victim) once it is continued. With even, the ok rate
    during the stall is compared with the steady one, and a separate load after SIGCONT
    with the fair shares of the workers of the master then running (the pid file's). The
    figures are recorded; the checks (ctx.checks) apply with --expect-zero. Returns the
    master then running."""
    addr = f"127.0.0.1:{PORT}"
    if plain:
        srv.configure(workers, [], servers=[[addr]])
    else:
        srv.configure(workers, [addr])
    first = srv.start(cpus=SERVER_CPUS)  # the load client runs on the other CPU (STALL_LOAD)
    if before:
        before()
    master = srv.master()
    victim = first[-1]
    ctx.result, ctx.figures, checks = stall_under_load(
        lambda **kw: ctx.load([addr], **kw), srv.signal, victim, srv.ports,
        during=during and (lambda: during(master, first)), after=after and (lambda: after(master, first, victim)),
        workers=(lambda: srv.workers_of(srv.master())) if even else None)
    ctx.checks += checks
    return srv.master()


def read_lines(path):
    try:
        with open(path, errors="replace") as f:
            return f.readlines()
    except FileNotFoundError:
        return []


class Context:
    def __init__(self, args, srv):
        self.args, self.srv, self.result = args, srv, None
        self.strict = args.kind == "patched"
        self.loads = []
        self.lost = 0  # connections held by killed or fast-stopped workers
        self.slack = 0  # what fast-stopped workers may accept before acting on TERM
        self.socket_counts = None
        self.figures = {}  # what a scenario measured beyond the load's counts, for the results line
        self.checks = []  # (ok, what): checked with --expect-zero, once the results line is written

    def load(self, targets, **kw):
        """A load client in the background (harness.Load; kw: its concurrency, rate,
        timeout_ms, duration, timeline_ms); concurrency and rate default to the command line's."""
        kw = {"concurrency": self.args.concurrency, "rate": self.args.rate, **kw}
        load = Load(self.args.client, self.srv.dir, targets, **kw)
        self.loads.append(load)
        return load

    def note(self, text):
        print(f"  {self.args.kind}: {text}", flush=True)

    def check_sockets(self, master):
        self.srv.check_sockets(master, self.strict)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nginx", required=True, help="an nginx prefix: target/nginx-stock or target/nginx-patched")
    p.add_argument("--client", required=True, help="build/c-examples/loadclient")
    p.add_argument("--sysctl", type=int, choices=(0, 1), required=True, help="net.ipv4.tcp_migrate_req")
    p.add_argument("--expect-zero", action="store_true",
                   help="fail when more connections fail than killed or fast-stopped workers held")
    p.add_argument("--kind", choices=("stock", "patched"),
                   help="which build (default: from the prefix's name); patched asserts the socket layout")
    p.add_argument("--results", help="append a JSON line with the counts to this file")
    p.add_argument("--rate", type=int, default=4000, help="new connections per second (0: as fast as possible)")
    p.add_argument("--concurrency", type=int, default=32, help="connections in flight at most")
    p.add_argument("--duration", type=float, default=3, help="seconds of load in the serve scenario")
    p.add_argument("--keep", action="store_true", help="keep nginx's temporary prefix (config, log) even when passing")
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    args = p.parse_args()
    if args.kind is None:
        args.kind = "patched" if "patched" in os.path.basename(os.path.abspath(args.nginx)) else "stock"
    if not os.access(os.path.join(args.nginx, "sbin", "nginx"), os.X_OK):
        print(f"{args.nginx}/sbin/nginx not found: run scripts/build-nginx.sh", file=sys.stderr)
        return 1
    if args.scenario in PATCHED_ONLY and args.kind != "patched":
        print(f"SKIPPED: {args.scenario} tests the patched build only")
        return 77

    try:
        with open("/proc/sys/net/ipv4/tcp_migrate_req", "w") as f:
            f.write(str(args.sysctl))
    except OSError as e:
        print(f"cannot set net.ipv4.tcp_migrate_req ({e}): run through tests/c/in-netns.sh, as root", file=sys.stderr)
        return 1
    become_subreaper()
    name = f"{args.scenario} (nginx {args.kind}, tcp_migrate_req={args.sysctl})"
    workdir = tempfile.mkdtemp(prefix=f"nginx-{args.scenario}-")
    srv = NginxServer(args.nginx, workdir, args.kind)
    ctx = Context(args, srv)
    passed = True
    try:
        master = SCENARIOS[args.scenario](srv, ctx)
        if master is not None:
            ctx.check_sockets(master)
        record = {"scenario": args.scenario, "server": args.kind, "tcp_migrate_req": args.sysctl}
        zero = None  # (failed, allowed): checked once the record is written
        if ctx.socket_counts is not None:
            c = ctx.socket_counts
            print(f"{name}: {len(srv.listens)} addresses x {len(c['workers'])} workers: master holds {c['master']} "
                  f"listen sockets, workers hold {' '.join(map(str, c['workers']))}")
            if ctx.strict:
                check(c["master"] == 0 and c["workers"] == [len(srv.listens)] * len(c["workers"]),
                      f"expected 0 for the master and {len(srv.listens)} per worker")
            record["listen_sockets"] = c
        elif ctx.result is not None:
            r = ctx.result
            failed = r["reset"] + r["timeout"] + r["other"] + r["refused"]
            check(r["ok"] > 0, "no request succeeded")
            print(f"{name}: requests={r['requests']} ok={r['ok']} refused={r['refused']} reset={r['reset']} "
                  f"timeout={r['timeout']} other={r['other']} in_flight_at_death={ctx.lost}"
                  + (f" (+{ctx.slack} possible)" if ctx.slack else "") + f" workers_seen={len(r['workers'])}"
                  + f" rate_per_s={r['rate_per_s']}")
            if ctx.figures:
                print(f"{name}: {describe_stall(ctx.figures)}")
            record.update(in_flight_at_death=ctx.lost, in_flight_slack=ctx.slack, **r, **ctx.figures)
            if args.expect_zero:
                zero = failed
            else:
                print(f"{name}: recorded, {failed} failed")
        else:
            print(f"{name}: every check passed (no load)")
            record["checks_passed"] = True
        if args.results:
            with open(args.results, "a") as f:
                f.write(json.dumps(record) + "\n")
        if zero is not None:
            for ok, what in ctx.checks:
                check(ok, what)
            # A stopped worker's accepted connections time out too (the stall scenarios).
            held = ctx.figures.get("accepted_at_stop", 0)
            check(zero <= ctx.lost + ctx.slack + held,
                  f"{zero} connections failed, but dead workers had only {ctx.lost} in flight"
                  + (f" (+{ctx.slack} possible)" if ctx.slack else "")
                  + (f" and the stopped one had accepted {held}" if held else ""))
    except Exception as e:  # a Failure, or a bug of the runner: either way the scenario failed
        passed = False
        if isinstance(e, Failure):
            print(f"{name}: FAILED: {e}", file=sys.stderr)
        else:
            print(f"{name}: FAILED: {traceback.format_exc()}", file=sys.stderr)
        if ctx.loads and srv.timeline:
            # the load client's failure details above count from its start, within milliseconds of this
            t0 = ctx.loads[0].started
            print("signals sent (s since the load started): "
                  + ", ".join(f"{t - t0:.3f} {what}" for t, what in srv.timeline), file=sys.stderr)
        tail = srv.log_tail()
        if tail:
            print("last lines of nginx's error log:\n" + tail, file=sys.stderr)
    finally:
        for load in ctx.loads:
            load.abort()
        srv.stop()
        reap()
    if passed and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"nginx's prefix, config and log are kept in {workdir}", file=sys.stderr)
    print(f"scenario {args.scenario}: {1 if passed else 0} passed, {0 if passed else 1} failed")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
