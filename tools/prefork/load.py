"""c-examples/loadclient in the background (a new connection per request, every outcome
counted by kind), and where client and server run (CPU pinning)."""

import itertools
import json
import os
import subprocess
import time

from .wait import Failure, check


def cpu_split():
    """({client CPU}, {server CPUs}) from the CPUs this process may use, when there are at
    least two; else (None, None). A throughput measured with client and server on the same
    CPUs swings by a fifth from one half second to the next as the scheduler moves them
    around; apart, it is steady enough to compare two windows of one run."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def pinned(cpus):
    """A Popen preexec_fn that binds the child (and what it forks) to `cpus`, or None."""
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


class Load:
    """loadclient in the background until stop() touches its until-file, or until its
    duration is over (wait()). timeline_ms: its --timeline (0: none), slow_ms: its
    --slow-ms (None: the client's default). quiet: -q, no failure details on stderr."""

    _serial = itertools.count()

    def __init__(self, binary, workdir, targets, concurrency=32, rate=4000, timeout_ms=3000, duration=120,
                 timeline_ms=0, slow_ms=None, cpus=None, quiet=True):
        # One until-file per load: a scenario may run several, one after the other.
        self.stopfile = os.path.join(workdir, f"stop-load-{next(Load._serial)}")
        self.duration, self.timeout_ms = duration, timeout_ms
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, "-j"] + (["-q"] if quiet else [])
            + ["-c", str(concurrency), "-r", str(rate), "-d", str(duration), "-t", str(timeout_ms),
               "--until-file", self.stopfile]
            + (["--timeline", str(timeline_ms)] if timeline_ms else [])
            + (["--slow-ms", str(slow_ms)] if timeline_ms and slow_ms is not None else []) + targets,
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, preexec_fn=pinned(cpus))

    def abort(self):
        """Ends a load that a failed step left running: asked first, killed after 10 s."""
        if self.proc.poll() is None:
            open(self.stopfile, "w").close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self):
        """Asks the client to stop; its JSON result."""
        open(self.stopfile, "w").close()
        return self._result(30)

    def wait(self):
        """The result once the client has stopped by itself: its duration, then at most a
        timeout for the last requests."""
        return self._result(self.duration + self.timeout_ms / 1000 + 30)

    def _result(self, timeout):
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise Failure(f"loadclient still ran {timeout:.0f} s after it should have stopped")
        check(out.strip().startswith("{"), f"loadclient printed no JSON: {out!r}")
        return json.loads(out)


def failed_of(result):
    """Every connection of a load client's result that did not get its response."""
    return result["refused"] + result["reset"] + result["timeout"] + result["other"]
