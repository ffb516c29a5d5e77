"""What a worker's bind() of its own SO_REUSEPORT socket costs on a busy port: every
worker of a reload's new generation binds one socket per address (stock nginx reuses the
old sockets), and the kernel may walk every socket bound to the port, TIME_WAIT ones
included, under the port's bind-hash lock, which the connections' accepts and closes on
that port take too.

In a private network namespace (root, tests/c/in-netns.sh): one listener per address
family asked for on a loopback port of its own per row (8081 up), N connections closed by the server first (each leaves a TIME_WAIT socket
on the server's side, as HTTP/1.0 or `Connection: close` does), then 30 sockets per family
bound and listening; the median bind() and listen() times.

Then a generation's binds: 100 workers in a row, each binding one IPv4 and one IPv6
socket, in the configured order (IPv4, IPv6), in bind_order's (on each port the address
bound last first, set/bind_order.rs), or as the library does, bind_order's after a
wildcard key (set/bind_key.rs: a [::] socket without IPV6_V6ONLY bound and closed first),
on a port with the TIME_WAIT sockets: what each worker's binds cost (the key's included),
and how many took the slow path."""

import os
import socket
import subprocess
import sys
import time

from .runs import IN_NETNS, require_root

BASE_PORT = 8080
ADDR = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}
BINDS = 30


def add_arguments(p):
    p.add_argument("--time-wait", default="0,5000,20000",
                   help="comma-separated TIME_WAIT counts to measure at (default 0,5000,20000)")
    p.add_argument("--inside", action="store_true", help="(internal: already in the namespace)")


def reuseport_socket(family):
    s = socket.socket(family)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return s


def listener(family, port):
    s = reuseport_socket(family)
    s.bind((ADDR[family], port))
    s.listen(4096)
    return s


def time_wait_on(port):
    """TIME_WAIT sockets on the server's side of `port` (state 06 in /proc/net/tcp*)."""
    n = 0
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                n += fields[3] == "06" and int(fields[1].rsplit(":", 1)[1], 16) == port
    return n


def leave_time_wait(v4, port, n):
    """n connections to `port` accepted on `v4` and closed by the server first: each
    leaves a TIME_WAIT socket on the server's side."""
    for _ in range(n):
        c = socket.create_connection(("127.0.0.1", port))
        a, _ = v4.accept()
        a.close()
        c.close()


def measure(families, tw, port):
    """{family name: (median bind us, median listen us)} with `tw` TIME_WAIT sockets on
    `port`, after a listener of each of `families`; and how many TIME_WAIT sockets there were."""
    first = {fam: listener(fam, port) for fam in families}
    leave_time_wait(first[socket.AF_INET], port, tw)
    out, keep = {}, []
    for _ in range(BINDS):
        for fam in families:
            s = reuseport_socket(fam)
            t0 = time.perf_counter()
            s.bind((ADDR[fam], port))
            t1 = time.perf_counter()
            s.listen(128)
            t2 = time.perf_counter()
            keep.append(s)
            out.setdefault(fam.name, []).append(((t1 - t0) * 1e6, (t2 - t1) * 1e6))
    tw_seen = time_wait_on(port)
    for s in keep + list(first.values()):
        s.close()
    med = {k: (sorted(b for b, _ in v)[len(v) // 2], sorted(l for _, l in v)[len(v) // 2]) for k, v in out.items()}
    return med, tw_seen


WORKERS = 100
# A bind on the fast path takes a few microseconds here, a walk of thousands of sockets
# hundreds: anything above this counts as a walk.
SLOW_US = 50


# How a generation's workers bind: (their order follows bind_order's rule, a key first).
MODES = {"IPv4, IPv6 (configured)": (False, False), "last bound first": (True, False),
         "wildcard key, then last bound first (the library)": (True, True)}


def key_bind(port):
    """bind_key.rs's key: [::]:port without IPV6_V6ONLY, SO_REUSEPORT, bound and closed."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.close()


def generation(tw, port, library_order, key):
    """WORKERS workers, each binding IPv4 and IPv6 on `port` (with `tw` IPv4 TIME_WAIT
    sockets), after a key if `key`: (median, max and total us of a worker's binds, binds
    over SLOW_US)."""
    first = {fam: listener(fam, port) for fam in (socket.AF_INET, socket.AF_INET6)}
    leave_time_wait(first[socket.AF_INET], port, tw)
    last = [socket.AF_INET, socket.AF_INET6]  # the listeners' binds, IPv6 last
    per_worker, slow, keep = [], 0, []
    for _ in range(WORKERS):
        # The library's rule: the family bound last goes first (what the tables record).
        order = [last[-1], last[0]] if library_order else [socket.AF_INET, socket.AF_INET6]
        took = 0.0
        if key:
            t0 = time.perf_counter()
            key_bind(port)
            us = (time.perf_counter() - t0) * 1e6
            took += us
            slow += us > SLOW_US
        for fam in order:
            s = reuseport_socket(fam)
            t0 = time.perf_counter()
            s.bind((ADDR[fam], port))
            us = (time.perf_counter() - t0) * 1e6
            s.listen(128)
            keep.append(s)
            took += us
            slow += us > SLOW_US
        last = order
        per_worker.append(took)
    seen = time_wait_on(port)
    for s in keep + list(first.values()):
        s.close()
    per_worker.sort()
    return per_worker[len(per_worker) // 2], per_worker[-1], sum(per_worker), slow, seen


def inside(args):
    counts = [int(x) for x in args.time_wait.split(",") if x]
    rows, port = [], BASE_PORT
    for both in (False, True):
        families = (socket.AF_INET, socket.AF_INET6) if both else (socket.AF_INET,)
        for tw in counts:
            # A port of its own per row: the TIME_WAIT sockets of the last one stay behind.
            port += 1
            med, seen = measure(families, tw, port)
            v6 = med.get("AF_INET6")
            rows.append((("IPv4 and IPv6" if both else "IPv4 only"), seen, med["AF_INET"], v6))
            print(f"  {rows[-1][0]}, {seen} TIME_WAIT: done", file=sys.stderr, flush=True)
    print(f"{time.strftime('%Y-%m-%d')}, Linux {os.uname().release}; median of {BINDS} sockets per family; "
          "the TIME_WAIT sockets are IPv4, on the server's side of the port "
          "(those of each row's port; every row has a port of its own).\n")
    print("| listeners on the port | TIME_WAIT | IPv4 bind us | IPv4 listen us | IPv6 bind us | IPv6 listen us |")
    print("|---|---|---|---|---|---|")
    for what, seen, (b4, l4), v6 in rows:
        b6, l6 = (f"{v6[0]:.1f}", f"{v6[1]:.1f}") if v6 else ("-", "-")
        print(f"| {what} | {seen} | {b4:.1f} | {l4:.1f} | {b6} | {l6} |")
    print(f"\n{WORKERS} workers in a row, each binding one IPv4 and one IPv6 socket on a port "
          f"with IPv4 TIME_WAIT sockets; a bind over {SLOW_US} us counts as slow.\n")
    print("| TIME_WAIT | order | worker's binds: median us | max us | all workers ms | slow binds |")
    print("|---|---|---|---|---|---|")
    for tw in counts:
        if tw == 0:
            continue
        for what, (library_order, key) in MODES.items():
            port += 1
            med, top, total, slow, seen = generation(tw, port, library_order, key)
            binds = (3 if key else 2) * WORKERS
            print(f"| {seen} | {what} | {med:.1f} | {top:.1f} | {total / 1000:.1f} | {slow} of {binds} |")
            print(f"  generation, {seen} TIME_WAIT, {what}: done", file=sys.stderr, flush=True)
    return 0


def main(args):
    if args.inside:
        return inside(args)
    require_root()
    # Its own namespace: the TIME_WAIT sockets and the ports are nobody else's.
    return subprocess.call([IN_NETNS, sys.executable, "-m", "e2e.bench", "bind", "--inside",
                            "--time-wait", args.time_wait])
