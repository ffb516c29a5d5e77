"""How a running nginx starts (and stops) using the library without a restart:

- in place, by a binary upgrade (USR2, WINCH and QUIT to the old master) from a stock
  binary to a patched one or back, of the same version or another (the runner's
  --to-prefix names the build adopted), and the two reverts of such an upgrade;
- by a reload that adds `reuseport` to the listens of a running server, and one that
  removes it again, as stock nginx allows.

After each, the layout of the build then serving is checked (the library's: the master
holds no listen socket, each worker one per address), so sockets inherited from the other
build may not linger in any process."""

import time

from .. import Skip
from . import scenario
from .lifecycle import BOTH, pid_file_names, revert_by_hup, upgrade_done, wait_reverted


def adoption_started(srv, ctx):
    """Load, the binary replaced, USR2: (load, old, new) once the new master runs its
    workers."""
    if srv.to_build is None:
        raise Skip("needs the build to adopt (--to-prefix)")
    srv.configure(2, BOTH)
    srv.start()
    load = ctx.load()
    time.sleep(0.5)
    srv.swap_binary()
    old, new = srv.start_upgrade()
    ctx.note(f"after USR2: old {srv.describe_sockets(old)}")
    ctx.note(f"after USR2: new {srv.describe_sockets(new)}")
    return load, old, new


@scenario(servers=["nginx"])
def adopt_upgrade(srv, ctx):
    """The upgrade to the other build: USR2, WINCH and QUIT to the old master."""
    load, old, new = adoption_started(srv, ctx)
    upgrade_done(srv, old, new)
    time.sleep(0.5)
    ctx.result = load.stop()
    pid_file_names(srv, new)
    return new


@scenario(servers=["nginx"])
def adopt_revert_hup(srv, ctx):
    """The upgrade to the other build, reverted: WINCH to the old master, then HUP to it
    (it starts workers again) and QUIT to the new one; the old binary is put back."""
    load, old, new = adoption_started(srv, ctx)
    revert_by_hup(srv, old, new, before_hup=srv.restore_binary)
    time.sleep(0.5)
    ctx.result = load.stop()
    pid_file_names(srv, old)
    return old


@scenario(servers=["nginx"])
def adopt_revert_term(srv, ctx):
    """The upgrade to the other build, reverted by TERM to the new master while the old
    workers still run (what the new workers had accepted is counted as lost)."""
    load, old, new = adoption_started(srv, ctx)
    time.sleep(0.5)
    srv.restore_binary()
    srv.fast_stop(new)
    wait_reverted(srv, old, new)
    time.sleep(0.5)
    ctx.result = load.stop()
    return old


def plain(addresses):
    return [[a for a in addresses]]


@scenario(servers=["nginx"])
def reuseport_toggle(srv, ctx):
    """Listens without `reuseport`, then a reload adds it, then a reload removes it, under
    load: each layout checked after its reload (without reuseport: one socket per
    address, shared by the master and every worker)."""
    srv.configure(2, [], servers=plain(BOTH))
    srv.start()
    master = srv.master()
    load = ctx.load(BOTH)
    time.sleep(0.5)
    srv.configure(2, BOTH)
    srv.reload(master)
    time.sleep(0.5)
    ctx.note("reuseport added by a reload:")
    srv.check_sockets(master)
    srv.configure(2, [], servers=plain(BOTH))
    srv.reload(master)
    time.sleep(0.5)
    ctx.result = load.stop()
    ctx.note("reuseport removed by a reload:")
    return master
