"""Faults a production server meets, each with the behaviour decided for it
(docs/design.md, "Faults"):

- a reload that cannot open its sockets (the master out of fds, or a new address held
  by another user's group) fails with a message naming the cause, and the server keeps
  serving on its running generation, losing nothing; the next reload, the cause gone,
  succeeds;
- a master killed with SIGKILL: its workers, orphaned, keep serving until told to quit;
  a master started anew joins their groups, and the orphans, sent QUIT, hand their
  queues over to its workers: nothing is lost."""

import os
import resource
import signal
import socket
import time

from prefork import procfs
from prefork.wait import check, wait_for

from . import scenario
from .http import connectable
from .lifecycle import BOTH

PORT = 8080
NOBODY = 65534


def log_since(srv, mark):
    return "".join(srv.log_lines()[mark:])


def generations(srv, master):
    return srv.generation(master)


def still_serving(srv, ctx, master, gen, workers):
    """The running generation is the same and complete."""
    check(srv.generation(master) == gen, f"a new generation started ({srv.generation(master)}, was {gen})")
    now = srv.workers_of(master)
    check(sorted(now) == sorted(workers), f"the workers changed: {workers} -> {now}")


@scenario(servers=["rpserver"])
def reload_out_of_fds(srv, ctx):
    """The master's RLIMIT_NOFILE lowered to just above what it holds, then HUP: the new
    sockets cannot be opened; the reload fails naming EMFILE, the running generation
    serves on, and the master holds as many fds as before. The limit raised again, the
    next reload succeeds."""
    srv.configure(2, BOTH)
    workers = srv.start()
    master = srv.master()
    gen = srv.generation(master)
    load = ctx.load(BOTH)
    time.sleep(0.5)
    fds = [int(f) for f in procfs.fds_of(master)]
    limits = resource.prlimit(master, resource.RLIMIT_NOFILE)
    # Room for the config file (read, then closed) and one socket: the reload needs two.
    resource.prlimit(master, resource.RLIMIT_NOFILE, (max(fds) + 2, limits[1]))
    mark = len(srv.log_lines())
    srv.signal(master, signal.SIGHUP)
    wait_for(lambda: "reload failed" in log_since(srv, mark), 5, "the reload to fail")
    text = log_since(srv, mark)
    ctx.note("the failed reload logged: " + " | ".join(line.strip() for line in text.splitlines()[-3:]))
    check("Too many open files" in text or "EMFILE" in text, f"the log does not name the cause: {text}")
    time.sleep(0.5)
    still_serving(srv, ctx, master, gen, workers)
    check(sorted(int(f) for f in procfs.fds_of(master)) == sorted(fds),
          "the failed reload left fds open in the master")
    resource.prlimit(master, resource.RLIMIT_NOFILE, limits)
    srv.reload(master)
    time.sleep(0.3)
    ctx.result = load.stop()
    return master


def hold_port_as_nobody(port):
    """A child running as nobody holding a SO_REUSEPORT listener on 127.0.0.1:`port`: a
    group of another user. Returns its pid; kill it to free the port."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", port))
            s.listen(8)
            os.write(w, b"1")
            signal.pause()
        finally:
            os._exit(0)
    os.close(w)
    check(os.read(r, 1) == b"1", "the nobody holder did not bind")
    os.close(r)
    return pid


@scenario(servers=["rpserver"])
def reload_address_taken(srv, ctx):
    """A reload adds 127.0.0.1:8081 while another user's reuseport group holds it: the
    reload fails with EADDRINUSE and a message saying another user holds the port; the
    running generation serves on. The holder gone, the next reload opens it."""
    srv.configure(2, [f"127.0.0.1:{PORT}"])
    workers = srv.start()
    master = srv.master()
    gen = srv.generation(master)
    holder = hold_port_as_nobody(PORT + 1)
    try:
        load = ctx.load([f"127.0.0.1:{PORT}"])
        time.sleep(0.5)
        srv.configure(2, [f"127.0.0.1:{PORT}", f"127.0.0.1:{PORT + 1}"])
        mark = len(srv.log_lines())
        srv.signal(master, signal.SIGHUP)
        wait_for(lambda: "reload failed" in log_since(srv, mark), 5, "the reload to fail")
        text = log_since(srv, mark)
        ctx.note("the failed reload logged: " + " | ".join(line.strip() for line in text.splitlines()[-3:]))
        check("Address already in use" in text and f"uid {NOBODY}" in text,
              f"the log does not say another user holds the port: {text}")
        time.sleep(0.5)
        still_serving(srv, ctx, master, gen, workers)
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
    srv.reload(master)
    check(connectable(PORT + 1), "the freed address serves after the next reload")
    time.sleep(0.3)
    ctx.result = load.stop()
    srv.listens = [f"127.0.0.1:{PORT}", f"127.0.0.1:{PORT + 1}"]
    return master


@scenario(servers=["rpserver"])
def master_kill9(srv, ctx):
    """SIGKILL to the master under load: its workers, orphaned, serve on (1 s); a master
    started anew (its pid file stale) starts its workers in the same groups; QUIT to the
    orphans: they leave, handing their queues over. Nothing fails."""
    srv.configure(2, BOTH)
    orphans = srv.start()
    master = srv.master()
    load = ctx.load(BOTH)
    time.sleep(0.5)
    srv.signal(master, signal.SIGKILL)
    wait_for(lambda: not procfs.alive(master), 5, "the master to die")
    time.sleep(1)
    check(all(procfs.alive(w) for w in orphans), "the orphaned workers exited")
    check(connectable(PORT), "the orphans serve")
    srv.masters.discard(master)
    # The dead master's pid file names it still; the new master writes its own (removed
    # here only so that start() waits for the new one).
    os.unlink(srv.pid_path)
    srv.start()
    new = srv.master()
    check(new != master, "a new master runs")
    time.sleep(0.5)
    for w in orphans:
        srv.signal(w, signal.SIGQUIT)
    wait_for(lambda: not any(procfs.alive(w) for w in orphans), 15, "the orphans to leave")
    time.sleep(0.3)
    ctx.result = load.stop()
    return new
