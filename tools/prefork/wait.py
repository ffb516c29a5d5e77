"""How a step that cannot go on says so: Failure, raised by check() and by wait_for() when
what it waits for does not come."""

import time


class Failure(Exception):
    """A step did not get what it needed; the message says what."""


def check(cond, what):
    if not cond:
        raise Failure(what)


def wait_for(pred, timeout, what):
    """pred()'s first true value, polled every 20 ms; Failure after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise Failure(f"timed out after {timeout}s waiting for {what}")
