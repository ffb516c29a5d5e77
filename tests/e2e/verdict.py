"""The verdicts of the end-to-end tests, as pure functions of what was measured (the load
client's JSON result, the server's counts, the instants of events): which failed
connections a server may be excused for, and what a stall and the spread of the load
must look like. No process, no socket: tests/e2e/test_verdict.py tests all of it.

Losses (`losses()`): with migration, a lifecycle event loses no connection that waits
in a listen queue or a handshake. What may fail:

- a connection a worker had accepted when it died (killed, or fast-stopped with TERM):
  the server's own count, "in flight at death";
- where listeners close without the library's program steering away from them first
  (the sysctl strategy, a master that cannot load the program), a reset of a connection
  in flight while a listener closed (a close window): the kernel's close-instant race;
- at a kill (SIGKILL), a reset of a connection in flight at the instant the worker was
  killed: its listener closes at the instant of its death, with no chance to leave the
  steering program's choice first, so a handshake completing on it then is reset. Such a
  failure is one of a Kill's window; any other failure in that window counts against
  what the killed worker had accepted, and nothing outside it does;
- with a stopped worker (the stall scenarios), what it had accepted before it stopped.

Each failed connection is excused once, by the first rule that fits it."""

from dataclasses import dataclass

from prefork.load import failed_of

__all__ = ["failed_of", "Kill", "Losses", "losses", "in_window", "placed",
           "timeline_rate", "stall_figures", "fair_shares", "stall_checks", "describe_stall",
           "STALL_S", "STALL_STEADY_S", "STALL_AFTER_S", "STALL_SKIP_S", "STALL_MIN_RATIO",
           "STALL_RATE_ATTEMPTS", "STALL_MIN_SHARE"]

MS = 1_000_000

# How long after a killed worker's death (confirmed through its pidfd) the load client may
# notice that a connection failed: its event loop shares two busy CPUs with the servers.
# A failure that ends later than this was not in flight at the kill.
KILL_NOTICE_SLACK_NS = 25 * MS
# A process that logs nothing when it closes its listeners (a stock nginx worker; a patched
# one logs with whole seconds only) closes them on a signal to its master within this,
# even on two busy CPUs: stock nginx's workers close theirs as soon as the signal reaches
# them. The window after such a signal in which a reset may be the kernel's close race.
SIGNAL_CLOSE_NS = 100 * MS


@dataclass(frozen=True)
class Kill:
    """A worker killed with SIGKILL: sent_ns when the signal was sent, dead_ns when its
    death was confirmed (its pidfd became readable: its files, listeners included, were
    closed by then), both time.monotonic_ns(); in_flight: what it had accepted."""
    pid: int
    sent_ns: int
    dead_ns: int
    in_flight: int


@dataclass
class Losses:
    """A loss verdict: the failures, how many each rule excused, and how many are left."""
    failed: int
    close_race: int = 0  # resets in flight in a close window
    kill_race: int = 0  # resets in flight at a kill
    kill_accepted: int = 0  # other failures in a kill's window, up to what the killed had accepted
    counted: int = 0  # excused by counts: in flight at other deaths, (slack), accepted at a stall stop
    unexcused: int = 0

    @property
    def ok(self):
        return self.unexcused == 0

    def explain(self):
        parts = [f"{n} {what}" for n, what in (
            (self.close_race, "reset(s) in flight while a listener closed"),
            (self.kill_race, "reset(s) in flight at a kill (accepted by the killed worker, or racing its listener's close)"),
            (self.kill_accepted, "failure(s) at a kill that the killed worker(s) had accepted"),
            (self.counted, "failure(s) within what dead or stopped workers held")) if n]
        return (f"{self.failed} connections failed" + (": " + ", ".join(parts) if parts else "")
                + (f"; {self.unexcused} unexcused" if self.unexcused else ""))


def in_window(failure, t0_ns, start_ns, end_ns):
    """Whether a failure (a load client's record: start_ns and end_ns since t0_ns) was in
    flight during [start_ns, end_ns] (absolute instants): started before it ended, and
    failed after it began."""
    return t0_ns + failure["start_ns"] <= end_ns and t0_ns + failure["end_ns"] >= start_ns


def _at_close(failure, t0_ns, windows):
    return failure["kind"] == "reset" and any(in_window(failure, t0_ns, start, end) for start, end in windows)


def _at_kill(failure, t0_ns, kill):
    # In flight at the kill: started before the death, failed after the signal, and
    # noticed within KILL_NOTICE_SLACK_NS of the death.
    return (t0_ns + failure["start_ns"] <= kill.dead_ns
            and kill.sent_ns <= t0_ns + failure["end_ns"] <= kill.dead_ns + KILL_NOTICE_SLACK_NS)


def losses(result, *, close_windows=(), kills=(), lost=0, held=0):
    """Judges a load's failures (a load client's JSON result, with its `failures`
    records) against what may fail (see the module's doc):

    close_windows: (start, end) instants within which listeners closed, where a reset is
      the kernel's close race (give them only where listeners close unsteered): bracketed
      by log lines (rpserver), or after a signal (SIGNAL_CLOSE_NS) where nothing logs it;
    kills: Kill records;
    lost: what workers that died otherwise (fast stop) had accepted, plus any slack;
    held: what a stopped worker had accepted at its stop.

    Only the first failures carry a record (time and kind); those without one are
    excused by the counts (lost, held) only."""
    t0 = result["t0_ns"]
    records = result.get("failures", [])
    v = Losses(failed=failed_of(result))
    unexplained = max(0, v.failed - len(records))  # no record: nothing but a count explains it
    accepted_left = sum(k.in_flight for k in kills)
    for f in records:
        if _at_close(f, t0, close_windows):
            v.close_race += 1
        elif any(_at_kill(f, t0, k) for k in kills):
            if f["kind"] == "reset":
                v.kill_race += 1
            elif accepted_left > 0:
                v.kill_accepted += 1
                accepted_left -= 1
            else:
                unexplained += 1
        else:
            unexplained += 1
    v.counted = min(unexplained, lost + held)
    v.unexcused = unexplained - v.counted
    return v


def placed(result, *, close_windows=(), kills=()):
    """One line per recorded failure: its kind and phase, when it was in flight, and the
    nearest close window and kill (ms since the load's start): what a verdict
    that failed needs to tell a timing race from a loss."""
    t0 = result["t0_ns"]

    def ms(ns):
        return f"{(ns - t0) / MS:.1f}"

    lines = []
    for f in result.get("failures", []):
        parts = [f"{f['kind']} in phase {f['phase']}, in flight {f['start_ns'] / MS:.1f} to {f['end_ns'] / MS:.1f} ms"]
        mid = t0 + (f["start_ns"] + f["end_ns"]) // 2
        w = min(close_windows, key=lambda w: abs(w[0] - mid), default=None)
        if w is not None:
            parts.append(f"nearest close window {ms(w[0])} to {ms(w[1])}")
        k = min(kills, key=lambda k: abs(k.dead_ns - t0 - f["end_ns"]), default=None)
        if k is not None:
            parts.append(f"nearest kill sent at {ms(k.sent_ns)}, dead at {ms(k.dead_ns)}")
        lines.append("; ".join(parts))
    return lines


# --- stall: one worker stopped (SIGSTOP) under load -----------------------------------------
# A load at saturation with a timeline runs STALL_STEADY_S, one worker is stopped for
# STALL_S, the load goes on STALL_AFTER_S after SIGCONT; then a separate load of
# STALL_AFTER_S tells whether the workers share the load evenly again.

STALL_S = 4.0
STALL_STEADY_S = 2.0
STALL_AFTER_S = 1.5
STALL_SKIP_S = 0.5  # the start of the load, left out of the steady rate
STALL_MIN_RATIO = 0.9  # ok rate during the stall / steady rate, at least
STALL_RATE_ATTEMPTS = 3  # measurements of that ratio, at most, before it counts as missed
STALL_MIN_SHARE = 0.6  # of the fair share, for every worker after SIGCONT


class EmptyWindow(ValueError):
    pass


def timeline_rate(result, start_ns, end_ns):
    """ok completions per second in [start_ns, end_ns) (time.monotonic_ns() values), from a
    load client result with a timeline; a bucket that straddles an end counts for the part
    inside."""
    width = result["timeline_ms"] * MS
    lo, hi = start_ns - result["t0_ns"], end_ns - result["t0_ns"]
    if hi <= lo:
        raise EmptyWindow(f"an empty window: [{start_ns}, {end_ns})")
    ok = 0.0
    for i, n in enumerate(result["timeline"]):
        overlap = min(hi, (i + 1) * width) - max(lo, i * width)
        if overlap > 0:
            ok += n * overlap / width
    return ok / ((hi - lo) / 1e9)


def stall_figures(result, stalled):
    """The throughput around a stall (stalled: {"stop_ns", "cont_ns", "accepted_at_stop",
    "stalled_pid"}): {"steady_rate": ok/s from STALL_SKIP_S after the load's start to the
    SIGSTOP and in the STALL_AFTER_S after the SIGCONT, "stall_rate": ok/s from the
    SIGSTOP to the SIGCONT, "stall_ratio": the second / the first}, plus what `stalled`
    holds but the times, and the load's failures: timeouts, and all the other kinds
    together."""
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
    """{pid: what it served / (all ok responses to `pids` / number of pids)}: 1.0 is a fair
    share; 0 for a pid that served nothing."""
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
        out.append(rate_check([f["stall_ratio"]], f["stalled_pid"]))
    if shares is not None:
        low = {p: s for p, s in shares.items() if s < STALL_MIN_SHARE}
        out.append((not low, f"after SIGCONT, workers served less than {STALL_MIN_SHARE:.0%} of a fair share: "
                             f"{low} (all: {shares})"))
    return out


def rate_check(ratios, stalled_pid):
    """(ok, what): the ok rate while a worker was stopped reached STALL_MIN_RATIO of the
    steady rate in at least one of the attempts (`ratios`: each attempt's stall_ratio)."""
    return (max(ratios) >= STALL_MIN_RATIO,
            f"the ok rate while worker {stalled_pid} was stopped stayed under {STALL_MIN_RATIO:.0%} of the "
            f"steady rate in {len(ratios)} attempt{'s' if len(ratios) > 1 else ''} (ratios {ratios})")


def needs_another_attempt(ratios):
    """Whether the stall is measured again: only the rate missed so far, and attempts are
    left (throughput is timed, on a machine that others share)."""
    return ratios[-1] < STALL_MIN_RATIO and len(ratios) < STALL_RATE_ATTEMPTS


def describe_stall(figures):
    f = figures
    return (f"steady {f['steady_rate']} ok/s, {f['stall_rate']} ok/s during the {f['stall_s']} s stall "
            f"(ratio {f['stall_ratio']}), worker {f['stalled_pid']} had accepted {f['accepted_at_stop']} at the stop; "
            f"timeouts {f['timeouts']}, other failures {f['other_failures']}"
            + (f"; shares after SIGCONT {f['shares_after']}" if f.get("shares_after") else "")
            + (f"; ratios of {len(f['stall_ratios'])} attempts {f['stall_ratios']}"
               if len(f.get("stall_ratios", ())) > 1 else ""))
