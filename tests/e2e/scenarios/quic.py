"""QUIC (HTTP/3) listeners next to the library's TCP listeners, nginx >= 1.25:
`listen ... quic reuseport` stays nginx's own (one UDP socket per worker, opened by the
master), the TCP reuseport listeners are the library's. An HTTP/3 client (aioquic, in a
venv scripts/install-h3-client.sh makes) must get its answers before and after a reload,
while the TCP listeners keep their layout and lose nothing under load."""

import json
import os
import subprocess
import time

from prefork.wait import check

from .. import Skip
from . import scenario
from .lifecycle import BOTH

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
QUIC_PORT = 8443
REQUESTS = 20


def h3_client():
    """The venv's python (made on first use), or Skip when it cannot be made (exit 77 of
    the script: no venv module and not root; a failure when CI is set)."""
    p = subprocess.run([os.path.join(ROOT, "scripts", "install-h3-client.sh")], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=600)
    if p.returncode == 77:
        raise Skip(f"no HTTP/3 client: {p.stderr.strip()}")
    check(p.returncode == 0, f"scripts/install-h3-client.sh failed: {p.stderr.strip()}")
    return p.stdout.strip().splitlines()[-1]


def self_signed(directory):
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-subj", "/CN=localhost", "-days", "2", "-keyout", key, "-out", cert],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    return cert, key


def h3_gets(python, ctx, when):
    """REQUESTS HTTP/3 GETs, each its own QUIC connection; all must answer 200. Returns
    the worker pids that answered."""
    p = subprocess.run([python, os.path.join(ROOT, "tools", "h3", "h3get.py"), "127.0.0.1", str(QUIC_PORT),
                        str(REQUESTS)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
    check(p.returncode == 0, f"h3get.py failed: {p.stderr.strip()[-500:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    pids = sorted({int(b.split()[1]) for b in r["bodies"] if b.startswith("worker ")})
    ctx.note(f"HTTP/3 {when}: {r['ok']} of {REQUESTS} answered 200, by workers {pids}"
             + (f"; errors: {r['errors'][:3]}" if r["errors"] else ""))
    ctx.measured[f"h3_ok_{when.replace(' ', '_')}"] = r["ok"]
    check(r["ok"] == REQUESTS, f"HTTP/3 {when}: {r['failed']} of {REQUESTS} requests failed: {r['errors'][:3]}")
    return pids


@scenario(servers=["nginx"])
def quic_reload(srv, ctx):
    """TCP reuseport listeners (the library's) and a QUIC reuseport listener (nginx's) in
    two servers, 2 workers, TCP load; HTTP/3 requests, a reload, HTTP/3 requests again,
    answered by the new workers only."""
    major, minor = (int(x) for x in srv.build.version.split(".")[:2])
    if (major, minor) < (1, 25):
        raise Skip(f"nginx {srv.build.version} has no HTTP/3 (1.25 and later)")
    python = h3_client()
    cert, key = self_signed(srv.dir)
    srv.configure(2, BOTH, extra_http=f"    ssl_certificate {cert};\n    ssl_certificate_key {key};\n",
                  servers=[[f"{a} reuseport" for a in BOTH], [f"127.0.0.1:{QUIC_PORT} quic reuseport"]])
    srv.start()
    master = srv.master()
    load = ctx.load(BOTH)
    time.sleep(0.5)
    before = h3_gets(python, ctx, "before the reload")
    srv.reload(master)
    workers = srv.workers_of(master)
    time.sleep(0.3)
    after = h3_gets(python, ctx, "after the reload")
    check(set(after) <= set(workers), f"HTTP/3 answered by {after}, not only by the new workers {workers}")
    check(not set(before) & set(after), "the old workers still answered HTTP/3 after the reload")
    ctx.result = load.stop()
    return master
