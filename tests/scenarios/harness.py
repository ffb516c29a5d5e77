"""What the scenario tests and the demo share: an rpserver installation in a temporary
directory (config, pid file, event log), the load client in the background, and the
/proc readings that tell which sockets each process holds."""

import json
import os
import re
import signal
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
    inodes = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A":
                        inodes.add(fields[9])
        except FileNotFoundError:
            pass
    return inodes


def fds_of(pid):
    try:
        return os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return []


def listen_sockets_of(pid):
    listening = listening_inodes()
    held = []
    for fd in fds_of(pid):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m and m.group(1) in listening:
            held.append(m.group(1))
    return held


def uid_of(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[2])  # effective
    return -1


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before, or while, reading
        return False


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

    def start(self, prefix=()):
        self.proc = subprocess.Popen(list(prefix) + [self.binary, "-c", self.conf], stdin=subprocess.DEVNULL)
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

    def events(self):
        """The log's event lines as dicts, with the logging pid as 'by'."""
        out = []
        try:
            with open(self.log) as f:
                for line in f:
                    m = re.search(r"\] (\d+): event=(\S+)(.*)", line)
                    if m:
                        ev = dict(kv.split("=", 1) for kv in m.group(3).split() if "=" in kv)
                        ev["by"], ev["event"] = int(m.group(1)), m.group(2)
                        out.append(ev)
        except FileNotFoundError:
            pass
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


class Load:
    """loadclient in the background until stop() touches its until-file."""

    def __init__(self, binary, workdir, targets, concurrency=32, rate=4000):
        self.stopfile = os.path.join(workdir, "stop-load")
        self.proc = subprocess.Popen(
            [binary, "-j", "-q", "-c", str(concurrency), "-r", str(rate), "-d", "120", "-t", "3000",
             "--until-file", self.stopfile] + targets,
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)

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
        out, _ = self.proc.communicate(timeout=30)
        check(out.strip().startswith("{"), f"loadclient printed no JSON: {out!r}")
        return json.loads(out)
