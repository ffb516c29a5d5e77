"""What /proc and ss(8) say about processes and their TCP sockets, in this network
namespace. Processes come and go while they are read: a process that is gone reads as
holding nothing (no exception)."""

import os
import re
import shutil
import signal
import socket
import subprocess

from .wait import wait_for

# Under load the TCP tables hold thousands of TIME_WAIT sockets: /proc/net/tcp lists them
# all (up to 0.3 s a read at 4,000 connections per second); ss asks the kernel (sock_diag)
# with a filter. /proc is the fallback without ss.
SS = shutil.which("ss")


# --- TCP tables ----------------------------------------------------------------------------

def ss_rows(args):
    """(state, local address, receive queue, inode) of each TCP socket `ss -tn` lists (the
    state is left empty: filter with ss's own state arguments)."""
    out = subprocess.run([SS, "-Htne"] + args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         check=True).stdout
    rows = []
    for line in out.splitlines():
        fields = line.split()
        if fields and not fields[0].isdigit():  # a State column (absent with one state filter)
            fields = fields[1:]
        m = re.search(r"\bino:(\d+)", line)
        rows.append(("", fields[2], int(fields[0]), m.group(1) if m else "0"))
    return rows


def proc_net_tcp_rows():
    """(state in hex, local address, receive queue, inode) of each line of /proc/net/tcp{,6}."""
    rows = []
    for path, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    addr, port = fields[1].rsplit(":", 1)
                    # the address is printed as 32-bit words in host (little-endian) order
                    raw = b"".join(bytes.fromhex(addr[i:i + 8])[::-1] for i in range(0, len(addr), 8))
                    host = socket.inet_ntop(family, raw)
                    local = (f"[{host}]" if family == socket.AF_INET6 else host) + f":{int(port, 16)}"
                    rows.append((fields[3], local, int(fields[4].split(":")[1], 16), fields[9]))
        except FileNotFoundError:
            pass
    return rows


def listeners():
    """{inode: (local address, accept queue length)} for every listening TCP socket;
    addresses spelled as listen specs: "127.0.0.1:8080", "[::1]:8080" (for a listener, the
    receive queue is its accept queue's length)."""
    if SS:
        return {ino: (local, queue) for _, local, queue, ino in ss_rows(["state", "listening"])}
    return {ino: (local, queue) for state, local, queue, ino in proc_net_tcp_rows() if state == "0A"}


def listening_addresses():
    """{inode: "127.0.0.1:8080" or "[::1]:8080"} for every listening TCP socket."""
    return {ino: local for ino, (local, _) in listeners().items()}


def accept_queues():
    """{inode: connections waiting in its accept queue} for every listening TCP socket."""
    return {ino: queue for ino, (_, queue) in listeners().items()}


def connection_inodes(ports, established_only=False):
    """Inodes of the TCP sockets, listeners aside, whose local port is one of `ports`
    (ESTABLISHED ones only with established_only): connections a server accepted. Those
    still in a listen queue have no inode yet, nor have TIME_WAIT sockets."""
    if SS:
        filt = " or ".join(f"sport = :{p}" for p in sorted(ports))
        states = ["state", "established"] if established_only else ["state", "connected", "exclude", "time-wait"]
        return {ino for _, _, _, ino in ss_rows(states + [f"( {filt} )"]) if ino != "0"}
    return {ino for state, local, _, ino in proc_net_tcp_rows()
            if (state == "01" if established_only else state != "0A")
            and int(local.rsplit(":", 1)[1]) in ports and ino != "0"}


# --- one process ---------------------------------------------------------------------------

def fds_of(pid):
    try:
        return os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, ProcessLookupError):
        return []


def socket_inodes_of(pid):
    """{inode: fd} for each socket the process holds ({} when it is gone)."""
    inodes = {}
    for fd in fds_of(pid):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            inodes[m.group(1)] = int(fd)
    return inodes


def listen_sockets_of(pid, listening=None):
    """The listen sockets (inodes) a process holds; `listening`: a listeners() snapshot."""
    listening = listeners() if listening is None else listening
    return [ino for ino in socket_inodes_of(pid) if ino in listening]


def accepted_connections(pid, ports, established_only=False):
    """How many connections to one of `ports` (a port or several) the process holds open:
    what it accepted and has not closed yet (ESTABLISHED, or also those the client closed
    first, CLOSE_WAIT; only ESTABLISHED ones with established_only)."""
    ports = {ports} if isinstance(ports, int) else set(ports)
    return len(set(socket_inodes_of(pid)) & connection_inodes(ports, established_only))


def polled_listen_sockets(pid):
    """Inodes of the listen sockets the process has registered in its epoll instance(s)
    (/proc/PID/fdinfo of an eventpoll fd lists each target fd as "tfd: N")."""
    listening = listeners()
    by_fd = {fd: ino for ino, fd in socket_inodes_of(pid).items()}
    polled = set()
    for fd in fds_of(pid):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    m = re.match(r"tfd:\s*(\d+)", line)
                    if m and by_fd.get(int(m.group(1))) in listening:
                        polled.add(by_fd[int(m.group(1))])
        except OSError:
            continue
    return polled


def uid_of(pid):
    """The effective uid, -1 when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[2])
    except OSError:
        pass
    return -1


def state_of(pid):
    """The process's state letter (R, S, T stopped, t traced, Z...), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # gone before, or while, reading
        return None


def alive(pid):
    """Running (not a zombie)."""
    return state_of(pid) not in (None, "Z", "X")


def title(pid):
    """The process title (nginx rewrites argv: "nginx: worker process"), "" when gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def parent_of(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def children_of(pid, with_zombies=False):
    """Children of a process (live ones only, unless with_zombies), sorted."""
    kids = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids.update(int(k) for k in f.read().split())
        except FileNotFoundError:
            # No CONFIG_PROC_CHILDREN: scan every process's parent.
            kids = {p for p in (int(d) for d in os.listdir("/proc") if d.isdigit()) if parent_of(p) == pid}
            break
    return sorted(k for k in kids if with_zombies or alive(k))


def descendants_of(pid):
    out, todo = [], [pid]
    while todo:
        for kid in children_of(todo.pop()):
            out.append(kid)
            todo.append(kid)
    return out


def stop_process(send, pid):
    """SIGSTOP (through `send(pid, sig)`, a server's signal method) and wait until the
    process is stopped (or gone): from then on it accepts and closes nothing."""
    send(pid, signal.SIGSTOP)
    wait_for(lambda: state_of(pid) in ("T", "t", None), 5, f"process {pid} to stop")
