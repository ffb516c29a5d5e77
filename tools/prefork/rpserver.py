"""One rpserver installation (c-examples/server) in a directory: its config, pid file and
event log, started, signalled and followed through its log. rpserver logs an `event=` line
for each spawn, worker start and worker exit; the library logs each listener it closes."""

import os
import re
import signal
import subprocess
import time

from .load import pinned
from .procfs import alive
from .reaping import stop_all
from .wait import wait_for


class RpServer:
    """rpserver with `rpserver.conf`, `rpserver.pid` and `error.log` in `workdir`."""

    def __init__(self, binary, workdir):
        self.binary = binary
        self.dir = workdir
        self.conf = os.path.join(workdir, "rpserver.conf")
        self.pid_path = os.path.join(workdir, "rpserver.pid")
        self.log = os.path.join(workdir, "error.log")
        self.listens = []
        self.workers = 0
        self.proc = None
        self.masters = set()  # every master seen, for stop()
        self.default_cpus = None  # the CPUs start() binds the server to when given none

    strategy = "auto"
    user = None  # `user` directive: the workers of a root master drop to it
    log_level = "info"  # error_log's level for the library's messages ("debug": close_windows())

    def configure(self, workers, listens, extra=""):
        self.listens = list(listens)
        with open(self.conf + ".tmp", "w") as f:
            user = f"user {self.user};\n" if self.user else ""
            f.write(f"worker_processes {workers};\n{user}pid {self.pid_path};\nerror_log {self.log} {self.log_level};\n")
            # "drain-keep-backlog": drain without shrinking the backlog, to measure what
            # the shrink (SYN cookies for new handshakes) is worth.
            strategy = "drain" if self.strategy == "drain-keep-backlog" else self.strategy
            f.write(f"keepalive_timeout 2s;\nworker_shutdown_timeout 5s;\nreuseport_strategy {strategy};\n")
            if self.strategy == "drain-keep-backlog":
                f.write("reuseport_drain 20ms 1s keep_backlog;\n")
            f.write(extra)
            for spec in self.listens:
                f.write(f"listen {spec};\n")
        os.replace(self.conf + ".tmp", self.conf)
        self.workers = workers

    def start(self, prefix=(), cpus=None):
        """Runs the master (after `prefix`, a launcher's command line) and waits until its
        workers run; returns them ({pid: generation}). cpus: bind every process to these
        (default: default_cpus, None unless a caller set it)."""
        cpus = self.default_cpus if cpus is None else cpus
        self.proc = subprocess.Popen(list(prefix) + [self.binary, "-c", self.conf], stdin=subprocess.DEVNULL,
                                     preexec_fn=pinned(cpus))
        wait_for(lambda: os.path.exists(self.pid_path), 10, "the pid file")
        master = wait_for(self.master, 5, "a pid in the pid file")
        self.masters.add(master)
        return self.wait_settled(master)

    def master(self, oldbin=False):
        """The pid in the pid file, or None while it does not exist (an upgrade's master
        renames it) or is being written."""
        path = self.pid_path + (".oldbin" if oldbin else "")
        try:
            with open(path) as f:
                return int(f.read())
        except (FileNotFoundError, ValueError):
            return None

    # -- the log --

    def log_lines(self):
        """The server log's lines so far (none before it exists)."""
        try:
            with open(self.log, errors="replace") as f:
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

    def close_windows(self):
        """When each retiring worker closed its listen sockets: (start, end) instants,
        time.monotonic_ns(), from the library's line just before the close (debug level:
        needs log_level "debug") to the one just after it, of the same process. The log's
        wall-clock milliseconds are truncated, so the end gets 1 ms, and 1 ms more for a
        reset the close caused on another CPU to be sent. A close with no line after it
        (the worker died in between) has no window."""
        offset = time.time_ns() - time.monotonic_ns()
        opened, out = {}, []
        for line in self.log_lines():
            m = re.match(r"(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d)\.(\d{3}) \[\w+\] (\d+): reuseport: "
                         r"(retire: closing|retired: closed|retired: drained)", line)
            if not m:
                continue
            wall = time.mktime(time.strptime(m.group(1), "%Y/%m/%d %H:%M:%S"))
            at = int(wall) * 1_000_000_000 + int(m.group(2)) * 1_000_000 - offset
            pid = int(m.group(3))
            if m.group(4) == "retire: closing":
                opened[pid] = at
            elif pid in opened:
                out.append((opened.pop(pid), at + 2_000_000))
        return out

    def worker_exits(self):
        """{pid: connections it had accepted and not answered when it died}, from the
        master's worker_exit events: what a kill or fast stop costs."""
        return {int(ev["pid"]): int(ev.get("in_flight", 0)) for ev in self.events() if ev["event"] == "worker_exit"}

    # -- workers --

    def workers_of(self, master):
        """Live workers of a master, in spawn order."""
        return list(self.generations_of(master))

    def generations_of(self, master):
        """Live workers of a master, from its spawn and exit events, in spawn order:
        {pid: generation}."""
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

    def started(self):
        return {ev["by"] for ev in self.events() if ev["event"] == "worker_start"}

    def wait_settled(self, master, workers=None, old=()):
        """Until the master runs exactly `workers` workers, all of its newest generation,
        each past its library call (worker_start logged), none of `old` (workers before a
        signal) among them or alive; returns them."""
        workers = self.workers if workers is None else workers

        def settled():
            live = self.generations_of(master)
            if len(live) != workers or set(old) & set(live) or any(alive(p) for p in old):
                return False
            if workers and len(set(live.values())) != 1:
                return False
            return set(live) <= self.started()

        wait_for(settled, 15, f"master {master} to settle with {workers} workers")
        return list(self.generations_of(master))

    # -- signals --

    def signal(self, pid, sig):
        os.kill(pid, sig)

    def reload(self, master, workers=None, command=False):
        """HUP (or `rpserver -s reload`), then wait for the new generation to be the only one."""
        before = self.generation(master)
        if command:
            subprocess.run([self.binary, "-c", self.conf, "-s", "reload"], check=True)
        else:
            self.signal(master, signal.SIGHUP)
        wait_for(lambda: self.generation(master) > before, 10, f"master {master} to start a new generation")
        return self.wait_settled(master, workers)

    def start_upgrade(self):
        """USR2 to the master; returns (old, new) once the new master runs its workers."""
        old = self.master()
        self.signal(old, signal.SIGUSR2)
        # master() is None while the new master is writing the file.
        wait_for(lambda: os.path.exists(self.pid_path + ".oldbin") and self.master() not in (None, old), 10,
                 "the new master's pid file")
        new = self.master()
        self.masters.add(new)
        self.wait_settled(new)
        return old, new

    def wait_exit(self, pid, timeout=15):
        wait_for(lambda: not alive(pid), timeout, f"process {pid} to exit")

    def stop(self):
        """TERM to every master seen; SIGKILL, by pid, to what of it still runs (a worker
        left behind, an upgrade's new master): this process is a child subreaper
        (reaping.become_subreaper) so that all of them are its descendants."""
        stop_all(self.masters | {m for m in (self.master(), self.master(oldbin=True)) if m}, self.binary,
                 os.path.basename(self.binary))
        if self.proc:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
