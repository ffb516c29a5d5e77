"""Privileges: a master running as nobody, workers of a root master serving a privileged
port as nobody."""

import os
import shutil
import time

from prefork.procfs import uid_of
from prefork.wait import check

from .. import Skip
from ..unprivileged import copy_for_others
from . import scenario
from .lifecycle import BOTH, upgrade_done

PORT = 8080


@scenario(servers=["rpserver"])
def unprivileged(srv, ctx):
    """A master running as nobody, handed the migration program by a root launcher across
    exec, reloads 3 times and upgrades (its new binary gets the program across exec too):
    zero failures with the sysctl at 0, but for the kernel's close-instant race.

    Without CAP_BPF the master cannot create the steering program's maps, so its groups run
    the plain migration program (it says so at start): queues and half-open requests
    migrate, but a leaving socket stays in the kernel's hash until its close, and a
    handshake completing on it in the microseconds of that close is reset, as with the
    sysctl strategy (docs/design.md, "Handing the program over"). Such resets, in flight
    at a logged close, are excused; any other failure is not."""
    check(ctx.args.launcher, "needs --launcher")
    if os.getuid() != 0:
        raise Skip("needs root: a root launcher loads the program a nobody master is handed")
    os.chmod(srv.dir, 0o777)  # the nobody master writes its pid file and log there
    # nobody execs the server (and again on upgrade, the same path): a copy it can reach,
    # removed with the test (the copy only; the directory keeps the logs when it fails).
    srv.binary = copy_for_others(srv.binary, srv.dir)
    ctx.cleanups.append(lambda: shutil.rmtree(os.path.dirname(srv.binary), ignore_errors=True))
    srv.user = None  # the master is nobody already
    srv.configure(2, BOTH)
    srv.start(prefix=[ctx.args.launcher, "RPSERVER_REUSEPORT_PROGRAM_FD", "nobody"])
    master = srv.master()
    check(uid_of(master) == 65534, f"the master runs as uid {uid_of(master)}")
    if srv.strategy == "bpf":
        check(any("no health-aware steering" in line for line in srv.log_lines()),
              "the nobody master did not log that it runs without steering: if it steers now, "
              "the close-race excuse below no longer applies")
        srv.close_race_possible = True
    load = ctx.load(BOTH)
    time.sleep(0.5)
    for _ in range(3):
        srv.reload(master)
        time.sleep(0.3)
    old, new = srv.start_upgrade()
    check(uid_of(new) == 65534, f"the new master runs as uid {uid_of(new)}")
    upgrade_done(srv, old, new)
    time.sleep(0.3)
    ctx.result = load.stop()
    return new


@scenario(servers=["nginx"])
def user_nobody_port80(srv, ctx):
    """Port 80 (privileged) with `user nobody`, the master root: workers serve as uid
    65534, before and after a reload."""
    check(os.getuid() == 0, "needs root (run through tests/c/in-netns.sh)")
    srv.configure(2, ["127.0.0.1:80"])
    srv.start()
    master = srv.master()
    load = ctx.load(["127.0.0.1:80"])
    time.sleep(1)
    ctx.check_sockets(master)
    srv.reload(master)
    time.sleep(1)
    ctx.result = load.stop()
    for pid in srv.workers_of(master):
        check(uid_of(pid) == 65534, f"worker {pid} runs as uid {uid_of(pid)}")
    check(len(ctx.result["workers"]) >= 2, f"workers served: {ctx.result['workers']}")
    return master
