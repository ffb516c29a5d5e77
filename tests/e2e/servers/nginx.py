"""nginx as a server under test: a build (an installed prefix: sbin/nginx, conf/; stock or
patched; its version) run with a fresh nginx.conf from a temporary directory used as its
-p prefix (pid file, error log, temp dirs there).

nginx has no event log and no in-flight counter: workers are found as the master's
children (by their process title), and what a dying worker had in flight is counted from
its sockets, with the worker stopped (SIGSTOP) so that it accepts nothing meanwhile.

nginx runs daemonized (`daemon on`, its default), as in production: with `daemon off` a
master ignores SIGUSR2 (its parent has not changed: src/os/unix/ngx_process.c, "ignoring")
and SIGWINCH (only a daemonized master stops its workers), so no upgrade could be tested.
The runner is a child subreaper (prefork.reaping), so the daemonized master (and after an
upgrade the new one) stays its descendant: nothing escapes the test, and it reaps them."""

import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

from prefork import procfs
from prefork.load import pinned
from prefork.reaping import reap, stop_all
from prefork.wait import Failure, check, wait_for

from .. import verdict
from ..unprivileged import copy_for_others
from .base import Adapter

PORT = 8080
WORKER_TITLE = "nginx: worker process"


@dataclass(frozen=True)
class NginxBuild:
    """An installed nginx: its prefix (scripts/build-nginx.sh makes target/nginx-stock and
    target/nginx-patched), which kind it is, and its version ("1.22.1")."""
    prefix: str
    kind: str  # "stock" or "patched"
    version: str

    @property
    def binary(self):
        return os.path.join(self.prefix, "sbin", "nginx")

    @staticmethod
    def at(prefix, kind=None, version=None):
        """The build installed at `prefix`; kind defaults to "patched" when the prefix's
        name says so, version to what `nginx -v` prints."""
        prefix = os.path.abspath(prefix)
        kind = kind or ("patched" if "patched" in os.path.basename(prefix) else "stock")
        if version is None:
            out = subprocess.run([os.path.join(prefix, "sbin", "nginx"), "-v"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, timeout=10).stdout
            m = re.search(r"nginx/(\S+)", out)
            check(m is not None, f"{prefix}/sbin/nginx -v printed no version: {out!r}")
            version = m.group(1)
        return NginxBuild(prefix, kind, version)


def nogroup():
    for name in ("nogroup", "nobody"):
        try:
            grp.getgrnam(name)
            return name
        except KeyError:
            pass
    return "nobody"


def ncpu():
    """What `worker_processes auto` gives: sysconf(_SC_NPROCESSORS_ONLN)."""
    return max(1, os.sysconf("SC_NPROCESSORS_ONLN"))


def held_connections(pid, ports):
    """The ESTABLISHED connections to `ports` the process holds: what it loses at death."""
    return procfs.accepted_connections(pid, ports, established_only=True)


class Nginx(Adapter):
    name = "nginx"
    addresses = [f"127.0.0.1:{PORT}", f"[::1]:{PORT}"]

    def __init__(self, build, workdir, to_build=None, steering=True, master_user=None):
        """to_build: the build an in-place upgrade adopts (swap_binary()): nginx then runs
        from a copy of the binary in the work directory, as an installed nginx runs from
        its path, and the upgrade replaces that file. steering False: the patched build
        runs with `reuseport_health_threshold 0` (steered, without health verdicts).
        master_user: run the master as this user (from root, through setpriv: no
        capability left, so no CAP_BPF and no program), as a non-root user starts nginx on
        an unprivileged port; the work directory becomes writable for it."""
        super().__init__()
        self.master_user = master_user
        self.build = self.first_build = build
        self.to_build = to_build
        self.steering = steering
        self.dir = workdir
        os.chmod(workdir, 0o755)  # workers run as nobody
        self.binary = build.binary
        if master_user is not None:
            # Without CAP_BPF the patched master loads no program: the kernel migrates a
            # closing listener's queue (net.ipv4.tcp_migrate_req), and a handshake that
            # completes in the instant of a close is reset (docs/design.md).
            self.close_race_possible = True
            os.chmod(workdir, 0o777)  # its pid file, logs and temp directories
            if to_build is None:
                self.binary = copy_for_others(build.binary, workdir)
        # What differs between the builds' configs (the patch's directive), included from
        # the main config so that a binary swap changes only this file.
        self.build_conf = os.path.join(workdir, "build.conf") if to_build or not steering else None
        if to_build is not None:
            os.makedirs(os.path.join(workdir, "sbin"), exist_ok=True)
            self.binary = os.path.join(workdir, "sbin", "nginx")
        self.use_build(build)
        # nginx opens PREFIX/logs/error.log before reading the config (else it complains).
        os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
        if master_user is not None:
            os.chmod(os.path.join(workdir, "logs"), 0o777)
        self.conf = os.path.join(workdir, "nginx.conf")
        self.pid_path = os.path.join(workdir, "nginx.pid")
        self.log = os.path.join(workdir, "error.log")
        shutil.copy(os.path.join(build.prefix, "conf", "mime.types"), os.path.join(workdir, "mime.types"))
        self.worker_user = "nobody"  # the `user` of the config (a scenario's own config may say another)
        self.listens = []
        self.plain = []  # listen addresses without reuseport: one socket, shared by all
        self.proc = None  # nginx run in the foreground (daemon off)
        self.workers = 0
        self.masters = set()  # every master seen, for stop()
        self.lost = 0  # what fast-stopped workers had accepted
        self.slack = 0  # what they may have accepted on resuming (term_master)
        self.killed_held = {}  # {pid: accepted connections it held when killed}

    # -- config and start --

    def configure(self, workers, listens, stream_listens=(), extra_main="", extra_http="", servers=None,
                  health_threshold_ms=None):
        """health_threshold_ms: the patched build's `reuseport_health_threshold` (ignored by
        stock nginx, which has no such directive, and without steering, which sets 0).

        listens: "127.0.0.1:8080", "[::1]:8080"... each gets `reuseport`, in http{}; the
        stream_listens in stream{}, proxied to the first HTTP address (stream's `return`
        would close without reading the request: the client would see resets).

        workers: a number, or "auto" (`worker_processes auto;`: as many as nginx counts
        CPUs, sysconf(_SC_NPROCESSORS_ONLN)).

        servers: instead of one server{} with the listens, several: each a list of `listen`
        arguments ("127.0.0.1:8080 reuseport", "127.0.0.1:8081"). The listens given are then
        the reuseport addresses (one socket per worker); `plain` (shared) addresses are
        those listed without reuseport anywhere."""
        self.listens = list(listens) + list(stream_listens)
        if health_threshold_ms is not None and self.build.kind == "patched" and self.steering:
            extra_main += f"reuseport_health_threshold {health_threshold_ms}ms;\n"
        self.plain = []
        if servers is not None:
            reuseport = {line.split()[0] for srv in servers for line in srv if "reuseport" in line.split()[1:]}
            self.plain = sorted({line.split()[0] for srv in servers for line in srv} - reuseport)
        self.workers = ncpu() if workers == "auto" else workers
        user = f"user nobody {nogroup()};\n" if self.privileged_master() else ""
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
            f"# written by tests/e2e (nginx {self.build.version}, {self.build.kind})\n"
            f"worker_processes {workers};\n"
            f"{user}"
            f"pid {self.pid_path};\n"
            f"error_log {self.log} info;\n"
            f"worker_rlimit_nofile 10240;\n"
            f"worker_shutdown_timeout 10s;\n"
            f"{extra_main}"
            + (f"include {self.build_conf};\n" if self.build_conf else "")
            + f"events {{\n    worker_connections 4096;\n}}\n"
            f"http {{\n"
            f"    include {self.dir}/mime.types;\n"
            f"    default_type text/plain;\n"
            f"    access_log off;\n"
            f"{self.temp_paths()}"
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

    def use_build(self, build):
        """Installs `build` where nginx runs from (the in-place upgrade's binary swap; a
        running master keeps the binary it executed) with its part of the config; the
        socket checks follow the build now in place."""
        self.build = build
        self.label = build.kind
        self.strict = build.kind == "patched"
        if self.binary != build.binary:
            shutil.copy(build.binary, self.binary + ".new")
            os.replace(self.binary + ".new", self.binary)
        if self.build_conf:
            text = "reuseport_health_threshold 0;\n" if build.kind == "patched" and not self.steering else ""
            with open(self.build_conf, "w") as f:
                f.write(f"# {build.kind} nginx {build.version}\n{text}")

    def swap_binary(self):
        """Replaces the binary with the upgrade's (to_build), as a user does before USR2."""
        check(self.to_build is not None, "no build to upgrade to (--to-prefix)")
        self.timeline.append((time.monotonic(), f"binary replaced by {self.to_build.kind} {self.to_build.version}"))
        self.use_build(self.to_build)

    def restore_binary(self):
        """Puts the first binary back, as a user does when reverting an upgrade."""
        self.use_build(self.first_build)

    def temp_paths(self):
        """A distribution's build (Debian's) has absolute temp paths compiled in
        (/var/lib/nginx/body...): they go to the work directory instead."""
        out = subprocess.run([self.build.binary, "-V"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, timeout=10).stdout
        if "--http-client-body-temp-path=/" not in out:
            return ""
        return "".join(f"    {d}_temp_path {self.dir}/{d};\n"
                       for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))

    @property
    def ports(self):
        return {int(spec.rsplit(":", 1)[1]) for spec in self.listens + self.plain}

    def privileged_master(self):
        return os.getuid() == 0 and self.master_user is None

    def command(self, *args):
        return self.launcher() + [self.binary, "-p", self.dir + "/", "-c", self.conf] + list(args)

    def close_windows(self):
        """After each signal that makes processes close listeners (a stock worker logs
        nothing of it, a patched one with whole seconds only), SIGNAL_CLOSE_NS."""
        closing = ("SIGQUIT", "SIGTERM", "SIGINT", "SIGWINCH", "SIGHUP", "nginx -s reload")
        return [(int(t * 1e9), int(t * 1e9) + verdict.SIGNAL_CLOSE_NS)
                for t, what in self.timeline if what.startswith(closing)]

    def launcher(self):
        """setpriv as the master's user: its real, effective and saved uids and gids, no
        supplementary groups, and (setresuid from root clears them) no capabilities."""
        if self.master_user is None:
            return []
        pw = pwd.getpwnam(self.master_user)
        return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]

    def start(self, cpus=None):
        """nginx daemonizes: the command returns once the master runs (its listen sockets
        are open by then); then waits for the pid file and the workers, and returns them.
        cpus: bind nginx (and every process it forks) to these (default: default_cpus)."""
        cpus = self.default_cpus if cpus is None else cpus
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
        privileges), sorted; with exiting, also the old ones ("worker process is shutting
        down")."""
        out = []
        for pid in procfs.children_of(master):
            t = procfs.title(pid)
            if t == WORKER_TITLE or (exiting and t.startswith(WORKER_TITLE)):
                out.append(pid)
        return sorted(out)

    def wait_settled(self, master, workers=None, old=()):
        """Until the master's children (other than a new master of an upgrade) are exactly
        `workers` workers, all past their initialization, none of `old` (the workers before
        the signal) among them or alive; returns them."""
        workers = self.workers if workers is None else workers
        old = set(old)

        def settled():
            kids = [k for k in procfs.children_of(master) if k not in self.known_masters()]
            if len(kids) != workers or any(procfs.title(k) != WORKER_TITLE for k in kids):
                return None
            if old & set(kids) or any(procfs.alive(p) for p in old):
                return None
            return sorted(kids) or True

        got = wait_for(settled, 20, f"master {master} to settle with {workers} new workers")
        return got if got is not True else []

    # -- signals --

    def reload(self, master, workers=None, command=False):
        """HUP (or `nginx -s reload`), then wait until the new workers replaced every old one."""
        old = self.workers_of(master, exiting=True)
        if command:
            self.timeline.append((time.monotonic(), "nginx -s reload"))
            subprocess.run(self.command("-s", "reload"), stdin=subprocess.DEVNULL, check=True, timeout=30)
        else:
            self.signal(master, signal.SIGHUP)
        return self.wait_settled(master, workers, old)

    def wait_exit(self, pid, timeout=20):
        wait_for(lambda: not procfs.alive(pid), timeout, f"process {pid} to exit")
        reap("nginx")

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

    def kill_worker(self, victim):
        """SIGSTOP the worker, count the accepted connections it holds, SIGKILL it: exactly
        what it had in flight at death (stopped, it accepts nothing more)."""
        procfs.stop_process(self.signal, victim)
        self.killed_held[victim] = held_connections(victim, self.ports)
        self.sigkill(victim)
        return self.killed_held[victim]

    def fast_stop(self, master):
        """TERM (fast shutdown) to a master, counting what its workers had accepted when
        they died, and how many more they may have (self.lost, self.slack).

        The workers are SIGSTOPped and their established connections counted; the master
        gets TERM and passes it on (nginx writes the command to each worker's channel
        socket, no signal), and only then are the workers continued, so that they accept
        nothing while being counted. A continued worker handles what epoll reports in one
        batch: the command, and each listen socket whose queue filled meanwhile, which it
        accepts from once (multi_accept off) before it exits: those connections are lost
        too, and are counted as such (each polled listen socket with a non-empty queue,
        read while the workers are still stopped). The slack, one more per polled listen
        socket, covers a worker stopped in the middle of a batch of events (it finishes
        that batch first) and a queue that was empty when read but not when resumed.
        Returns (lost, slack) of this stop."""
        workers = self.workers_of(master, exiting=True)
        for w in workers:
            procfs.stop_process(self.signal, w)
        held = sum(held_connections(w, self.ports) for w in workers)
        self.signal(master, signal.SIGTERM)
        time.sleep(0.2)  # the master passes the command on at once; under 1.5 s it sends no SIGKILL
        queues = procfs.accept_queues()
        polled = [procfs.polled_listen_sockets(w) for w in workers]
        accepted_on_resume = sum(1 for inodes in polled for ino in inodes if queues.get(ino, 0) > 0)
        for w in workers:
            try:
                self.signal(w, signal.SIGCONT)
            except ProcessLookupError:
                pass
        lost, slack = held + accepted_on_resume, sum(len(inodes) for inodes in polled)
        self.lost += lost
        self.slack += slack
        return lost, slack

    def deaths(self):
        """(Kill records, what fast-stopped workers had accepted, slack)."""
        return self.kill_records(lambda pid: self.killed_held.get(pid, 0)), self.lost, self.slack

    # -- sockets --

    def reuseport_sockets_of(self, pid, listening=None):
        """The listen sockets (inodes) a process holds, but those of the plain (shared,
        non-reuseport) addresses. listening: a listeners() snapshot."""
        listening = procfs.listeners() if listening is None else listening
        return [ino for ino in procfs.listen_sockets_of(pid, listening) if listening[ino][0] not in self.plain]

    def socket_counts(self, master, listening=None):
        """{pid: listen sockets held} for the master and each of its workers (those of the
        plain addresses not counted)."""
        listening = procfs.listeners() if listening is None else listening
        counts = {master: len(self.reuseport_sockets_of(master, listening))}
        for w in self.workers_of(master):
            counts[w] = len(self.reuseport_sockets_of(w, listening))
        return counts

    def shared_sockets(self, master):
        """For each plain (non-reuseport) address, the socket every process holds:
        {address: inode}. Checks, for either build, what nginx does with a listen socket
        without reuseport: one socket, opened by the master, inherited by every worker."""
        procs = [master] + self.workers_of(master)
        listening = procfs.listeners()
        held = {pid: procfs.listen_sockets_of(pid, listening) for pid in procs}
        out = {}
        for addr in self.plain:
            inodes = [ino for ino, (a, _) in listening.items() if a == addr]
            check(len(inodes) == 1, f"{len(inodes)} listen sockets for {addr} (no reuseport), expected 1: {inodes}")
            for pid in procs:
                mine = [ino for ino in held[pid] if listening[ino][0] == addr]
                check(mine == inodes, f"process {pid} holds {mine} for {addr}, expected the shared socket {inodes}")
            out[addr] = inodes[0]
        return out

    def check_sockets(self, master):
        """Workers run as nobody (when the master is root). With strict (the patched
        build): the master holds no listen socket, each worker exactly one per address, no
        two workers the same. Otherwise (stock) the counts are printed. Either way, each
        address without reuseport has one socket, held by the master and every worker."""
        workers = self.workers_of(master)
        check(len(workers) == self.workers, f"master {master} runs {len(workers)} workers, expected {self.workers}")
        if self.master_user is not None:
            uid = pwd.getpwnam(self.master_user).pw_uid
            for pid in [master] + workers:
                check(procfs.uid_of(pid) == uid, f"process {pid} runs as uid {procfs.uid_of(pid)}, not {self.master_user}")
        elif os.getuid() == 0:
            check(procfs.uid_of(master) == 0, f"master {master} runs as uid {procfs.uid_of(master)}")
            uid = pwd.getpwnam(self.worker_user).pw_uid
            for pid in workers:
                check(procfs.uid_of(pid) == uid,
                      f"worker {pid} runs as uid {procfs.uid_of(pid)}, not {self.worker_user}")
        listening = procfs.listeners()
        print(f"  {self.label}: {self.describe_sockets(master, listening)}", flush=True)
        if self.plain:
            shared = self.shared_sockets(master)
            print(f"  {self.label}: without reuseport, the master and its {len(workers)} workers hold the same "
                  "socket: " + ", ".join(f"{a} inode {i}" for a, i in shared.items()), flush=True)
        if not self.strict:
            return
        held_by_master = self.reuseport_sockets_of(master, listening)
        check(held_by_master == [], f"master {master} holds {len(held_by_master)} listen sockets, expected 0")
        self.check_worker_sockets(workers, lambda pid: self.reuseport_sockets_of(pid, listening))

    def final_checks(self):
        pass

    def record_fields(self):
        def version(build):  # " deb": Debian's package (scripts/build-nginx-deb.sh)
            return build.version + (" deb" if os.path.basename(build.prefix).startswith("nginx-deb") else "")
        fields = {"server": self.build.kind, "nginx_version": version(self.build)}
        if self.to_build is not None:
            fields.update(server=f"{self.first_build.kind}>{self.to_build.kind}",
                          nginx_version=f"{version(self.first_build)}>{version(self.to_build)}")
        if not self.steering:
            fields["steering"] = "no verdicts"
        if self.master_user is not None:
            # no capability: no program, so no steering whatever the config says
            fields["steering"] = f"none ({self.master_user} master)"
        return fields

    # -- the end --

    def stop(self):
        """TERM to every master seen, then SIGKILL whatever of this nginx is still running
        among this process's descendants (by pid), and reap."""
        if self.proc is not None:  # run in the foreground: collect it through its Popen
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        stop_all(self.known_masters(), self.binary, "nginx")
        if self.to_build is not None:
            # a master of a replaced binary runs "sbin/nginx (deleted)": not the file now there
            for pid in procfs.descendants_of(os.getpid()):
                try:
                    if os.readlink(f"/proc/{pid}/exe").startswith(self.binary):
                        os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            reap("nginx")

    def log_lines(self):
        """The error log's lines so far (none before it exists)."""
        try:
            with open(self.log, errors="replace") as f:
                return f.readlines()
        except FileNotFoundError:
            return []

    def log_tail(self, n=30):
        return "".join(self.log_lines()[-n:])


__all__ = ["Nginx", "NginxBuild", "Failure", "ncpu", "PORT"]
