"""Keeping a daemonizing server's processes in this process's tree: as a child subreaper,
this process inherits the masters that would otherwise be orphaned (nginx daemonizes; a
binary upgrade's new master outlives the old one), so it can find every one of them at
the end, stop them by pid and collect their exit status."""

import ctypes
import os
import signal
import time

from .procfs import alive, descendants_of

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _zombie_children(comm):
    kids = set()
    try:
        tasks = os.listdir(f"/proc/{os.getpid()}/task")
    except OSError:
        return kids
    for tid in tasks:
        try:
            with open(f"/proc/{os.getpid()}/task/{tid}/children") as f:
                kids.update(int(k) for k in f.read().split())
        except OSError:
            pass
    out = set()
    for pid in kids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name, rest = stat.split("(", 1)[1].rsplit(")", 1)
        if name == comm and rest.split()[0] == "Z":
            out.add(pid)
    return out


def reap(comm):
    """Collects the exit status of this process's dead children named `comm` (the
    inherited masters), so that they do not linger as zombies. Other children (a load
    client, a Popen'd master) are left to their Popen."""
    for pid in _zombie_children(comm[:15]):
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def stop_all(masters, binary, comm, timeout=10):
    """TERM to each of `masters`, up to `timeout` seconds for them to exit, then SIGKILL to
    whatever of `binary` still runs among this process's descendants (by pid), and reap."""
    for m in masters:
        try:
            os.kill(m, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(m) for m in masters):
        time.sleep(0.05)
        reap(comm)
    exe = os.path.realpath(binary)
    for pid in descendants_of(os.getpid()):
        try:
            if os.path.realpath(f"/proc/{pid}/exe") == exe:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.1)
    reap(comm)
