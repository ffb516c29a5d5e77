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

from .. import Skip, verdict
from ..stall import stall
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


# ---- a worker stopped for minutes -----------------------------------------------------

LONG_STALL_S = float(os.environ.get("E2E_LONG_STALL_S", "25"))
NOT_ACCEPTING = "is not accepting"


@scenario(servers=["rpserver"])
def stall_long(srv, ctx):
    """Two steered workers on 127.0.0.1:8080 under the regular load (4,000 new connections
    a second, 3 s client timeout); the second is stopped (SIGSTOP) for 25 s
    (E2E_LONG_STALL_S: minutes, by hand), then continued. It is declared stalled, and not
    back before SIGCONT; nothing fails but what it had accepted (its queue is served by
    the other: a connection left waiting there would time out many times over); after
    SIGCONT a separate load reaches both evenly. The other worker may be declared stalled
    too for an instant, on a machine whose cores others share (it then did not run for the
    threshold, 50 ms, with connections waiting): counted and printed, not judged."""
    addr = f"127.0.0.1:{PORT}"
    srv.configure(2, [addr])
    workers = srv.start()
    victim = workers[-1]
    load = ctx.load([addr], duration=LONG_STALL_S + 60, timeline_ms=100)
    time.sleep(2)
    mark = len(srv.log_lines())
    stop_ns = time.monotonic_ns()
    try:
        procfs.stop_process(srv.signal, victim)
        accepted = procfs.accepted_connections(victim, srv.ports)
        time.sleep(max(0.0, stop_ns / NS + LONG_STALL_S - time.monotonic()))
        during = srv.log_lines()[mark:]  # read before SIGCONT: the victim cannot be back yet
    finally:
        cont_ns = time.monotonic_ns()
        srv.signal(victim, signal.SIGCONT)
    stalled = {"stop_ns": stop_ns, "cont_ns": cont_ns, "accepted_at_stop": accepted, "stalled_pid": victim}
    time.sleep(2)
    ctx.result = load.stop()
    ctx.figures = verdict.stall_figures(ctx.result, stalled)
    after = ctx.load([addr], duration=2).wait()
    shares = verdict.fair_shares(after, workers)
    ctx.figures.update(shares_after=shares, failed_after=failed_of(after))
    declared = [line.strip() for line in during if NOT_ACCEPTING in line]
    mine = [line for line in declared if f"worker {victim} " in line]
    back = [line.strip() for line in during if f"worker {victim} " in line and "accepting again" in line]
    others = [line for line in declared if f"worker {victim} " not in line]
    ctx.measured["other_worker_stalls"] = len(others)
    ctx.note(f"worker {victim} stopped {ctx.figures['stall_s']} s: {ctx.figures['stall_rate']} ok/s meanwhile "
             f"(steady {ctx.figures['steady_rate']}), it had accepted {accepted}; shares after SIGCONT {shares}")
    check(mine, f"the log does not say worker {victim} is not accepting: {declared}")
    ctx.note("declared stalled: " + mine[0])
    for line in others:
        ctx.note("another worker was declared stalled for a moment (not judged): " + line)
    check(not back, f"worker {victim} was taken back while stopped: {back}")
    ctx.checks += verdict.stall_checks(ctx.figures, rate=False, shares=shares)
    ctx.checks.append((failed_of(after) == 0, f"{failed_of(after)} connections failed after SIGCONT"))
    return srv.master()


# ---- clock jumps ----------------------------------------------------------------------

HOUR = 3600
# The clock scenarios' health threshold: a heartbeat judged on a jumped or offset clock
# would look hours or years old, whatever the threshold; 500 ms keeps a moment when a
# busy machine's cores run neither worker (tens of milliseconds) from counting as a stall.
CLOCK_THRESHOLD = "reuseport_health_threshold 500ms;\n"
NS = 1_000_000_000
LOG_TIME = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d)\.(\d{3}) \[\w+\] (\d+): ")


def logged_offsets(srv, mark=0):
    """[(pid, seconds the line's timestamp is ahead of the wall clock it was read at)] for
    the log's lines after `mark`, each rounded to the hour: what the shim's jumps did to
    each process's gettimeofday()."""
    out = []
    now = time.time()
    for line in srv.log_lines()[mark:]:
        m = LOG_TIME.match(line)
        if m:
            stamp = time.mktime(time.strptime(m.group(1), "%Y/%m/%d %H:%M:%S"))
            out.append((int(m.group(3)), round((stamp - now) / HOUR) * HOUR))
    return out


def no_stall_and_quick_retires(srv, ctx, master, rounds, what):
    """Reloads and an upgrade under load: each generation settles (its predecessors'
    retires done) within 3 s, and nobody is declared stalled."""
    times = []
    for _ in range(rounds):
        t = time.monotonic()
        srv.reload(master)
        times.append(time.monotonic() - t)
        time.sleep(0.3)
    t = time.monotonic()
    old, new = srv.start_upgrade()
    upgrade_done(srv, old, new)
    pid_file_names(srv, new)
    times.append(time.monotonic() - t - 0.5)  # upgrade_done sleeps 0.5 s between WINCH and QUIT
    ctx.measured.setdefault("settle_s", []).extend(round(x, 2) for x in times)
    ctx.note(f"{what}: reloads and the upgrade settled in {', '.join(f'{x:.2f}' for x in times)} s")
    check(max(times) < 3, f"{what}: a generation took {max(times):.2f} s to settle (a retire waited)")
    return new


@scenario(servers=["rpserver"])
def clock_jump(srv, ctx):
    """The wall clock (CLOCK_REALTIME, gettimeofday(), time()) of the master and its workers
    jumps an hour forward, then two hours back, then an hour forward to the truth
    (tests/c/faultshim.c, FAULTSHIM_CLOCK), with 3 reloads and an upgrade after each jump,
    steered (threshold 500 ms), under load. The library and rpserver time everything with
    CLOCK_MONOTONIC: nothing fails, nobody is declared stalled, every generation settles in
    under 3 s. The log's timestamps show the jumps, in the master and in the workers."""
    shim = shim_or_skip(ctx, root=False)
    srv.configure(2, BOTH, extra=CLOCK_THRESHOLD)
    t0 = time.monotonic_ns()
    steps = [(t0 + 2 * NS, HOUR), (t0 + 9 * NS, -HOUR), (t0 + 16 * NS, 0)]
    spec = ",".join(f"{at}:{off}" for at, off in steps)
    srv.start(prefix=["env", f"LD_PRELOAD={shim}", f"FAULTSHIM_CLOCK={spec}"])
    master = srv.master()
    load = ctx.load(BOTH, duration=60)
    seen = {}
    for at, off in steps:
        time.sleep(max(0.0, (at - time.monotonic_ns()) / NS) + 0.2)
        mark = len(srv.log_lines())
        master = no_stall_and_quick_retires(srv, ctx, master, 3, f"wall clock {off:+d} s")
        offsets = logged_offsets(srv, mark)
        workers = {pid for pid, _ in offsets} - srv.masters
        check(offsets and all(o == off for _, o in offsets),
              f"the log's timestamps after the jump to {off:+d} s are off by {sorted(set(o for _, o in offsets))}")
        seen[off] = (len(offsets), len(workers))
    ctx.note("log lines (and workers logging) at each offset: "
             + ", ".join(f"{off:+d} s: {n} ({w})" for off, (n, w) in seen.items()))
    check(all(w > 0 for _, w in seen.values()), f"no worker logged at some offset: {seen}")
    stalls = [line.strip() for line in srv.log_lines() if NOT_ACCEPTING in line]
    check(not stalls, f"a worker was declared stalled: {stalls}")
    ctx.result = load.stop()
    return master


TIMENS_OFFSET_S = 10 * 365 * 86400  # ten years


def in_time_namespace(pid):
    return os.readlink(f"/proc/{pid}/ns/time") != os.readlink("/proc/self/ns/time")


@scenario(servers=["rpserver"])
def clock_timens(srv, ctx):
    """rpserver in a time namespace whose CLOCK_MONOTONIC and CLOCK_BOOTTIME are ten years
    ahead, then (a second server after it) one whose CLOCK_MONOTONIC is a second past its
    start (unshare --time): the clocks the library stores in shared memory
    (milliseconds since boot) are then huge, or tiny. Each runs 3 reloads and an upgrade
    under load, steered (threshold 500 ms), and one worker stopped for 2 s: it, and only
    it, is declared stalled, nothing else fails, every generation settles in under 3 s."""
    if os.getuid() != 0:
        raise Skip("needs root: a time namespace (unshare --time)")
    addr = f"127.0.0.1:{PORT}"
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    results = []
    for name, offset in (("ten years ahead", TIMENS_OFFSET_S), ("a second after boot", -int(uptime) + 1)):
        srv.configure(2, [addr], extra=CLOCK_THRESHOLD)
        if os.path.exists(srv.pid_path):
            os.unlink(srv.pid_path)  # the first server's, stopped
        srv.start(prefix=["unshare", "--time", "--monotonic", str(offset), "--boottime", str(offset)])
        master = srv.master()
        check(in_time_namespace(master), f"master {master} is not in a time namespace of its own")
        with open(f"/proc/{master}/timens_offsets") as f:
            ctx.note(f"{name}: master {master}'s offsets: " + " | ".join(f.read().split("\n")[:2]))
        load = ctx.load([addr], duration=60)
        time.sleep(0.5)
        mark = len(srv.log_lines())
        master = no_stall_and_quick_retires(srv, ctx, master, 3, name)
        victim = srv.workers_of(master)[-1]
        stalled = stall(srv.signal, victim, srv.ports, seconds=2.0)
        time.sleep(1)
        lines = [line.strip() for line in srv.log_lines()[mark:] if NOT_ACCEPTING in line]
        check(lines and all(str(victim) in line for line in lines),
              f"{name}: expected worker {victim} alone declared stalled: {lines}")
        r = load.stop()
        failed = failed_of(r)
        ctx.note(f"{name}: {r['requests']} requests, {failed} failed, worker {victim} had accepted "
                 f"{stalled['accepted_at_stop']} when stopped")
        check(failed <= stalled["accepted_at_stop"], f"{name}: {failed} failed, the stopped worker had accepted "
              f"{stalled['accepted_at_stop']}")
        results.append(r)
        if offset != TIMENS_OFFSET_S:
            break
        srv.stop()
        srv.masters.clear()
        srv.proc = None
    ctx.measured["first_server_requests"] = results[0]["requests"]
    ctx.measured["first_server_failed"] = failed_of(results[0])
    ctx.result = results[-1]
    return master
