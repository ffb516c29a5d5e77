"""Where, in the time between reloads, a load's slow requests complete: the load client's
per-millisecond timeline of completions (and of those that took at least --slow-ms) folded
by each bucket's offset from the last reload signal before it. A burst right after each
signal is the reload itself; slowness spread evenly is something that lasts. Pure: the
latency benchmark (bench/latency.py) prints it for the reload storm; test_phases.py tests
it."""

__all__ = ["slow_by_phase"]


def slow_by_phase(result, signals, *, prefix="SIGHUP", period_ms=100, width_ms=10):
    """[(offset_ms, slow, ok)] for each width_ms-wide slice of the period_ms after a
    signal: the completions (ok) and slow ones in the timeline buckets whose start lies
    that far after the last signal whose text starts with `prefix`. `result`: a load
    client result with "timeline_ms", "timeline" and "timeline_slow"; `signals`: (seconds
    since the client's t0, text). Buckets before the first signal, or period_ms or more
    after the last one, are left out."""
    step = result["timeline_ms"]
    at = sorted(t * 1000 for t, what in signals if what.startswith(prefix))
    slices = [[k * width_ms, 0, 0] for k in range(period_ms // width_ms)]
    if not at:
        return [tuple(s) for s in slices]
    j = -1
    for i, (ok, slow) in enumerate(zip(result["timeline"], result["timeline_slow"])):
        start = i * step
        while j + 1 < len(at) and at[j + 1] <= start:
            j += 1
        if j < 0:
            continue
        offset = start - at[j]
        if offset >= period_ms:
            continue
        s = slices[int(offset // width_ms)]
        s[1] += slow
        s[2] += ok
    return [tuple(s) for s in slices]
