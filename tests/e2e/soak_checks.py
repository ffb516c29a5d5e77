"""What the soak measures and judges per server and window: the load's failures against
what killed and fast-stopped workers held (verdict.losses), and the resources of the
server's processes, sampled once it has settled, against the first window's."""

import os
import re
import signal
from dataclasses import dataclass

from prefork import procfs
from prefork.wait import Failure, check, wait_for

from . import verdict
from .soak_report import event_counts

# How far a figure may rise above the first window's before it counts as growth. A leak
# per event (the soak runs hundreds of reloads a minute) exceeds these within minutes.
FD_SLACK = 2  # an upgraded master holds the migration program it inherited across exec
RSS_SLACK_KIB = 4096
RSS_SLACK_RATIO = 0.25


@dataclass(frozen=True)
class Mark:
    kills: int
    lost: int
    slack: int


def deaths_mark(srv):
    """Where the server's death records stand, so a window judges only its own."""
    kills, lost, slack = srv.deaths()
    return Mark(len(kills), lost, slack)


def judge_losses(srv, result, mark):
    """The window's failures against its own deaths. The adapters count a dead worker's
    in-flight connections by pid, and pids are reused within a long soak (pid_max may be
    32768): a later SIGKILL of a reused pid can move an earlier exit's count from `lost`
    into its kill record, so the difference may come out negative; it is clamped at 0,
    which can only excuse less."""
    kills, lost, slack = srv.deaths()
    return verdict.losses(result, kills=kills[mark.kills:],
                          lost=max(0, lost - mark.lost) + max(0, slack - mark.slack))


def counts(result):
    return {"requests": result["requests"], "ok": result["ok"], "failed": verdict.failed_of(result),
            **{k: result[k] for k in ("refused", "reset", "timeout", "other")}}


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            m = re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else 0
    except OSError:
        return 0


def bpf_ids(pid):
    """{("prog"|"map", id)} the process holds by fd."""
    out = set()
    for fd in procfs.fds_of(pid):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                text = f.read()
        except OSError:
            continue
        out.update((k, int(n)) for k, n in re.findall(r"^(prog|map)_id:\s*(\d+)", text, re.M))
    return out


def server_processes(srv):
    """Every live process running the server's binary in this process's tree."""
    exe = os.path.realpath(srv.binary)
    out = []
    for pid in procfs.descendants_of(os.getpid()):
        try:
            if os.path.realpath(f"/proc/{pid}/exe") == exe:
                out.append(pid)
        except OSError:
            pass
    return out


def sample(srv, master):
    """The server's resources now (settled: one generation, no old worker left)."""
    workers = srv.workers_of(master)
    procs = server_processes(srv)
    listening = procfs.listeners()
    ports = srv.ports
    listen = sum(1 for local, _ in listening.values() if int(local.rsplit(":", 1)[1]) in ports)
    ids = set().union(*(bpf_ids(p) for p in procs)) if procs else set()
    return {
        "master": master,
        "master_fds": len(procfs.fds_of(master)),
        "master_rss_kib": rss_kib(master),
        "workers": len(workers),
        "worker_fds_max": max((len(procfs.fds_of(w)) for w in workers), default=0),
        "worker_rss_kib_max": max((rss_kib(w) for w in workers), default=0),
        "processes": len(procs),
        "listen_sockets": listen,
        "addresses": len(srv.listens),
        "bpf_progs": sum(1 for k, _ in ids if k == "prog"),
        "bpf_maps": sum(1 for k, _ in ids if k == "map"),
    }


class History:
    """The windows of one server; add() returns what does not hold. Each window is
    compared with the first one that ran as many workers: an nginx master holds a channel
    per worker, and each nginx worker one per sibling."""

    def __init__(self, name):
        self.name, self.first = name, {}

    def add(self, r):
        problems = []

        def want(ok, what):
            if not ok:
                problems.append(what)

        want(r["processes"] == r["workers"] + 1,
             f"{r['processes']} processes of the server, expected the master and {r['workers']} workers")
        want(r["listen_sockets"] == r["workers"] * r["addresses"],
             f"{r['listen_sockets']} listen sockets on its ports, expected {r['workers']} workers x "
             f"{r['addresses']} addresses (the master holds none)")
        f = self.first.setdefault(r["workers"], r)
        if f is r:
            return problems
        for key in ("master_fds", "worker_fds_max"):
            want(r[key] <= f[key] + FD_SLACK, f"{key} grew from {f[key]} to {r[key]}")
        for key in ("master_rss_kib", "worker_rss_kib_max"):
            limit = f[key] + max(RSS_SLACK_KIB, f[key] * RSS_SLACK_RATIO)
            want(r[key] <= limit, f"{key} grew from {f[key]} to {r[key]} (limit {limit:.0f})")
        for key in ("bpf_progs", "bpf_maps"):
            want(r[key] <= f[key], f"the server's processes hold {r[key]} {key[4:]}, {f[key]} in the first window")
        return problems


def describe(r):
    events = " ".join(f"{k}={v}" for k, v in sorted(r["events"].items()))
    return (f"soak {r['server']} window {r['window']} (t={r['t_s']:.0f}s): {r['requests']} requests, "
            f"{r['failed']} failed ({r['unexcused']} unexcused; refused={r['refused']} reset={r['reset']} "
            f"timeout={r['timeout']} other={r['other']}); master {r['master']} fds={r['master_fds']} "
            f"rss={r['master_rss_kib']}KiB; {r['workers']} workers fds<={r['worker_fds_max']} "
            f"rss<={r['worker_rss_kib_max']}KiB; processes={r['processes']} listen={r['listen_sockets']} "
            f"bpf progs={r['bpf_progs']} maps={r['bpf_maps']}; events: {events}"
            + ("; PROBLEMS: " + "; ".join(r["problems"]) if r["problems"] else ""))


def graceful_stop(srv, timeout=20):
    """QUIT to the master: every process of the server must exit by itself (none left for
    a SIGKILL), and no listener may remain on its ports."""
    master = srv.master()
    check(master is not None, "no master in the pid file at the end")
    srv.signal(master, signal.SIGQUIT)
    try:
        wait_for(lambda: not server_processes(srv), timeout, "every process of the server to exit after QUIT")
    except Failure:
        raise Failure(f"processes left {timeout} s after QUIT: {server_processes(srv)}")
    left = [local for local, _ in procfs.listeners().values() if int(local.rsplit(":", 1)[1]) in srv.ports]
    check(not left, f"listeners left on its ports after the stop: {left}")


def summary(label, records):
    if not records:
        return f"soak {label}: no window completed"
    total = sum(r["requests"] for r in records)
    failed = sum(r["failed"] for r in records)
    events = event_counts(records)
    return (f"soak {label}: {len(records)} windows, {total} requests, {failed} failed "
            f"({sum(r['unexcused'] for r in records)} unexcused), events "
            + " ".join(f"{k}={v}" for k, v in sorted(events.items())))
