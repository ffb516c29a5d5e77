"""The soak's random schedule of lifecycle events and faults, for one server adapter
(servers/rpserver.py or servers/nginx.py), drawn from a seeded random.Random so that a
failing run can be repeated with its seed. Each event waits until the server has settled
(its newest generation complete, the old one gone) before the next is drawn."""

import signal
import time

from prefork.procfs import alive
from prefork.wait import wait_for

from .scenarios.lifecycle import upgrade_done, wait_reverted

# (event, weight): how often each is drawn.
EVENTS = (
    ("reload_burst", 4),
    ("workers_change", 2),
    ("upgrade", 1),
    ("revert_hup", 1),
    ("revert_term", 1),
    ("kill9", 2),
    ("stall", 2),
)
MAX_BURST = 10  # HUPs in a burst, 100 ms apart: up to 10 reloads a second
# Killing or stopping a worker is judged against its siblings taking over: with a single
# worker there are none (its queue has nowhere to go; a stopped one's overflows), so these
# are drawn only while the server runs two workers or more.
NEEDS_SIBLINGS = {"kill9", "stall"}
MAX_STALL_S = 2.0  # below the load's 3 s timeout: a stopped worker's connections wait, none fails
GAP_S = (0.2, 1.5)  # between events


class Schedule:
    def __init__(self, rng, srv):
        self.rng, self.srv = rng, srv

    def master(self):
        return wait_for(self.srv.master, 10, "the pid file")

    def settle(self):
        master = self.master()
        self.srv.wait_settled(master)
        return master

    def run_until(self, end):
        """Draws and runs events until `end` (time.monotonic()); returns {event: count}."""
        done = {}
        names, weights = zip(*EVENTS)
        while time.monotonic() < end - 3:
            event = self.rng.choices(names, weights)[0]
            if event in NEEDS_SIBLINGS and self.srv.workers < 2:
                continue
            getattr(self, event)()
            done[event] = done.get(event, 0) + 1
            time.sleep(min(self.rng.uniform(*GAP_S), max(0, end - time.monotonic())))
        return done

    def reload_burst(self):
        master = self.master()
        for _ in range(self.rng.randint(1, MAX_BURST)):
            self.srv.signal(master, signal.SIGHUP)
            time.sleep(0.1)
        self.srv.wait_settled(master)

    def workers_change(self):
        n = self.rng.choice([k for k in (1, 2, 3, 4) if k != self.srv.workers])
        self.srv.configure(n, self.srv.listens)
        self.srv.reload(self.master(), n, command=True)

    def upgrade(self):
        old, new = self.srv.start_upgrade()
        upgrade_done(self.srv, old, new)

    def revert_hup(self):
        old, new = self.srv.start_upgrade()
        self.srv.signal(old, signal.SIGWINCH)
        self.srv.wait_settled(old, 0)
        time.sleep(0.2)
        self.srv.reload(old)
        self.srv.signal(new, signal.SIGQUIT)
        self.srv.wait_exit(new)
        wait_for(lambda: self.srv.master() == old, 5, "the old master to take its pid file back")

    def revert_term(self):
        old, new = self.srv.start_upgrade()
        time.sleep(0.3)
        self.srv.fast_stop(new)
        wait_reverted(self.srv, old, new)

    def kill9(self):
        master = self.master()
        workers = self.srv.workers_of(master)
        victim = self.rng.choice(workers)
        # kill_worker returns once the victim's pidfd said it died; its pid may be reused
        # by its replacement at once, so it cannot be waited on by pid (old=...).
        self.srv.kill_worker(victim)
        self.srv.wait_settled(master, len(workers))

    def stall(self):
        workers = self.srv.workers_of(self.master())
        victim = self.rng.choice(workers)
        self.srv.signal(victim, signal.SIGSTOP)
        try:
            time.sleep(self.rng.uniform(0.3, MAX_STALL_S))
        finally:
            if alive(victim):
                self.srv.signal(victim, signal.SIGCONT)
