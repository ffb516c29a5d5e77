"""The lifecycle under load: steady serving, reloads, worker-count and address changes,
binary upgrade and its two reverts, killed workers, graceful shutdown."""

import os
import signal
import socket
import time

from prefork import procfs
from prefork.wait import check, wait_for

from . import scenario
from .http import connectable

PORT = 8080
BOTH = [f"127.0.0.1:{PORT}", f"[::1]:{PORT}"]


def even_spread(srv, ctx, workers, listens, seconds):
    """No event: every worker serves at least 10% of the load."""
    srv.configure(workers, listens)
    srv.start()
    load = ctx.load(listens)
    time.sleep(seconds)
    ctx.result = load.stop()
    shares = ctx.result["workers"]
    total = sum(shares.values())
    check(len(shares) == workers, f"{len(shares)} workers served, expected {workers}: {shares}")
    for pid, n in shares.items():
        check(n >= total * 0.10, f"worker {pid} served {n} of {total} (less than 10%)")
    return srv.master()


@scenario(servers=["rpserver"])
def steady(srv, ctx):
    """Four workers, one address, 3 s, no event: every worker serves at least 10%."""
    return even_spread(srv, ctx, 4, [f"127.0.0.1:{PORT}"], 3)


@scenario(servers=["nginx"])
def serve(srv, ctx):
    """Two workers, IPv4 and IPv6, no event (--duration s): both serve, each at least
    10%. The nginx benchmark's throughput run (at --rate 0)."""
    return even_spread(srv, ctx, 2, BOTH, ctx.args.duration)


@scenario()
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


# A reload storm may leave this many processes per configured worker alive at once (old
# generations finishing): enough for a few generations overlapping, far below one per
# reload. More means old generations pile up.
STORM_PROCESSES_PER_WORKER = 6


@scenario()
def reload_storm(srv, ctx):
    """HUP every 100 ms for --duration seconds under load: nothing fails, old generations
    do not pile up (the master's children stay below a bound at every sample), and the
    master holds as many fds afterwards as before."""
    srv.configure(2, BOTH)
    first = srv.start()
    master = srv.master()
    fds_before = len(procfs.fds_of(master))
    load = ctx.load(BOTH)
    time.sleep(0.5)
    most, reloads = 0, 0
    end = time.monotonic() + ctx.args.duration
    while time.monotonic() < end:
        srv.signal(master, signal.SIGHUP)
        reloads += 1
        for _ in range(5):
            time.sleep(0.02)
            most = max(most, len(procfs.children_of(master)))
    srv.wait_settled(master, 2, old=first)
    time.sleep(0.3)
    ctx.result = load.stop()
    fds_after = len(procfs.fds_of(master))
    ctx.measured.update(reloads=reloads, most_children=most, master_fds=[fds_before, fds_after])
    print(f"reload_storm: {reloads} reloads in {ctx.args.duration:g} s; at most {most} children of the master "
          f"at once; master fds {fds_before} before, {fds_after} after")
    check(most <= 2 * STORM_PROCESSES_PER_WORKER,
          f"{most} children of the master at once: old generations pile up")
    check(fds_after == fds_before, f"the master had {fds_before} fds before the storm and {fds_after} after")
    return master


@scenario()
def workers_change(srv, ctx):
    """worker_processes 2 -> 4 -> 1 -> 3, each by the server's reload command (`-s reload`)."""
    srv.configure(2, srv.addresses)
    srv.start()
    master = srv.master()
    load = ctx.load()
    time.sleep(0.5)
    for n in (4, 1, 3):
        srv.configure(n, srv.listens)
        srv.reload(master, n, command=True)
        ctx.check_sockets(master)
        time.sleep(0.5)
    ctx.result = load.stop()
    return master


@scenario(servers=["rpserver"])
def addresses_change(srv, ctx):
    """A reload adds one address and removes another; the load stays on the kept one."""
    srv.configure(2, [f"127.0.0.1:{PORT}", f"127.0.0.1:{PORT + 1}"])
    srv.start()
    master = srv.master()
    check(connectable(PORT + 1), "the address to be removed serves before the reload")
    load = ctx.load([f"127.0.0.1:{PORT}"])
    time.sleep(0.5)
    srv.configure(2, [f"127.0.0.1:{PORT}", f"127.0.0.1:{PORT + 2}"])
    srv.reload(master)
    time.sleep(0.5)
    ctx.result = load.stop()
    check(connectable(PORT + 2), "the added address serves")
    check(not connectable(PORT + 1), "the removed address is closed")
    return master


def upgrade_started(srv, ctx):
    """USR2; (old, new) once the new master runs its workers, having released its
    sockets (with the library)."""
    old, new = srv.start_upgrade()
    ctx.note(f"after USR2: old {srv.describe_sockets(old)}")
    ctx.note(f"after USR2: new {srv.describe_sockets(new)}")
    if srv.strict:
        held = procfs.listen_sockets_of(new)
        check(held == [], f"the new master {new} holds listen sockets {held}")
    return old, new


def upgrade_done(srv, old, new):
    """WINCH and QUIT to the old master: the new one serves alone, named in the pid file."""
    srv.signal(old, signal.SIGWINCH)
    srv.wait_settled(old, 0)
    time.sleep(0.5)
    srv.signal(old, signal.SIGQUIT)
    srv.wait_exit(old)


def pid_file_names(srv, master):
    check(srv.master(oldbin=True) is None, "the .oldbin pid file is gone")
    check(srv.master() == master, f"the pid file names {srv.master()}, not master {master}")


@scenario()
def upgrade(srv, ctx):
    """Binary upgrade: USR2, WINCH to the old master, QUIT to the old master."""
    srv.configure(2, srv.addresses)
    srv.start()
    load = ctx.load()
    time.sleep(0.5)
    old, new = upgrade_started(srv, ctx)
    upgrade_done(srv, old, new)
    time.sleep(0.3)
    ctx.result = load.stop()
    pid_file_names(srv, new)
    return new


@scenario()
def revert_hup(srv, ctx):
    """Upgrade, WINCH the old master, then revert: HUP to the old master (it starts
    workers again), QUIT to the new one."""
    srv.configure(2, srv.addresses)
    srv.start()
    load = ctx.load()
    time.sleep(0.5)
    old, new = srv.start_upgrade()
    revert_by_hup(srv, old, new)
    time.sleep(0.3)
    ctx.result = load.stop()
    pid_file_names(srv, old)
    return old


def revert_by_hup(srv, old, new, before_hup=None):
    """Reverts an upgrade by HUP: WINCH to the old master (its workers leave), HUP to it
    (it starts workers again; before_hup() runs first, such as putting the old binary
    back), QUIT to the new one; returns once the old master owns the pid file again."""
    srv.signal(old, signal.SIGWINCH)
    srv.wait_settled(old, 0)
    time.sleep(0.3)
    if before_hup is not None:
        before_hup()
    srv.reload(old)
    srv.signal(new, signal.SIGQUIT)
    wait_reverted(srv, old, new)


def wait_reverted(srv, old, new):
    """After TERM or QUIT to the new master of an upgrade: returns once it has exited and
    the old master owns the pid file again."""
    srv.wait_exit(new)
    wait_for(lambda: srv.master() == old, 5, "the old master to take its pid file back")


@scenario()
def revert_term(srv, ctx):
    """Upgrade, then revert by TERM to the new master while the old workers still run.
    The new workers are fast-stopped: what they had accepted may fail (the adapter
    counts it)."""
    srv.configure(2, srv.addresses)
    srv.start()
    load = ctx.load()
    time.sleep(0.5)
    old, new = srv.start_upgrade()
    time.sleep(0.5)
    srv.fast_stop(new)
    wait_reverted(srv, old, new)
    time.sleep(0.3)
    ctx.result = load.stop()
    return old


def kill_and_respawn(srv, ctx, master, victim, workers):
    """SIGKILL `victim`, wait until the master has replaced it; returns (the workers now,
    the replacement)."""
    srv.kill_worker(victim)
    survivors = [w for w in workers if w != victim]
    now = srv.wait_settled(master, len(workers), old=[victim])
    replacement = sorted(set(now) - set(survivors))
    check(len(replacement) == 1 and set(survivors) <= set(now),
          f"one worker replaces {victim}: before {survivors}, now {now}")
    return now, replacement[0]


@scenario(servers=["rpserver"])
def kill9(srv, ctx):
    """SIGKILL the lowest-pid worker of 3, three times; the master respawns each."""
    srv.configure(3, srv.addresses)
    workers = srv.start()
    master = srv.master()
    load = ctx.load()
    time.sleep(0.5)
    for _ in range(3):
        workers, _ = kill_and_respawn(srv, ctx, master, min(workers), workers)
        time.sleep(0.3)
    ctx.result = load.stop()
    return master


def kill_slot_twice(srv, ctx, pick):
    """SIGKILL the worker `pick` chooses of 3, wait for the master to respawn it, then
    SIGKILL the replacement (the same worker slot) and wait again."""
    srv.configure(3, BOTH)
    workers = srv.start()
    master = srv.master()
    load = ctx.load(BOTH)
    time.sleep(0.5)
    victim = pick(workers)
    for _ in range(2):
        workers, victim = kill_and_respawn(srv, ctx, master, victim, workers)
        time.sleep(0.5)
    ctx.result = load.stop()
    return master


@scenario(servers=["nginx"])
def kill9_worker0(srv, ctx):
    """SIGKILL worker 0 (the lowest pid; with the library, the one that adopted the
    master's sockets), twice: the master respawns it."""
    return kill_slot_twice(srv, ctx, min)


@scenario(servers=["nginx"])
def kill9_other(srv, ctx):
    """SIGKILL another worker (the highest pid), twice: the master respawns it."""
    return kill_slot_twice(srv, ctx, max)


@scenario(servers=["rpserver"])
def quit(srv, ctx):
    """Graceful shutdown: every request in flight when QUIT arrives is answered.

    The load stops first (a server that is going away cannot serve clients that keep
    coming: the last listener to close resets whatever completes its handshake at that
    instant, with or without migration, as in nginx). Twenty requests are held half-sent
    across the QUIT and completed after it; every one must get its response."""
    srv.configure(2, srv.addresses)
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
    return None


@scenario(servers=["rpserver"])
def reload50_fds(srv, ctx):
    """Fifty reloads leak no fd in the master and leave each worker one socket per address."""
    srv.configure(2, BOTH)
    srv.start()
    master = srv.master()
    before = len(procfs.fds_of(master))
    load = ctx.load(BOTH, rate=1000)
    for _ in range(50):
        srv.reload(master)
    ctx.check_sockets(master)
    after = len(procfs.fds_of(master))
    check(after == before, f"the master had {before} fds before 50 reloads and {after} after")
    ctx.result = load.stop()
    return master
