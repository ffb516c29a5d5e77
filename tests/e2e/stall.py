"""The stall sequence, for rpserver and nginx alike: under a load at saturation, stop one
worker (SIGSTOP), count what it had accepted, continue it (SIGCONT) STALL_S later, and
measure; verdict.py turns the measurements into figures and checks."""

import signal
import time

from prefork import procfs
from prefork.load import cpu_split

from . import verdict
from .verdict import STALL_AFTER_S, STALL_S, STALL_STEADY_S

CLIENT_CPUS, SERVER_CPUS = cpu_split()
STALL_LOAD = dict(concurrency=64, rate=0, timeout_ms=2000, timeline_ms=100, cpus=CLIENT_CPUS)


def stall(send, victim, ports, during=None, seconds=STALL_S):
    """Stops `victim` (send: a server's signal method), counts the connections it had
    accepted once it is stopped, runs `during()` (a reload, an upgrade) while it stays
    stopped, and continues it `seconds` after the SIGSTOP (or once `during` is done, if
    later). Returns {"stop_ns", "cont_ns", "accepted_at_stop", "stalled_pid"}, times from
    time.monotonic_ns(), the load client's clock."""
    stop_ns = time.monotonic_ns()
    try:
        procfs.stop_process(send, victim)
        accepted = procfs.accepted_connections(victim, ports)
        if during:
            during()
        time.sleep(max(0.0, stop_ns / 1e9 + seconds - time.monotonic()))
    finally:  # whatever failed, the worker does not stay stopped
        cont_ns = time.monotonic_ns()
        send(victim, signal.SIGCONT)
    return {"stop_ns": stop_ns, "cont_ns": cont_ns, "accepted_at_stop": accepted, "stalled_pid": victim}


def stall_under_load(start_load, send, victim, ports, during=None, after=None, workers=None):
    """A load (start_load(**kw): a Load with the targets bound) for STALL_STEADY_S,
    `victim` stopped for STALL_S (during() runs meanwhile), after() once it is continued,
    STALL_AFTER_S more, the load stopped. With workers (a function: the pids that should
    share the load then), a separate load of STALL_AFTER_S after that, and the rate during
    the stall checked too. Returns (the load's result, the figures, [(ok, what)])."""
    def measure(during=None, after=None):
        load = start_load(duration=60, **STALL_LOAD)  # stopped by its until-file; 60 s at the most
        time.sleep(STALL_STEADY_S)
        stalled = stall(send, victim, ports, during=during)
        if after:
            after()
        time.sleep(STALL_AFTER_S)
        result = load.stop()
        return result, verdict.stall_figures(result, stalled)

    result, figures = measure(during, after)
    if not workers:
        return result, figures, verdict.stall_checks(figures, rate=False)
    after_load = start_load(duration=STALL_AFTER_S, **STALL_LOAD).wait()
    shares = verdict.fair_shares(after_load, list(workers()))
    figures.update(shares_after=shares, failed_after=verdict.failed_of(after_load))
    checks = verdict.stall_checks(figures, rate=False, shares=shares)
    # Throughput is timed, on a machine that others share: when only the rate misses, the
    # same worker is stopped again (the server is the same, recovered) and measured anew.
    # Every attempt's failures are checked (the counts returned are the first attempt's);
    # the rate counts when one attempt reaches it. Every ratio is recorded.
    ratios = [figures["stall_ratio"]]
    while verdict.needs_another_attempt(ratios):
        _, again = measure()
        checks += verdict.stall_checks(again, rate=False)
        ratios.append(again["stall_ratio"])
    figures.update(stall_ratios=ratios)
    checks.append(verdict.rate_check(ratios, figures["stalled_pid"]))
    return result, figures, checks
