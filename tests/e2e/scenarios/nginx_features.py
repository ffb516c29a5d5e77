"""nginx's own features with reuseport listeners: the stream module, `nginx -t`, single
process mode, `worker_processes auto`, reuseport and plain listeners side by side, the
error log, and the patch's reuseport_health_threshold directive."""

import os
import signal
import socket
import subprocess
import time

from prefork import procfs
from prefork.wait import Failure, check

from ..servers.nginx import ncpu
from . import scenario
from .http import get
from .lifecycle import BOTH

PORT = 8080


def read_lines(path):
    try:
        with open(path, errors="replace") as f:
            return f.readlines()
    except FileNotFoundError:
        return []


@scenario(servers=["nginx"])
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


@scenario(servers=["nginx"])
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


@scenario(servers=["nginx"])
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


@scenario(servers=["nginx"])
def single_process(srv, ctx):
    """`master_process off` and `daemon off`, nginx in the foreground as this process's
    child: it serves under load, holding one listen socket per reuseport address (the
    patched build; stock clones one per `worker_processes`, 2 here, and polls only the
    first), and QUIT stops it (exit 0, no listen socket left)."""
    srv.configure(2, BOTH, extra_main="master_process off;\ndaemon off;\n")
    pid = srv.start_foreground()
    held = srv.reuseport_sockets_of(pid)
    ctx.note(f"single process {pid} holds {len(held)} listen sockets for {len(BOTH)} addresses")
    if srv.strict:
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
    left = procfs.listening_addresses()
    check(not left, f"listen sockets left after QUIT: {left}")
    return None


@scenario(servers=["nginx"])
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


@scenario(servers=["nginx"])
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
    if srv.strict:
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


@scenario(servers=["nginx"], patched_only=True)
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
    lines = srv.log_lines()
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
        lines = srv.log_lines()
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
        check(list(procfs.listening_addresses().values()) == [addr], f"listen sockets: {procfs.listening_addresses()}")
    return None


@scenario(servers=["nginx"], patched_only=True)
def health_threshold(srv, ctx):
    """The `reuseport_health_threshold` directive (main context, a time; 0 turns steering
    off): `nginx -t` refuses a value that is not a time and one above 60s; with 300ms, a
    worker stopped for 1 s under load is declared stalled after 300 ms (the warning in the
    error log names the threshold), and its queue goes to the other worker, so no
    connection fails; after a reload with 200ms, the same with 200 ms; and after reloads
    to 0 (no verdicts) and to 100ms, steering is back, at 100 ms. Patched only: stock
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
            stalled = [line for line in srv.log_lines()
                       if "[warn]" in line and want in line and "is not accepting" in line]
            check(stalled, f"no [warn] line saying worker {victim} is not accepting in the error log")
            check(f"waited {ms} ms without a heartbeat" in stalled[0],
                  f"the warning does not name {ms} ms: {stalled[0].strip()}")
            ctx.note(f"error log: {stalled[0].strip()}")
    finally:
        ctx.result = load.stop()
    return master
