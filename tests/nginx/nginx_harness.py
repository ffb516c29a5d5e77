"""An nginx installation (target/nginx-stock or target/nginx-patched) run from a temporary
prefix, and the /proc readings the nginx scenarios need beyond tests/scenarios/harness.py:
nginx has no event log, so workers are found as the master's children (by their process
title), and what a dying worker had in flight is counted from its sockets.

nginx runs daemonized (`daemon on`, its default), as in production: with `daemon off` a
master ignores SIGUSR2 (its parent has not changed: src/os/unix/ngx_process.c, "ignoring")
and SIGWINCH (only a daemonized master stops its workers), so no upgrade could be tested.
The runner makes itself a child subreaper, so the daemonized master (and after an upgrade
the new one) stays its descendant: nothing escapes the test, and it reaps them."""

import ctypes
import grp
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "scenarios"))

from harness import (SS, Failure, accepted_connections, alive, check, pinned, proc_net_tcp_rows,  # noqa: E402
                     socket_inodes_of, ss_rows, stop_process, wait_for)
from harness import Load as _Load  # noqa: E402
from harness import uid_of as _uid_of  # noqa: E402


class Load(_Load):
    """harness.Load, but the load client prints the details of its first failures (kind,
    target, phase, time since its start, errno) on stderr, in the test's output."""

    quiet = False


PR_SET_CHILD_SUBREAPER = 36
WORKER_TITLE = "nginx: worker process"


def become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


# --- /proc ---------------------------------------------------------------------------------
# Processes come and go while they are read: any read may fail with ENOENT or ESRCH.

def uid_of(pid):
    try:
        return _uid_of(pid)
    except OSError:
        return -1


def title(pid):
    """The process title (nginx rewrites argv: "nginx: worker process"), "" when gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def children_of(pid):
    """Live (not zombie) children of a process."""
    kids = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.update(int(k) for k in f.read().split())
        except FileNotFoundError:
            # No CONFIG_PROC_CHILDREN: scan every process's parent.
            return sorted(p for p in _all_pids() if _ppid(p) == pid and alive(p))
    return sorted(k for k in kids if alive(k))


def _all_pids():
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def descendants_of(pid):
    out, todo = [], [pid]
    while todo:
        for kid in children_of(todo.pop()):
            out.append(kid)
            todo.append(kid)
    return out


def held_connections(pid, ports):
    """The ESTABLISHED connections to `ports` the process holds: what it loses at death."""
    return accepted_connections(pid, ports, established_only=True)


def polled_listen_sockets(pid):
    """Inodes of the listen sockets the process has registered in its epoll instance(s)
    (/proc/PID/fdinfo of an eventpoll fd lists each target fd as "tfd: N")."""
    listening = listening_inodes()
    by_fd = {fd: ino for ino, fd in socket_inodes_of(pid).items()}
    polled = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return polled
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    m = re.match(r"tfd:\s*(\d+)", line)
                    if m and by_fd.get(int(m.group(1))) in listening:
                        polled.add(by_fd[int(m.group(1))])
        except OSError:
            continue
    return polled


def listeners():
    """{inode: (local address, accept queue length)} for every listening TCP socket of this
    network namespace; addresses spelled as listen specs: "127.0.0.1:8080", "[::1]:8080"
    (for a listener, the receive queue is its accept queue's length)."""
    if SS:
        return {ino: (local, queue) for _, local, queue, ino in ss_rows(["state", "listening"])}
    return {ino: (local, queue) for state, local, queue, ino in proc_net_tcp_rows() if state == "0A"}


def listening_inodes():
    return set(listeners())


def listening_addresses():
    """{inode: "127.0.0.1:8080" or "[::1]:8080"} for every listening TCP socket."""
    return {ino: local for ino, (local, _) in listeners().items()}


def listen_sockets_of(pid, listening=None):
    """The listen sockets (inodes) a process holds; `listening`: a listeners() snapshot."""
    listening = listeners() if listening is None else listening
    return [ino for ino in socket_inodes_of(pid) if ino in listening]


def ncpu():
    """What `worker_processes auto` gives in nginx 1.22.1: sysconf(_SC_NPROCESSORS_ONLN)."""
    return max(1, os.sysconf("SC_NPROCESSORS_ONLN"))


def accept_queues():
    """{inode: connections waiting in its accept queue} for every listening TCP socket."""
    return {ino: queue for ino, (_, queue) in listeners().items()}


def reap():
    """Collects the exit status of this process's dead nginx children (as subreaper, the
    daemonized masters are its children), so that they do not linger as zombies. Other
    children (the load client) are left to their Popen."""
    try:
        tasks = os.listdir(f"/proc/{os.getpid()}/task")
    except OSError:
        return
    kids = set()
    for tid in tasks:
        try:
            with open(f"/proc/{os.getpid()}/task/{tid}/children") as f:
                kids.update(int(k) for k in f.read().split())
        except OSError:
            pass
    for pid in kids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm, rest = stat.split("(", 1)[1].rsplit(")", 1)
        if comm == "nginx" and rest.split()[0] == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def nogroup():
    for name in ("nogroup", "nobody"):
        try:
            grp.getgrnam(name)
            return name
        except KeyError:
            pass
    return "nobody"


# --- nginx ---------------------------------------------------------------------------------

class NginxServer:
    """nginx from PREFIX (sbin/nginx, conf/mime.types) run with a fresh nginx.conf in a
    temporary directory used as its -p prefix: pid file, error log, temp dirs there."""

    def __init__(self, prefix, workdir, kind):
        self.prefix = os.path.abspath(prefix)
        self.binary = os.path.join(self.prefix, "sbin", "nginx")
        self.kind = kind
        self.dir = workdir
        os.chmod(workdir, 0o755)  # workers run as nobody
        # nginx opens PREFIX/logs/error.log before reading the config (else it complains).
        os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
        self.conf = os.path.join(workdir, "nginx.conf")
        self.pid_path = os.path.join(workdir, "nginx.pid")
        self.log = os.path.join(workdir, "error.log")
        shutil.copy(os.path.join(self.prefix, "conf", "mime.types"), os.path.join(workdir, "mime.types"))
        self.listens = []
        self.plain = []  # listen addresses without reuseport: one socket, shared by all
        self.ports = set()
        self.proc = None  # nginx run in the foreground (daemon off)
        self.workers = 0
        self.masters = set()  # every master seen, for stop()
        self.timeline = []  # (time.monotonic(), what): the signals sent, for a failure's report

    # -- config and start --

    def configure(self, workers, listens, stream_listens=(), extra_main="", extra_http="", servers=None):
        """listens: "127.0.0.1:8080", "[::1]:8080"... each gets `reuseport`, in http{}; the
        stream_listens in stream{}, proxied to the first HTTP address (stream's `return`
        would close without reading the request: the client would see resets).

        workers: a number, or "auto" (`worker_processes auto;`: as many as nginx counts
        CPUs, sysconf(_SC_NPROCESSORS_ONLN) in 1.22.1).

        servers: instead of one server{} with the listens, several: each a list of `listen`
        arguments ("127.0.0.1:8080 reuseport", "127.0.0.1:8081"). The listens given are then
        the reuseport addresses (one socket per worker); `plain` (shared) addresses are
        those listed without reuseport anywhere."""
        self.listens = list(listens) + list(stream_listens)
        self.plain = []
        if servers is not None:
            reuseport = {line.split()[0] for srv in servers for line in srv if "reuseport" in line.split()[1:]}
            self.plain = sorted({line.split()[0] for srv in servers for line in srv} - reuseport)
        self.ports = {int(spec.rsplit(":", 1)[1]) for spec in self.listens + self.plain}
        if workers == "auto":
            self.workers = ncpu()
        else:
            self.workers = workers
        user = f"user nobody {nogroup()};\n" if os.getuid() == 0 else ""
        if servers is None:
            servers = [[f"{spec} reuseport" for spec in listens]]
        server_blocks = ""
        for n, lines in enumerate(servers):
            server_blocks += (
                "    server {\n"
                + (f"        server_name server{n};\n" if n else "")
                + "".join(f"        listen {line};\n" for line in lines)
                + "        location / {\n"
                "            return 200 \"worker $pid\\n\";\n"
                "        }\n"
                "    }\n")
        text = (
            f"# written by tests/nginx/run.py\n"
            f"worker_processes {workers};\n"
            f"{user}"
            f"pid {self.pid_path};\n"
            f"error_log {self.log} info;\n"
            f"worker_rlimit_nofile 10240;\n"
            f"worker_shutdown_timeout 10s;\n"
            f"{extra_main}"
            f"events {{\n    worker_connections 4096;\n}}\n"
            f"http {{\n"
            f"    include {self.dir}/mime.types;\n"
            f"    default_type text/plain;\n"
            f"    access_log off;\n"
            f"{extra_http}"
            f"{server_blocks}"
            f"}}\n")
        if stream_listens:
            text += ("stream {\n    server {\n"
                     + "".join(f"        listen {spec} reuseport;\n" for spec in stream_listens)
                     + f"        proxy_pass {listens[0]};\n    }}\n}}\n")
        with open(self.conf + ".tmp", "w") as f:
            f.write(text)
        os.replace(self.conf + ".tmp", self.conf)

    def command(self, *args):
        return [self.binary, "-p", self.dir + "/", "-c", self.conf] + list(args)

    def start(self, cpus=None):
        """nginx daemonizes: the command returns once the master runs (its listen sockets
        are open by then); then waits for the pid file and the workers. cpus: bind nginx
        (and every process it forks) to these."""
        p = subprocess.run(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=30, preexec_fn=pinned(cpus))
        check(p.returncode == 0, f"nginx did not start (exit {p.returncode}): {p.stdout.strip()}")
        master = wait_for(self.master, 10, "the pid file")
        self.masters.add(master)
        return self.wait_settled(master, self.workers)

    def try_start(self):
        """Runs nginx (daemonizing) and returns (exit status, its output), whatever they are."""
        p = subprocess.run(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=30)
        return p.returncode, p.stdout

    def start_foreground(self):
        """nginx with `daemon off` (the config says so) as this process's child; returns
        its pid once it wrote its pid file. self.proc is its Popen."""
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL)
        self.masters.add(self.proc.pid)
        wait_for(lambda: self.master() == self.proc.pid or self.proc.poll() is not None, 10, "the pid file")
        check(self.proc.poll() is None, f"nginx exited at once (exit {self.proc.returncode})")
        return self.proc.pid

    def master(self, oldbin=False):
        """The pid in the pid file (or .oldbin), None while it does not exist or is being
        written."""
        try:
            with open(self.pid_path + (".oldbin" if oldbin else "")) as f:
                return int(f.read())
        except (FileNotFoundError, ValueError):
            return None

    # -- workers --

    def known_masters(self):
        return {m for m in (self.master(), self.master(oldbin=True)) if m} | self.masters

    def workers_of(self, master, exiting=False):
        """The master's workers, past their initialization (nginx sets the title "worker
        process" after ngx_worker_process_init, where they set up their sockets and drop
        privileges); with exiting, also the old ones ("worker process is shutting down")."""
        out = []
        for pid in children_of(master):
            t = title(pid)
            if t == WORKER_TITLE or (exiting and t.startswith(WORKER_TITLE)):
                out.append(pid)
        return sorted(out)

    def wait_settled(self, master, workers=None, old=()):
        """Until the master's children (other than a new master of an upgrade) are exactly
        `workers` workers, all past their initialization, none of `old` (the workers before
        the signal) among them or alive."""
        workers = self.workers if workers is None else workers
        old = set(old)

        def settled():
            kids = [k for k in children_of(master) if k not in self.known_masters()]
            if len(kids) != workers or any(title(k) != WORKER_TITLE for k in kids):
                return None
            if old & set(kids) or any(alive(p) for p in old):
                return None
            return sorted(kids) or True

        got = wait_for(settled, 20, f"master {master} to settle with {workers} new workers")
        return got if got is not True else []

    # -- signals --

    def signal(self, pid, sig):
        self.timeline.append((time.monotonic(), f"{signal.Signals(sig).name} to {pid}"))
        os.kill(pid, sig)

    def reload(self, master, workers=None):
        """HUP, then wait until the new workers replaced every old one."""
        old = self.workers_of(master, exiting=True)
        self.signal(master, signal.SIGHUP)
        return self.wait_settled(master, workers, old)

    def wait_exit(self, pid, timeout=20):
        wait_for(lambda: not alive(pid), timeout, f"process {pid} to exit")
        reap()

    def start_upgrade(self):
        """USR2 to the master; returns (old, new) once the new master runs its workers."""
        old = self.master()
        self.signal(old, signal.SIGUSR2)
        wait_for(lambda: self.master(oldbin=True) == old and self.master() not in (None, old), 10,
                 "the new master's pid file (and nginx.pid.oldbin)")
        new = self.master()
        self.masters.add(new)
        self.wait_settled(new)
        return old, new

    # -- what a killed or fast-stopped worker loses --

    def kill9(self, victim):
        """SIGSTOP the worker, count the accepted connections it holds, SIGKILL it: exactly
        what it had in flight at death (stopped, it accepts nothing more)."""
        stop_process(self.signal, victim)
        held = held_connections(victim, self.ports)
        self.signal(victim, signal.SIGKILL)
        return held

    def term_master(self, master):
        """TERM (fast shutdown) to a master. Returns (lost, slack): the connections its
        workers had accepted when they died, and how many more they may have.

        The workers are SIGSTOPped and their established connections counted; the master
        gets TERM and passes it on (nginx writes the command to each worker's channel
        socket, no signal), and only then are the workers continued, so that they accept
        nothing while being counted. A continued worker handles what epoll reports in one
        batch: the command, and each listen socket whose queue filled meanwhile, which it
        accepts from once (multi_accept off) before it exits: those connections are lost
        too, and are counted as such (each polled listen socket with a non-empty queue,
        read while the workers are still stopped). The slack, one more per polled listen
        socket, covers a worker stopped in the middle of a batch of events (it finishes
        that batch first) and a queue that was empty when read but not when resumed."""
        workers = self.workers_of(master, exiting=True)
        for w in workers:
            stop_process(self.signal, w)
        held = sum(held_connections(w, self.ports) for w in workers)
        self.signal(master, signal.SIGTERM)
        time.sleep(0.2)  # the master passes the command on at once; under 1.5 s it sends no SIGKILL
        queues = accept_queues()
        polled = [polled_listen_sockets(w) for w in workers]
        accepted_on_resume = sum(1 for inodes in polled for ino in inodes if queues.get(ino, 0) > 0)
        for w in workers:
            try:
                self.signal(w, signal.SIGCONT)
            except ProcessLookupError:
                pass
        return held + accepted_on_resume, sum(len(inodes) for inodes in polled)

    # -- sockets --

    def reuseport_sockets_of(self, pid, listening=None):
        """The listen sockets (inodes) a process holds, but those of the plain (shared,
        non-reuseport) addresses. listening: a listeners() snapshot."""
        listening = listeners() if listening is None else listening
        return [ino for ino in listen_sockets_of(pid, listening) if listening[ino][0] not in self.plain]

    def socket_counts(self, master, listening=None):
        """{pid: listen sockets held} for the master and each of its workers (those of the
        plain addresses not counted)."""
        listening = listeners() if listening is None else listening
        counts = {master: len(self.reuseport_sockets_of(master, listening))}
        for w in self.workers_of(master):
            counts[w] = len(self.reuseport_sockets_of(w, listening))
        return counts

    def shared_sockets(self, master):
        """For each plain (non-reuseport) address, the socket every process holds:
        {address: inode}. Checks, for either build, what nginx does with a listen socket
        without reuseport: one socket, opened by the master, inherited by every worker."""
        procs = [master] + self.workers_of(master)
        listening = listeners()
        held = {pid: listen_sockets_of(pid, listening) for pid in procs}
        out = {}
        for addr in self.plain:
            inodes = [ino for ino, (a, _) in listening.items() if a == addr]
            check(len(inodes) == 1, f"{len(inodes)} listen sockets for {addr} (no reuseport), expected 1: {inodes}")
            for pid in procs:
                mine = [ino for ino in held[pid] if listening[ino][0] == addr]
                check(mine == inodes, f"process {pid} holds {mine} for {addr}, expected the shared socket {inodes}")
            out[addr] = inodes[0]
        return out

    def describe_sockets(self, master, listening=None):
        counts = self.socket_counts(master, listening)
        workers = " ".join(f"{pid}:{n}" for pid, n in counts.items() if pid != master)
        return (f"listen sockets ({len(self.listens)} addresses x {len(counts) - 1} workers): "
                f"master {master}: {counts[master]}; workers {workers}")

    def check_sockets(self, master, strict):
        """Workers run as nobody (when the master is root). With strict (the patched
        build): the master holds no listen socket, each worker exactly one per address, no
        two workers the same. Otherwise (stock) the counts are printed. Either way, each
        address without reuseport has one socket, held by the master and every worker."""
        workers = self.workers_of(master)
        check(len(workers) == self.workers, f"master {master} runs {len(workers)} workers, expected {self.workers}")
        if os.getuid() == 0:
            check(uid_of(master) == 0, f"master {master} runs as uid {uid_of(master)}")
            for pid in workers:
                check(uid_of(pid) == 65534, f"worker {pid} runs as uid {uid_of(pid)}, not nobody")
        listening = listeners()
        print(f"  {self.kind}: {self.describe_sockets(master, listening)}", flush=True)
        if self.plain:
            shared = self.shared_sockets(master)
            print(f"  {self.kind}: without reuseport, the master and its {len(workers)} workers hold the same socket: "
                  + ", ".join(f"{a} inode {i}" for a, i in shared.items()), flush=True)
        if not strict:
            return
        held_by_master = self.reuseport_sockets_of(master, listening)
        check(held_by_master == [], f"master {master} holds {len(held_by_master)} listen sockets, expected 0")
        seen = {}
        for pid in workers:
            held = self.reuseport_sockets_of(pid, listening)
            check(len(held) == len(self.listens),
                  f"worker {pid} holds {len(held)} listen sockets, expected {len(self.listens)}")
            for ino in held:
                check(ino not in seen, f"workers {seen.get(ino)} and {pid} share listen socket {ino}")
                seen[ino] = pid

    # -- the end --

    def stop(self):
        """TERM to every master seen, then SIGKILL whatever of this nginx is still running
        among this process's descendants (by pid), and reap."""
        for m in self.known_masters():
            try:
                os.kill(m, signal.SIGTERM)
            except OSError:
                pass
        if self.proc is not None:  # run in the foreground: collect it through its Popen
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(m) for m in self.known_masters()):
            time.sleep(0.05)
            reap()
        exe = os.path.realpath(self.binary)
        for pid in descendants_of(os.getpid()):
            try:
                if os.path.realpath(f"/proc/{pid}/exe") == exe:
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)
        reap()

    def log_tail(self, n=30):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except FileNotFoundError:
            return ""


__all__ = ["NginxServer", "Failure", "Load", "check", "wait_for", "alive", "become_subreaper", "reap", "title",
           "children_of", "held_connections", "listen_sockets_of", "listeners", "listening_addresses", "ncpu",
           "uid_of"]
