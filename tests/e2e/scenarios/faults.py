"""Faults a production server meets, each with the behaviour decided for it
(docs/design.md, "Faults"):

- a reload that cannot open its sockets (the master out of fds, or a new address held
  by another user's group) fails with a message naming the cause, and the server keeps
  serving on its running generation, losing nothing; the next reload, the cause gone,
  succeeds;
- a master killed with SIGKILL: its workers, orphaned, keep serving until told to quit;
  a master started anew joins their groups, and the orphans, sent QUIT, hand their
  queues over to its workers: nothing is lost;
- a master that can no longer create BPF objects (CAP_BPF dropped, a seccomp filter on
  bpf()): a reload of the same addresses needs none (the new set takes the running
  steering over); an address a reload adds gets the plain migration program the master
  loaded while it could, with a warning naming the cause and the fix; an upgrade's new
  binary likewise, for every address: nothing is lost;
- a worker stopped (SIGSTOP) for 25 s, or minutes: steered around, its queue served by
  the others, back in the choice after SIGCONT;
- the wall clock jumping by hours in the master and the workers, and CLOCK_MONOTONIC
  and CLOCK_BOOTTIME offset by years (a time namespace): no false stall, no retire
  waiting, nothing lost.

The faults are injected from inside the server by tests/c/faultshim.c (LD_PRELOAD,
--shim), or by a time namespace (unshare --time): nothing on the machine changes."""

import os
import re
import resource
import signal
import socket
import time

from prefork import procfs
from prefork.wait import check, wait_for

from .. import Skip
from ..verdict import failed_of
from . import scenario
from .http import connectable
from .lifecycle import BOTH, pid_file_names, upgrade_done

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


# ---- BPF objects that can no longer be created ---------------------------------------

NO_STEERING = "no health-aware steering"
CAP_BPF = 39


def shim_or_skip(ctx, root=True):
    check(ctx.args.shim, "needs --shim (build/tests/c/libfaultshim.so)")
    if root and os.getuid() != 0:
        raise Skip("needs root: the master must have CAP_BPF to lose it")
    return ctx.args.shim


def bpf_denied(pid, how):
    """Whether /proc shows that `pid` lost the means to create BPF objects."""
    with open(f"/proc/{pid}/status") as f:
        status = f.read()
    if how == "seccomp":
        return re.search(r"^Seccomp:\s+2$", status, re.M) is not None
    return not int(re.search(r"^CapEff:\s+(\w+)$", status, re.M).group(1), 16) & (1 << CAP_BPF)


def deny_bpf(srv, master, how):
    """SIGPWR to the master: the shim (FAULTSHIM_DENY_BPF) takes away its means to create
    BPF objects; waits until /proc shows it."""
    check(not bpf_denied(master, how), f"master {master} could not create BPF objects from the start")
    srv.signal(master, signal.SIGPWR)
    wait_for(lambda: bpf_denied(master, how), 5, f"master {master} to lose bpf() ({how})")


def warnings_in(text):
    return [line.strip() for line in text.splitlines() if NO_STEERING in line]


def bpf_lost(srv, ctx, how):
    """Two workers on 127.0.0.1:8080 and [::1]:8080 under load, steered; the master loses
    the means to create BPF objects (`how`); then a reload of the same addresses, a reload
    adding 127.0.0.1:8081 (its own load from then on) and a reload after it, and an upgrade
    (USR2, WINCH, QUIT). Nothing may fail on either load; every listener of every
    generation gets the bpf strategy (the runner's final check); the log warns, for the
    new address and for each address of the new binary, naming the step and the cause."""
    shim = shim_or_skip(ctx)
    new_addr = f"127.0.0.1:{PORT + 1}"
    srv.configure(2, BOTH)
    srv.start(prefix=["env", f"LD_PRELOAD={shim}", f"FAULTSHIM_DENY_BPF={how}"])
    master = srv.master()
    load = ctx.load(BOTH)
    time.sleep(0.5)
    if how == "caps":
        # RLIMIT_MEMLOCK is not the lever on Linux 5.11 and later (BPF memory is charged to
        # the memory cgroup): lowered to 0, a reload adding an address still steers it.
        limits = resource.prlimit(master, resource.RLIMIT_MEMLOCK)
        resource.prlimit(master, resource.RLIMIT_MEMLOCK, (0, limits[1]))
        extra = f"127.0.0.1:{PORT + 2}"
        srv.configure(2, BOTH + [extra])
        mark = len(srv.log_lines())
        srv.reload(master)
        text = log_since(srv, mark)
        check(not warnings_in(text), f"RLIMIT_MEMLOCK 0 stopped the steering of {extra}: {warnings_in(text)}")
        ctx.note(f"RLIMIT_MEMLOCK lowered to 0: {extra} added by a reload is steered all the same")
        ctx.measured["memlock_0_steered"] = True
    listens = list(srv.listens)
    deny_bpf(srv, master, how)
    ctx.note(f"master {master} can no longer create BPF objects ({how})")

    # The same addresses: the new set takes the running steering over, no new object.
    mark = len(srv.log_lines())
    srv.reload(master)
    text = log_since(srv, mark)
    check("reload failed" not in text and not warnings_in(text),
          f"a reload of the same addresses needed a new BPF object: {warnings_in(text) or text}")

    # A new address: the plain migration program the master loaded while it could.
    srv.configure(2, listens + [new_addr])
    mark = len(srv.log_lines())
    srv.reload(master)
    text = log_since(srv, mark)
    warned = warnings_in(text)
    ctx.note("the reload adding " + new_addr + " logged: " + " | ".join(warned))
    check(len(warned) == 1 and new_addr in warned[0], f"expected one warning, for {new_addr}: {warned}")
    want = "CAP_BPF" if how == "caps" else "seccomp"
    check("BPF_MAP_CREATE" in warned[0] and want in warned[0] and "plain migration program" in warned[0],
          f"the warning does not name the step, the cause ({want}) and what happens: {warned[0]}")
    extra_load = ctx.load([new_addr])
    time.sleep(0.5)
    srv.reload(master)  # the new address's first sockets close and migrate, unsteered
    time.sleep(0.3)

    # An upgrade: the new binary inherits the denial and is handed the migration program.
    mark = len(srv.log_lines())
    old, new = srv.start_upgrade()
    check(bpf_denied(new, how), f"the new master {new} can create BPF objects (the fault did not carry over)")
    text = log_since(srv, mark)
    warned = warnings_in(text)
    check(len(warned) == len(srv.listens), f"the new binary warned {len(warned)} times, expected one per address "
          f"({len(srv.listens)}): {warned}")
    ctx.note(f"the new binary {new} warned for each of its {len(warned)} addresses")
    upgrade_done(srv, old, new)
    pid_file_names(srv, new)
    time.sleep(0.3)
    extra = extra_load.stop()
    ctx.result = load.stop()
    ctx.measured["new_address_requests"] = extra["requests"]
    ctx.note(f"load on {new_addr}: {extra['requests']} requests, {failed_of(extra)} failed")
    check(extra["ok"] > 0 and failed_of(extra) == 0, f"the new address's load failed: {extra}")
    return new


@scenario(servers=["rpserver"])
def bpf_lost_caps(srv, ctx):
    """bpf_lost() with CAP_BPF and CAP_SYS_ADMIN dropped by the master (capset, and the
    bounding set: an exec'ed binary does not get them back); first RLIMIT_MEMLOCK lowered
    to 0, which changes nothing on this kernel."""
    return bpf_lost(srv, ctx, "caps")


@scenario(servers=["rpserver"])
def bpf_lost_seccomp(srv, ctx):
    """bpf_lost() with a seccomp filter making bpf(BPF_MAP_CREATE) and bpf(BPF_PROG_LOAD)
    fail with EPERM in the master (inherited by its workers and across exec)."""
    return bpf_lost(srv, ctx, "seccomp")
