"""What the scenario tests and the demo share: an rpserver installation in a temporary
directory (config, pid file, event log), the load client in the background, and the
/proc readings that tell which sockets each process holds. tests/nginx/nginx_harness.py
builds on it.

Also what the stall scenarios share (rpserver's and nginx's): SIGSTOP one worker under
load, count what it had accepted, SIGCONT it later, and turn the load client's timeline
into rates before and during the stall and into per-worker shares."""

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

PORT = 8080


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise Failure(f"timed out after {timeout}s waiting for {what}")


def listening_inodes():
    """Inodes of the listening TCP sockets in this network namespace."""
    if SS:
        return {ino for _, _, _, ino in ss_rows(["state", "listening"])}
    return {ino for state, _, _, ino in proc_net_tcp_rows() if state == "0A"}


def fds_of(pid):
    try:
        return os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return []


def socket_inodes_of(pid):
    """{inode: fd} for each socket the process holds ({} when it is gone)."""
    inodes = {}
    for fd in fds_of(pid):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            inodes[m.group(1)] = int(fd)
    return inodes


def listen_sockets_of(pid):
    listening = listening_inodes()
    return [ino for ino in socket_inodes_of(pid) if ino in listening]


# Under load the TCP tables hold thousands of TIME_WAIT sockets: /proc/net/tcp lists them
# all (up to 0.3 s a read at 4,000 connections per second); ss asks the kernel (sock_diag)
# with a filter. /proc is the fallback without ss.
SS = shutil.which("ss")


def ss_rows(args):
    """(state, local address, receive queue, inode) of each TCP socket `ss -tn` lists (the
    state is left empty: filter with ss's own state arguments)."""
    out = subprocess.run([SS, "-Htne"] + args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         check=True).stdout
    rows = []
    for line in out.splitlines():
        fields = line.split()
        if fields and not fields[0].isdigit():  # a State column (absent with one state filter)
            fields = fields[1:]
        m = re.search(r"\bino:(\d+)", line)
        rows.append(("", fields[2], int(fields[0]), m.group(1) if m else "0"))
    return rows


def proc_net_tcp_rows():
    """(state in hex, local address, receive queue, inode) of each line of /proc/net/tcp{,6}."""
    rows = []
    for path, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    addr, port = fields[1].rsplit(":", 1)
                    # the address is printed as 32-bit words in host (little-endian) order
                    raw = b"".join(bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, len(addr), 8))
                    host = socket.inet_ntop(family, raw)
                    local = (f"[{host}]" if family == socket.AF_INET6 else host) + f":{int(port, 16)}"
                    rows.append((fields[3], local, int(fields[4].split(":")[1], 16), fields[9]))
        except FileNotFoundError:
            pass
    return rows


def connection_inodes(ports, established_only=False):
    """Inodes of the TCP sockets, listeners aside, whose local port is one of `ports`
    (ESTABLISHED ones only with established_only): connections a server accepted. Those
    still in a listen queue have no inode yet, nor have TIME_WAIT sockets."""
    if SS:
        filt = " or ".join(f"sport = :{p}" for p in sorted(ports))
        states = ["state", "established"] if established_only else ["state", "connected", "exclude", "time-wait"]
        return {ino for _, _, _, ino in ss_rows(states + [f"( {filt} )"]) if ino != "0"}
    return {ino for state, local, _, ino in proc_net_tcp_rows()
            if (state == "01" if established_only else state != "0A")
            and int(local.rsplit(":", 1)[1]) in ports and ino != "0"}


def accepted_connections(pid, ports, established_only=False):
    """How many connections to one of `ports` (a port or several) the process holds open:
    what it accepted and has not closed yet (ESTABLISHED, or also those the client closed
    first, CLOSE_WAIT; only ESTABLISHED ones with established_only)."""
    ports = {ports} if isinstance(ports, int) else set(ports)
    return len(set(socket_inodes_of(pid)) & connection_inodes(ports, established_only))


def uid_of(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[2])  # effective
    return -1


def state_of(pid):
    """The process's state letter (R, S, T stopped, t traced, Z...), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # gone before, or while, reading
        return None


def alive(pid):
    """Running (not a zombie)."""
    return state_of(pid) not in (None, "Z", "X")


def stop_process(send, pid):
    """SIGSTOP (through `send(pid, sig)`, a server's signal method) and wait until the
    process is stopped (or gone): from then on it accepts and closes nothing."""
    send(pid, signal.SIGSTOP)
    wait_for(lambda: state_of(pid) in ("T", "t", None), 5, f"process {pid} to stop")


class Server:
    """One rpserver installation in a temporary directory: config, pid file, log."""

    def __init__(self, binary, workdir):
        self.binary = binary
        self.dir = workdir
        self.conf = os.path.join(workdir, "rpserver.conf")
        self.pid_path = os.path.join(workdir, "rpserver.pid")
        self.log = os.path.join(workdir, "error.log")
        self.listens = []
        self.proc = None

    strategy = "auto"
    unprivileged_master = False

    def configure(self, workers, listens, extra=""):
        self.listens = listens
        # As root, workers drop to nobody: their sockets must be made before that.
        user = "user nobody;\n" if os.getuid() == 0 and not self.unprivileged_master else ""
        with open(self.conf + ".tmp", "w") as f:
            f.write(f"worker_processes {workers};\n{user}pid {self.pid_path};\nerror_log {self.log};\n")
            # "drain-keep-backlog": drain without shrinking the backlog, to measure what
            # the shrink (SYN cookies for new handshakes) is worth.
            strategy = "drain" if self.strategy == "drain-keep-backlog" else self.strategy
            f.write(f"keepalive_timeout 2s;\nworker_shutdown_timeout 5s;\nreuseport_strategy {strategy};\n")
            if self.strategy == "drain-keep-backlog":
                f.write("reuseport_drain 20ms 1s keep_backlog;\n")
            f.write(extra)
            for spec in listens:
                f.write(f"listen {spec};\n")
        os.replace(self.conf + ".tmp", self.conf)
        self.workers = workers

    def start(self, prefix=(), cpus=None):
        self.proc = subprocess.Popen(list(prefix) + [self.binary, "-c", self.conf], stdin=subprocess.DEVNULL,
                                     preexec_fn=pinned(cpus))
        wait_for(lambda: os.path.exists(self.pid_path), 10, "the pid file")
        self.wait_settled(self.master())

    def master(self, oldbin=False):
        """The pid in the pid file, or None while it does not exist (an upgrade's master
        renames it) or is being written."""
        path = self.pid_path + (".oldbin" if oldbin else "")
        try:
            with open(path) as f:
                return int(f.read())
        except (FileNotFoundError, ValueError):
            return None

    def log_lines(self):
        """The server log's lines so far (none before it exists)."""
        try:
            with open(self.log) as f:
                return f.readlines()
        except FileNotFoundError:
            return []

    def events(self):
        """The log's event lines as dicts, with the logging pid as 'by'."""
        out = []
        for line in self.log_lines():
            m = re.search(r"\] (\d+): event=(\S+)(.*)", line)
            if m:
                ev = dict(kv.split("=", 1) for kv in m.group(3).split() if "=" in kv)
                ev["by"], ev["event"] = int(m.group(1)), m.group(2)
                out.append(ev)
        return out

    def close_instants(self):
        """When each retiring worker closed its listen sockets (the library logs it at
        once), as time.monotonic_ns() values; the log's wall-clock milliseconds are
        truncated, so each instant may be up to 1 ms early."""
        offset = time.time_ns() - time.monotonic_ns()
        out = []
        for line in self.log_lines():
            m = re.match(r"(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d)\.(\d{3}) .*reuseport: retired: closed", line)
            if m:
                wall = time.mktime(time.strptime(m.group(1), "%Y/%m/%d %H:%M:%S"))
                out.append(int(wall) * 1_000_000_000 + int(m.group(2)) * 1_000_000 - offset)
        return out

    def workers_of(self, master):
        """Live workers of a master, from its spawn and exit events: {pid: generation}."""
        live = {}
        for ev in self.events():
            if ev["by"] != master:
                continue
            if ev["event"] == "spawn":
                live[int(ev["pid"])] = int(ev["gen"])
            elif ev["event"] == "worker_exit":
                live.pop(int(ev["pid"]), None)
        return live

    def generation(self, master):
        gens = [int(ev["gen"]) for ev in self.events() if ev["by"] == master and ev["event"] == "spawn"]
        return max(gens, default=0)

    def reload(self, master, workers=None, command=False):
        """HUP (or `rpserver -s reload`), then wait for the new generation to be the only one."""
        before = self.generation(master)
        if command:
            subprocess.run([self.binary, "-c", self.conf, "-s", "reload"], check=True)
        else:
            self.signal(master, signal.SIGHUP)
        wait_for(lambda: self.generation(master) > before, 10, f"master {master} to start a new generation")
        return self.wait_settled(master, workers)

    def started(self):
        return {ev["by"] for ev in self.events() if ev["event"] == "worker_start"}

    def wait_settled(self, master, workers=None):
        """Until the master runs exactly `workers` workers, all of its newest generation,
        each past its library call (worker_start logged)."""
        workers = self.workers if workers is None else workers

        def settled():
            live = self.workers_of(master)
            if len(live) != workers:
                return False
            if workers and len(set(live.values())) != 1:
                return False
            return set(live) <= self.started()

        wait_for(settled, 15, f"master {master} to settle with {workers} workers")
        return self.workers_of(master)

    def lost_in_flight(self):
        """What dead workers had accepted and not answered: the server-side count of
        connections a kill or fast stop may cost."""
        return sum(int(ev.get("in_flight", 0)) for ev in self.events() if ev["event"] == "worker_exit")

    def check_sockets(self, master):
        """The design's invariant: the master holds no listen socket, each worker one per
        address, no two workers the same one, and every address is being served."""
        check(listen_sockets_of(master) == [], f"master {master} holds listen sockets {listen_sockets_of(master)}")
        seen = {}
        for pid in self.workers_of(master):
            if os.getuid() == 0:  # workers of a root master drop to nobody; others are nobody already
                check(uid_of(pid) == 65534, f"worker {pid} runs as uid {uid_of(pid)}, not nobody")
            held = listen_sockets_of(pid)
            check(len(held) == len(self.listens), f"worker {pid} holds {len(held)} listen sockets, expected {len(self.listens)}")
            for ino in held:
                check(ino not in seen, f"workers {seen.get(ino)} and {pid} share socket {ino}")
                seen[ino] = pid

    def signal(self, pid, sig):
        os.kill(pid, sig)

    def wait_exit(self, pid, timeout=15):
        wait_for(lambda: not alive(pid), timeout, f"process {pid} to exit")

    def stop(self):
        master = self.master()
        if master:
            try:
                os.kill(master, signal.SIGTERM)
            except OSError:
                pass
        if self.proc:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        # Anything still running (a lost worker, a new master of an upgrade) goes too.
        subprocess.run(["pkill", "-KILL", "-f", self.conf], check=False)


def failed_of(result):
    """Every connection of a load client's result that did not get its response."""
    return result["refused"] + result["reset"] + result["timeout"] + result["other"]


# How far a close may be logged after the reset it caused: the worker may be preempted
# between close() and the log line.
CLOSE_LOG_SLACK_NS = 5_000_000


def close_race_resets(result, closes):
    """The resets of a load client's result that a listener's close can explain: the
    connection was in flight (started, not yet failed) at the instant a listener closed.
    With net.ipv4.tcp_migrate_req alone the kernel cannot take a listener out of the
    choice before it closes, so a handshake completing on it in the microseconds of its
    close is reset (inet_csk_reqsk_queue_add() finds it no longer listening); the
    library's program removes the window by steering away first."""
    t0 = result["t0_ns"]
    return sum(1 for f in result.get("failures", []) if f["kind"] == "reset" and any(
        t0 + f["start_ns"] - 1_000_000 <= c <= t0 + f["end_ns"] + CLOSE_LOG_SLACK_NS for c in closes))


def cpu_split():
    """({client CPU}, {server CPUs}) from the CPUs this process may use, when there are at
    least two; else (None, None). A throughput measured with client and server on the same
    CPUs swings by a fifth from one half second to the next as the scheduler moves them
    around; apart, it is steady enough to compare two windows of one run."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def pinned(cpus):
    """A Popen preexec_fn that binds the child (and what it forks) to `cpus`, or None."""
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


class Load:
    """loadclient in the background until stop() touches its until-file, or until its
    duration is over (wait()). timeline_ms: its --timeline (0: none)."""

    quiet = True  # -q: the client prints no failure details
    _serial = itertools.count()

    def __init__(self, binary, workdir, targets, concurrency=32, rate=4000, timeout_ms=3000, duration=120,
                 timeline_ms=0, cpus=None):
        # One until-file per load: a scenario may run several, one after the other.
        self.stopfile = os.path.join(workdir, f"stop-load-{next(Load._serial)}")
        self.duration, self.timeout_ms = duration, timeout_ms
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, "-j"] + (["-q"] if self.quiet else [])
            + ["-c", str(concurrency), "-r", str(rate), "-d", str(duration), "-t", str(timeout_ms),
               "--until-file", self.stopfile]
            + (["--timeline", str(timeline_ms)] if timeline_ms else []) + targets,
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, preexec_fn=pinned(cpus))

    def abort(self):
        """Ends a load that a failed scenario left running: asked first, killed after 10 s."""
        if self.proc.poll() is None:
            open(self.stopfile, "w").close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def stop(self):
        open(self.stopfile, "w").close()
        return self._result(30)

    def wait(self):
        """The result once the client has stopped by itself: its duration, then at most a
        timeout for the last requests."""
        return self._result(self.duration + self.timeout_ms / 1000 + 30)

    def _result(self, timeout):
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise Failure(f"loadclient still ran {timeout:.0f} s after it should have stopped")
        check(out.strip().startswith("{"), f"loadclient printed no JSON: {out!r}")
        return json.loads(out)


# --- stall: one worker stopped (SIGSTOP) under load -----------------------------------------
# The stall scenarios of tests/scenarios/run.py and tests/nginx/run.py, and tests/stall/bench.py.
# A load at saturation with a timeline runs STALL_STEADY_S, one worker is stopped for
# STALL_S, the load goes on STALL_AFTER_S after SIGCONT; then a separate load of
# STALL_AFTER_S tells whether the workers share the load evenly again.

STALL_S = 4.0
STALL_STEADY_S = 2.0
STALL_AFTER_S = 1.5
STALL_SKIP_S = 0.5  # the start of the load, left out of the steady rate
CLIENT_CPUS, SERVER_CPUS = cpu_split()
STALL_LOAD = dict(concurrency=64, rate=0, timeout_ms=2000, timeline_ms=100, cpus=CLIENT_CPUS)
STALL_MIN_RATIO = 0.9  # ok rate during the stall / steady rate, at least
STALL_RATE_ATTEMPTS = 3  # measurements of that ratio, at most, before it counts as missed
STALL_MIN_SHARE = 0.6  # of the fair share, for every worker after SIGCONT


def stall(send, victim, ports, during=None, seconds=STALL_S):
    """Stops `victim` (send: a server's signal method), counts the connections it had
    accepted once it is stopped, runs `during()` (a reload, an upgrade) while it stays
    stopped, and continues it `seconds` after the SIGSTOP (or once `during` is done, if
    later). Returns {"stop_ns", "cont_ns", "accepted_at_stop", "stalled_pid"}, times from
    time.monotonic_ns(), the load client's clock."""
    stop_ns = time.monotonic_ns()
    try:
        stop_process(send, victim)
        accepted = accepted_connections(victim, ports)
        if during:
            during()
        time.sleep(max(0.0, stop_ns / 1e9 + seconds - time.monotonic()))
    finally:  # whatever failed, the worker does not stay stopped
        cont_ns = time.monotonic_ns()
        send(victim, signal.SIGCONT)
    return {"stop_ns": stop_ns, "cont_ns": cont_ns, "accepted_at_stop": accepted, "stalled_pid": victim}


def stall_under_load(start_load, send, victim, ports, during=None, after=None, workers=None):
    """The stall scenarios' sequence: a load (start_load(**kw): a runner's Load, with the
    targets bound) for STALL_STEADY_S, `victim` stopped for STALL_S (stall(): during()
    runs meanwhile), after() once it is continued, STALL_AFTER_S more, the load stopped.
    With workers (a function: the pids that should share the load then), a separate load
    of STALL_AFTER_S after that, and the rate during the stall checked too. Returns (the
    load's result, stall_figures() with the shares after SIGCONT, stall_checks())."""
    def measure(during=None, after=None):
        load = start_load(duration=60, **STALL_LOAD)  # stopped by its until-file; 60 s at the most
        time.sleep(STALL_STEADY_S)
        stalled = stall(send, victim, ports, during=during)
        if after:
            after()
        time.sleep(STALL_AFTER_S)
        result = load.stop()
        return result, stall_figures(result, stalled)

    result, figures = measure(during, after)
    if not workers:
        return result, figures, stall_checks(figures, rate=False)
    after_load = start_load(duration=STALL_AFTER_S, **STALL_LOAD).wait()
    shares = fair_shares(after_load, list(workers()))
    figures.update(shares_after=shares, failed_after=failed_of(after_load))
    checks = stall_checks(figures, rate=False, shares=shares)
    # Throughput is timed, on a machine that others share: when only the rate misses, the
    # same worker is stopped again (the server is the same, recovered) and measured anew,
    # up to STALL_RATE_ATTEMPTS in all. Every attempt's failures are checked (the counts
    # returned are the first attempt's); the rate counts when one attempt reaches it.
    # Every ratio is recorded.
    ratios = [figures["stall_ratio"]]
    while ratios[-1] < STALL_MIN_RATIO and len(ratios) < STALL_RATE_ATTEMPTS:
        _, again = measure()
        checks += stall_checks(again, rate=False)
        ratios.append(again["stall_ratio"])
    best = max(ratios)
    figures.update(stall_ratios=ratios)
    checks.append((best >= STALL_MIN_RATIO,
                   f"the ok rate while worker {figures['stalled_pid']} was stopped stayed under "
                   f"{STALL_MIN_RATIO:.0%} of the steady rate in {len(ratios)} attempts (ratios {ratios})"))
    return result, figures, checks


def timeline_rate(result, start_ns, end_ns):
    """ok completions per second in [start_ns, end_ns) (time.monotonic_ns() values), from a
    load client result with a timeline; a bucket that straddles an end counts for the part
    inside."""
    width = result["timeline_ms"] * 1_000_000
    lo, hi = start_ns - result["t0_ns"], end_ns - result["t0_ns"]
    check(hi > lo, f"an empty window: [{start_ns}, {end_ns})")
    ok = 0.0
    for i, n in enumerate(result["timeline"]):
        overlap = min(hi, (i + 1) * width) - max(lo, i * width)
        if overlap > 0:
            ok += n * overlap / width
    return ok / ((hi - lo) / 1e9)


def stall_figures(result, stalled):
    """The throughput around a stall: {"steady_rate": ok/s from STALL_SKIP_S after the
    load's start to the SIGSTOP and in the STALL_AFTER_S after the SIGCONT, "stall_rate": ok/s from the SIGSTOP to the SIGCONT,
    "stall_ratio": the second / the first}, plus what stall() returned but the times, and
    the load's failures: timeouts, and all the other kinds together."""
    # Steady: before the stop and after the SIGCONT (once the worker is back, and short of
    # the load's end), side by side with the stall, so that drift of a shared machine over
    # the run weighs on both.
    before = (result["t0_ns"] + int(STALL_SKIP_S * 1e9), stalled["stop_ns"])
    after = (stalled["cont_ns"] + int(0.3e9), stalled["cont_ns"] + int((STALL_AFTER_S - 0.1) * 1e9))
    spans = [w for w in (before, after) if w[1] > w[0]]
    steady = sum(timeline_rate(result, *w) * (w[1] - w[0]) for w in spans) / sum(w[1] - w[0] for w in spans)
    during = timeline_rate(result, stalled["stop_ns"], stalled["cont_ns"])
    return {"steady_rate": round(steady, 1), "stall_rate": round(during, 1),
            "stall_ratio": round(during / steady, 3) if steady else 0.0,
            "accepted_at_stop": stalled["accepted_at_stop"], "stalled_pid": stalled["stalled_pid"],
            "stall_s": round((stalled["cont_ns"] - stalled["stop_ns"]) / 1e9, 3),
            "timeouts": result["timeout"], "other_failures": failed_of(result) - result["timeout"]}


def fair_shares(result, pids):
    """{pid: what it served / (all ok responses / number of pids)}: 1.0 is a fair share;
    0 for a pid that served nothing."""
    served = {int(pid): n for pid, n in result["workers"].items()}
    fair = sum(served.get(p, 0) for p in pids) / len(pids) if pids else 0
    return {p: round(served.get(p, 0) / fair, 3) if fair else 0.0 for p in pids}


def stall_checks(figures, rate=True, shares=None):
    """What a server that steers around a stopped worker must achieve: [(ok, what)]. Every
    failure is a connection the worker had accepted before it stopped (nothing that
    waited in its queue, or came later, is lost); with rate, the others keep the
    throughput up; with `shares` (fair_shares of a load after SIGCONT), every worker gets
    its share again."""
    f = figures
    failed = f["timeouts"] + f["other_failures"]
    out = [(failed <= f["accepted_at_stop"],
            f"{failed} connections failed ({f['timeouts']} timeouts, {f['other_failures']} other), but the "
            f"stopped worker {f['stalled_pid']} had accepted only {f['accepted_at_stop']}")]
    if rate:
        out.append((f["stall_rate"] >= STALL_MIN_RATIO * f["steady_rate"],
                    f"{f['stall_rate']} ok/s while worker {f['stalled_pid']} was stopped, less than "
                    f"{STALL_MIN_RATIO:.0%} of the steady {f['steady_rate']} ok/s (ratio {f['stall_ratio']})"))
    if shares is not None:
        low = {p: s for p, s in shares.items() if s < STALL_MIN_SHARE}
        out.append((not low, f"after SIGCONT, workers served less than {STALL_MIN_SHARE:.0%} of a fair share: "
                             f"{low} (all: {shares})"))
    return out


def describe_stall(figures):
    f = figures
    return (f"steady {f['steady_rate']} ok/s, {f['stall_rate']} ok/s during the {f['stall_s']} s stall "
            f"(ratio {f['stall_ratio']}), worker {f['stalled_pid']} had accepted {f['accepted_at_stop']} at the stop; "
            f"timeouts {f['timeouts']}, other failures {f['other_failures']}"
            + (f"; shares after SIGCONT {f['shares_after']}" if f.get("shares_after") else "")
            + (f"; ratios of {len(f['stall_ratios'])} attempts {f['stall_ratios']}"
               if len(f.get("stall_ratios", ())) > 1 else ""))
