"""What every server adapter does the same way: signals (recorded with their time, for a
failure's report), SIGKILL with the death confirmed, and the description of the listen
sockets each process holds."""

import os
import select
import signal
import time

from prefork import procfs
from prefork.wait import Failure, check

from ..verdict import Kill


class Adapter:
    """The interface the scenarios use; rpserver.Rpserver and nginx.Nginx implement the
    rest of it (configure, start, master, workers_of, wait_settled, reload,
    start_upgrade, fast_stop, check_sockets, deaths, log_tail, stop, record_fields).

    name: "rpserver" or "nginx"; label: how its notes are prefixed; strict: the
    library's socket layout is asserted (rpserver, patched nginx); addresses: the listen
    addresses a scenario uses when it names none; close_race_possible: listeners close
    without the program steering away first (the sysctl strategy, a master that cannot
    load the program), so a reset at a close is the kernel's close race: the adapter's
    close_windows() says when they closed ((start, end) instants, time.monotonic_ns()).
    No default here: in rpserver's adapter it would come before RpServer's in the method
    order and hide it."""

    name = label = ""
    strict = True
    close_race_possible = False

    def __init__(self):
        self.timeline = []  # (time.monotonic(), what): the signals sent
        self.kills = []  # (pid, sent_ns, dead_ns) of each SIGKILL
        self.default_cpus = None  # the CPUs start() binds the server to when given none

    @property
    def ports(self):
        return {int(spec.rsplit(":", 1)[1]) for spec in self.listens}

    def signal(self, pid, sig):
        self.timeline.append((time.monotonic(), f"{signal.Signals(sig).name} to {pid}"))
        os.kill(pid, sig)

    def sigkill(self, victim, timeout=5):
        """SIGKILL, then wait until the process is dead: its pidfd becomes readable once
        it has exited, after its files (its listeners) were closed. Records and returns
        (pid, sent_ns, dead_ns), time.monotonic_ns()."""
        pidfd = os.pidfd_open(victim)
        try:
            sent = time.monotonic_ns()
            self.signal(victim, signal.SIGKILL)
            if not select.select([pidfd], [], [], timeout)[0]:
                raise Failure(f"worker {victim} still alive {timeout} s after SIGKILL")
            dead = time.monotonic_ns()
        finally:
            os.close(pidfd)
        self.kills.append((victim, sent, dead))
        return victim, sent, dead

    def kill_records(self, in_flight_of):
        """Kill records of the SIGKILLs sent, with what each victim had accepted."""
        return [Kill(pid=p, sent_ns=s, dead_ns=d, in_flight=in_flight_of(p)) for p, s, d in self.kills]

    def describe_sockets(self, master, listening=None):
        listening = procfs.listeners() if listening is None else listening
        counts = self.socket_counts(master, listening)
        workers = " ".join(f"{pid}:{n}" for pid, n in counts.items() if pid != master)
        return (f"listen sockets ({len(self.listens)} addresses x {len(counts) - 1} workers): "
                f"master {master}: {counts[master]}; workers {workers}")

    def socket_counts(self, master, listening=None):
        """{pid: listen sockets held} for the master and each of its workers."""
        listening = procfs.listeners() if listening is None else listening
        counts = {master: len(procfs.listen_sockets_of(master, listening))}
        for w in self.workers_of(master):
            counts[w] = len(procfs.listen_sockets_of(w, listening))
        return counts

    def check_worker_sockets(self, workers, sockets_of):
        """The library's layout in the workers: each holds exactly one listen socket per
        address, and no two hold the same one. sockets_of(pid): the inodes it holds."""
        seen = {}
        for pid in workers:
            held = sockets_of(pid)
            check(len(held) == len(self.listens),
                  f"worker {pid} holds {len(held)} listen sockets, expected {len(self.listens)}")
            for ino in held:
                check(ino not in seen, f"workers {seen.get(ino)} and {pid} share listen socket {ino}")
                seen[ino] = pid

    def describe_signals(self, since):
        return ", ".join(f"{t - since:.3f} {what}" for t, what in self.timeline)
