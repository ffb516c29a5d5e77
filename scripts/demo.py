#!/usr/bin/env python3
"""The demo: the example server (rpserver) with 4 workers on a loopback port, under
continuous load from the load client, through a reload, a worker-count change, a binary
upgrade and a revert; prints a timeline and the final tally, then stops everything.

As root it runs in a private network namespace with net.ipv4.tcp_migrate_req=1 (the
namespace's own copy; the machine's is untouched). Otherwise it uses the machine's
loopback and says what the sysctl is.

Usage: PYTHONPATH=tools python3 scripts/demo.py SERVER LOADCLIENT   (scripts/demo.sh)
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from prefork.load import Load, failed_of
from prefork.procfs import listen_sockets_of
from prefork.reaping import become_subreaper
from prefork.rpserver import RpServer
from prefork.wait import wait_for

PORT = 8080

T0 = time.monotonic()


def say(what):
    print(f"  {time.monotonic() - T0:6.2f}s  {what}", flush=True)


def holdings(srv, master):
    workers = srv.workers_of(master)
    held = [len(listen_sockets_of(pid)) for pid in workers]
    return (f"master {master} holds {len(listen_sockets_of(master))} listen sockets; "
            f"{len(workers)} workers hold {'/'.join(map(str, held)) or '-'}")


def in_private_namespace():
    """Re-runs this script in a new network namespace when root can make one."""
    if os.environ.get("RP_DEMO_NETNS") or os.getuid() != 0:
        return False
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        return False
    env = dict(os.environ, RP_DEMO_NETNS="1")
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "demo", sys.executable] + sys.argv
    os.execvpe("unshare", cmd, env)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    server, client = sys.argv[1], sys.argv[2]
    in_private_namespace()
    sysctl = "/proc/sys/net/ipv4/tcp_migrate_req"
    if os.environ.get("RP_DEMO_NETNS"):
        with open(sysctl, "w") as f:
            f.write("1")
        where = "a private network namespace"
        port = PORT
    else:
        where = "this machine's loopback (run as root for a private namespace)"
        port = free_port()
    migrate = open(sysctl).read().strip() if os.path.exists(sysctl) else "missing"
    print(f"reuseport demo: rpserver under load in {where}, net.ipv4.tcp_migrate_req={migrate}")
    if migrate != "1":
        print("  (with migration off, a closing listener resets the connections queued on it:"
              " expect a few resets below)")

    # The new master of the binary upgrade outlives the old one: as a subreaper this
    # process inherits it, and stops it at the end with the rest.
    become_subreaper()
    workdir = tempfile.mkdtemp(prefix="rp-demo-")
    srv = RpServer(server, workdir)
    if os.getuid() == 0:
        srv.user = "nobody"  # workers drop privileges, as in production
    srv.configure(4, [f"127.0.0.1:{port}"])
    load = None
    try:
        srv.start()
        master = srv.master()
        say(f"started: master {master}, 4 workers, 127.0.0.1:{port}")
        say(holdings(srv, master))
        load = Load(client, workdir, [f"127.0.0.1:{port}"], concurrency=32, rate=3000)
        say("load client started: 3000 new connections/s, 32 at most in flight")
        time.sleep(1)

        srv.reload(master)
        say(f"reload (HUP): generation {srv.generation(master)} took over; the old workers finished and left")
        say(holdings(srv, master))
        time.sleep(1)

        srv.configure(2, srv.listens)
        srv.reload(master, 2, command=True)
        say(f"worker count 4 -> 2 (rpserver -s reload): generation {srv.generation(master)}")
        say(holdings(srv, master))
        time.sleep(1)

        _, new = srv.start_upgrade()
        say(f"binary upgrade (USR2): new master {new} opened its own sockets and runs 2 workers;"
            f" old master {master} is in rpserver.pid.oldbin")
        srv.signal(master, signal.SIGWINCH)
        srv.wait_settled(master, 0)
        say(f"WINCH to the old master: its workers finished and left; master {new} serves alone")
        say(holdings(srv, new))
        time.sleep(1)

        srv.reload(master)
        say(f"revert (HUP to the old master): it opened its sockets again and started generation"
            f" {srv.generation(master)}")
        srv.signal(new, signal.SIGQUIT)
        srv.wait_exit(new)
        wait_for(lambda: srv.master() == master, 5, "the old master to take its pid file back")
        say(f"QUIT to the new master: it left; master {master} is back in rpserver.pid")
        say(holdings(srv, master))
        time.sleep(1)

        r = load.stop()
        load = None
        say("load client stopped")
        failed = failed_of(r)
        print()
        print(f"tally: {r['requests']} requests, {r['ok']} ok, {failed} failed "
              f"(refused {r['refused']}, reset {r['reset']}, timeout {r['timeout']}, other {r['other']}); "
              f"served by {len(r['workers'])} worker processes")
        srv.signal(master, signal.SIGQUIT)
        srv.wait_exit(master)
        say("QUIT: the server shut down gracefully")
        return 0 if failed == 0 or migrate != "1" else 1
    finally:
        if load is not None:
            load.abort()
        srv.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
