"""Running a program as nobody from wherever the tree was cloned. A clone under a home
directory of mode 0700 holds binaries that nobody cannot reach (exec fails with EACCES),
so a program an unprivileged process must exec is copied into a directory of its own,
mode 0755, in the test's temporary directory."""

import os
import shutil
import stat

from . import Skip


def blocked_ancestor(path):
    """The first directory on the way to `path` (itself included) that other users cannot
    enter (no search permission for others), or None."""
    path = os.path.abspath(path)
    parts = path.split(os.sep)
    for i in range(1, len(parts)):
        d = os.sep.join(parts[:i + 1]) or os.sep
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return d
    return None


def copy_for_others(binary, workdir):
    """Copies `binary` into WORKDIR/exec-as-nobody/ (mode 0755, as is the copy) and returns
    the copy's path; Skip when other users cannot reach WORKDIR itself (a private TMPDIR)."""
    bindir = os.path.join(workdir, "exec-as-nobody")
    os.makedirs(bindir, exist_ok=True)
    os.chmod(bindir, 0o755)
    blocked = blocked_ancestor(bindir)
    if blocked:
        raise Skip(f"{blocked} is closed to other users, so nobody could not exec a program under it: "
                   "set TMPDIR to a directory others may enter")
    copy = os.path.join(bindir, os.path.basename(binary))
    shutil.copy2(binary, copy)
    os.chmod(copy, 0o755)
    return copy
