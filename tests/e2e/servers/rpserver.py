"""rpserver (c-examples/server) as a server under test: tools/prefork's RpServer, with
the strategy the test asks for, workers dropping to nobody when the master is root, and
what the scenarios need to judge it: the listen sockets each process holds, what dead
workers had in flight (the master's own count, logged at each worker_exit), and when
listeners closed (the library logs each close)."""

import os
import signal

from prefork import procfs
from prefork.rpserver import RpServer
from prefork.wait import check

from .base import Adapter

PORT = 8080


class Rpserver(Adapter, RpServer):
    name = "rpserver"
    label = "rpserver"
    strict = True
    addresses = [f"127.0.0.1:{PORT}"]

    def __init__(self, binary, workdir, strategy):
        Adapter.__init__(self)
        RpServer.__init__(self, binary, workdir)
        self.strategy = strategy
        # As root, workers drop to nobody: their sockets must be made before that.
        self.user = "nobody" if os.getuid() == 0 else None
        # The library's line before each close, with the one after it, times the close.
        self.log_level = "debug"
        # With the sysctl alone there is no program to steer away from a closing listener.
        self.close_race_possible = strategy == "sysctl"

    def configure(self, workers, listens, extra="", health_threshold_ms=None):
        """health_threshold_ms: `reuseport_health_threshold` (the library's default when None)."""
        if health_threshold_ms is not None:
            extra += f"reuseport_health_threshold {health_threshold_ms}ms;\n"
        RpServer.configure(self, workers, listens, extra)

    def workers_of(self, master):
        """The master's live workers past their library call (worker_start logged), in
        spawn order."""
        started = self.started()
        return [p for p in RpServer.workers_of(self, master) if p in started]

    def fast_stop(self, master):
        """TERM to a master: its workers stop at once; what they had accepted is in their
        worker_exit events."""
        self.signal(master, signal.SIGTERM)

    def kill_worker(self, victim):
        """SIGKILL a worker; what it had accepted comes from the master's log (deaths())."""
        self.sigkill(victim)

    def deaths(self):
        """(Kill records, connections other dead workers had accepted, slack): every
        worker_exit counts, the killed ones in their Kill record."""
        exits = self.worker_exits()
        killed = {pid for pid, _, _ in self.kills}
        kills = self.kill_records(lambda pid: exits.get(pid, 0))
        return kills, sum(n for pid, n in exits.items() if pid not in killed), 0

    def check_sockets(self, master):
        """The design's invariant: the master holds no listen socket, each worker one per
        address, no two workers the same one, and workers run as nobody."""
        listening = procfs.listeners()
        held = procfs.listen_sockets_of(master, listening)
        check(held == [], f"master {master} holds listen sockets {held}")
        workers = self.workers_of(master)
        if os.getuid() == 0:  # workers of a root master drop to nobody; others are nobody already
            for pid in workers:
                check(procfs.uid_of(pid) == 65534, f"worker {pid} runs as uid {procfs.uid_of(pid)}, not nobody")
        self.check_worker_sockets(workers, lambda pid: procfs.listen_sockets_of(pid, listening))

    def final_checks(self):
        """Every listener got the strategy asked for (auto: whatever the library chose)."""
        if self.strategy == "auto":
            return
        got = {ev.get("strategy") for ev in self.events() if ev["event"] == "strategy"}
        expected = self.strategy.split("-")[0]
        check(got == {expected}, f"the server's listeners got strategies {got}, not {expected}")

    def record_fields(self):
        return {"strategy": self.strategy}

    def log_tail(self, n=30):
        return "".join(self.log_lines()[-n:])
