"""What clients send that a server must survive: garbage, oversized headers, pipelining,
and a flood of idle connections."""

import socket
import time

from prefork.wait import check

from . import scenario
from .http import exchange

PORT = 8080


@scenario(servers=["rpserver"])
def bad_input(srv, ctx):
    """Garbage gets a 400 and a close; a flood of idle connections, five times what the
    workers may hold, does not stop them from accepting and serving everyone else."""
    srv.configure(2, [f"127.0.0.1:{PORT}"], extra="worker_connections 128;\nclient_header_timeout 20s;\n")
    srv.start()
    for garbage in (b"garbage\r\n\r\n", b"GET\r\n\r\n", b"get / HTTP/1.1\r\n\r\n", b"GET / FTP/1.0\r\n\r\n",
                    b"\x00\xff\xfe\r\n\r\n"):
        reply = exchange(garbage, PORT)
        check(reply.startswith(b"HTTP/1.1 400 "), f"{garbage!r} got {reply[:40]!r}")
        check(b"Connection: close" in reply, f"{garbage!r}: no Connection: close")
    oversized = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n"
    check(exchange(oversized, PORT).startswith(b"HTTP/1.1 431 "), "an oversized header is refused with 431")
    keepalive = exchange(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                         PORT)
    check(keepalive.count(b"HTTP/1.1 200 OK") == 2, f"two pipelined requests on a keep-alive connection: {keepalive!r}")
    idle = [socket.create_connection(("127.0.0.1", PORT), timeout=3) for _ in range(640)]
    try:
        load = ctx.load()
        time.sleep(2)
        ctx.result = load.stop()
    finally:
        for s in idle:
            s.close()
    return srv.master()
