"""The kernel's BPF objects of this library, machine-wide (BPF objects belong to no
network namespace): its reuseport programs (`reuseport_mig`, `reuseport_steer`) and maps
(`reuseport_slots`, `reuseport_socks`), listed by bpftool. The soak snapshots them before
it starts and after every server stopped: what the soak created must be gone.

Other programs on the machine may create the same objects meanwhile (another test run):
an object created during the soak that a live process still holds by fd is someone
else's (every process of the soak is gone by then) and is reported, not judged. One held
by nothing lives only through a socket it is attached to, and the soak's sockets died
with its namespace's last process: that is a leak."""

import json
import os
import re
import shutil
import subprocess
import time

from prefork.wait import Failure

PROGRAMS = {"reuseport_mig", "reuseport_steer"}
MAPS = {"reuseport_slots", "reuseport_socks"}


def _bpftool(kind):
    if not shutil.which("bpftool"):
        raise Failure("bpftool not found: scripts/install-deps.sh installs it (apt-get install bpftool)")
    out = subprocess.run(["bpftool", "-j", kind, "show"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise Failure(f"bpftool {kind} show failed: {out.stderr.strip()}")
    return json.loads(out.stdout or "[]")


def snapshot():
    """{"progs": {id: name}, "maps": {id: name}} of the library's objects now."""
    return {"progs": {p["id"]: p.get("name", "") for p in _bpftool("prog") if p.get("name") in PROGRAMS},
            "maps": {m["id"]: m.get("name", "") for m in _bpftool("map") if m.get("name") in MAPS}}


def describe(s):
    return f"{len(s['progs'])} reuseport programs, {len(s['maps'])} maps"


def held_by_fd():
    """{("prog"|"map", id)} held through an fd by any live process (fdinfo's prog_id and
    map_id lines)."""
    held = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fdinfo")
        except OSError:
            continue
        for fd in fds:
            try:
                with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                    text = f.read()
            except OSError:
                continue
            for kind, num in re.findall(r"^(prog|map)_id:\s*(\d+)", text, re.M):
                held.add((kind, int(num)))
    return held


def new_objects(before, after):
    return ([("prog", i) for i in after["progs"] if i not in before["progs"]]
            + [("map", i) for i in after["maps"] if i not in before["maps"]])


def settled_after(before, timeout=10):
    """A snapshot once the objects created since `before` are gone, or after `timeout`
    seconds (the kernel frees them from an RCU callback, an instant after the last close)."""
    deadline = time.monotonic() + timeout
    while True:
        after = snapshot()
        if not new_objects(before, after) or time.monotonic() > deadline:
            return after
        time.sleep(0.2)


def leftovers(before, after):
    """Problems: objects created since `before`, still there, held by no process."""
    new = new_objects(before, after)
    if not new:
        return []
    held = held_by_fd()
    others = [o for o in new if o in held]
    if others:
        print(f"soak: kernel: {len(others)} objects created meanwhile are held by other processes "
              f"(another user of the library): {others}", flush=True)
    leaked = [o for o in new if o not in held]
    return [f"BPF objects left in the kernel after the soak, held by no process: {leaked}"] if leaked else []
