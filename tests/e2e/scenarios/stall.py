"""One worker stopped (SIGSTOP) for 4 s under a load at saturation (e2e/stall.py): with the
library's health-aware steering, nothing may fail but what it had accepted, and (stall2,
stall4, stall_after_revert) the others keep 90% of the throughput and every worker gets
its share again after SIGCONT. Their figures go into the results line either way."""

import re
import signal
import time

from prefork import procfs
from prefork.wait import check, wait_for

from ..stall import SERVER_CPUS, stall_under_load
from . import scenario
from .lifecycle import pid_file_names, wait_reverted

PORT = 8080


def stall_scenario(srv, ctx, workers, during=None, after=None, even=True, plain=False, before=None,
                   health_threshold_ms=None):
    """`workers` workers on 127.0.0.1:8080, the last one (not the first, which adopted the
    master's sockets) stopped; before() runs first, during(master, first) while it is
    stopped, after(master, first, victim) once it is continued. With even, the ok rate
    during the stall is compared with the steady one, and a separate load after SIGCONT
    must reach every worker of the master then running (the pid file's) evenly. The
    checks go to ctx.checks, judged once the figures are recorded. plain: nginx's
    `listen` without reuseport (one socket for all workers). health_threshold_ms: the
    library's threshold (its default when None)."""
    addr = f"127.0.0.1:{PORT}"
    if plain:
        srv.configure(workers, [], servers=[[addr]])
    else:
        srv.configure(workers, [addr], health_threshold_ms=health_threshold_ms)
    first = srv.start(cpus=SERVER_CPUS)  # the load client runs on the other CPU (STALL_LOAD)
    if before:
        before()
    master = srv.master()
    victim = first[-1]
    ctx.result, ctx.figures, checks = stall_under_load(
        lambda **kw: ctx.load([addr], **kw), srv.signal, victim, srv.ports,
        during=during and (lambda: during(master, first)), after=after and (lambda: after(master, first, victim)),
        workers=(lambda: srv.workers_of(srv.master())) if even else None)
    ctx.checks += checks
    return srv.master()


@scenario()
def stall2(srv, ctx):
    """Two workers, one address: the second worker is stopped for 4 s, then continued; a
    separate load after that tells how evenly the workers share it."""
    return stall_scenario(srv, ctx, 2)


@scenario()
def stall4(srv, ctx):
    """stall2 with four workers."""
    return stall_scenario(srv, ctx, 4)


@scenario(servers=["nginx"])
def stall2_plain(srv, ctx):
    """stall2 with `listen 127.0.0.1:8080` without reuseport: one socket, inherited by
    both workers, that the one running keeps accepting from."""
    return stall_scenario(srv, ctx, 2, plain=True)


@scenario()
def stall_reload(srv, ctx):
    """Two workers, one stopped; HUP to the master while it is stopped: the new workers
    start, the stopped one exits once continued (4 s after its stop: it got QUIT)."""
    def during(master, first):
        srv.signal(master, signal.SIGHUP)
        wait_for(lambda: len(set(srv.workers_of(master)) - set(first)) == 2, 20, f"master {master}'s 2 new workers")

    def after(master, first, victim):
        srv.wait_exit(victim)
        srv.wait_settled(master, 2, old=first)

    return stall_scenario(srv, ctx, 2, during=during, after=after, even=False)


@scenario()
def stall_upgrade(srv, ctx):
    """Two workers, one stopped; binary upgrade while it is stopped: USR2, then QUIT to
    the old master, which exits once the stopped worker (continued 4 s after its stop)
    has. The threshold (300 ms) puts the verdict after the QUIT (about 50 ms after the
    stop here), when the stopped worker is the last of the old master's slots and only the
    new generation's workers share its group: the old master must still judge it and move
    its queue to them (with the 50 ms default that order came about one run in twenty,
    and the clients of its queue timed out)."""
    masters = {}

    def during(master, first):
        old, new = srv.start_upgrade()
        if srv.strict:
            check(procfs.listen_sockets_of(new) == [], f"the new master {new} holds listen sockets")
        srv.signal(old, signal.SIGQUIT)
        masters["new"] = new

    def after(master, first, victim):
        srv.wait_exit(master)
        pid_file_names(srv, masters["new"])
        order = verdict_order(srv.log_lines(), first[0], victim)
        if order:
            ctx.note(order)

    return stall_scenario(srv, ctx, 2, during=during, after=after, even=False, health_threshold_ms=300)


def verdict_order(lines, running, victim):
    """Whether the stopped worker's verdict came after the running one's retire (its
    `retire: closing` at debug level, or its `retired:` line at info), as the
    scenario means it to (the rule it tests judges the last worker of the old master's
    table), from the order of the lines in the log every process appends to. None without
    a verdict (a server without the library's steering); otherwise a sentence for the
    run's output."""
    def first_line(match):
        return next((k for k, line in enumerate(lines) if match(line)), None)

    verdict = first_line(lambda line: f"worker {victim} " in line and "is not accepting" in line)
    if verdict is None:
        return None
    retire = first_line(lambda line: re.search(rf"\b{running}(#\d+)?: reuseport: .*(retire: closing|retired: )", line))
    if retire is not None and retire < verdict:
        return (f"the stopped worker {victim} was judged after the running worker {running} began to retire "
                "or retired: the last worker of the old master's table, as this scenario means")
    return (f"NOT EXERCISED: the stopped worker {victim} was judged before the running worker {running} "
            "retired (or its retire was not logged): this run did not test the last-worker rule")


@scenario()
def stall_after_revert(srv, ctx):
    """An upgrade reverted by TERM to the new master (no load yet), then stall2 on the old
    master's workers. With the library, the new master's steering program stayed in the
    group when it exited, and the old master takes the steering back
    (reuseport_master_reclaim()), so the stopped worker is steered around as before."""
    def before():
        old, new = srv.start_upgrade()
        time.sleep(0.3)
        srv.signal(new, signal.SIGTERM)
        wait_reverted(srv, old, new)
        time.sleep(0.3)

    return stall_scenario(srv, ctx, 2, before=before)
