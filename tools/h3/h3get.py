"""HTTP/3 GETs with aioquic, for the nginx QUIC scenario: run with the interpreter of the
venv scripts/install-h3-client.sh makes (target/h3-venv).

  python h3get.py HOST PORT COUNT [PATH]

Makes COUNT requests, one QUIC connection each (the certificate is not verified: the
scenario's own, self-signed), and prints one JSON line: {"ok": n, "failed": n,
"statuses": {...}, "bodies": [...], "errors": [...]}. Exit status 0 whatever the answers."""

import asyncio
import json
import ssl
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiters = {}
        self.answers = {}

    def quic_event_received(self, event):
        for ev in self.h3.handle_event(event):
            if isinstance(ev, (HeadersReceived, DataReceived)):
                status, body = self.answers.setdefault(ev.stream_id, [None, b""])
                if isinstance(ev, HeadersReceived):
                    self.answers[ev.stream_id][0] = dict(ev.headers).get(b":status", b"?").decode()
                else:
                    self.answers[ev.stream_id][1] = body + ev.data
                if ev.stream_ended and ev.stream_id in self.waiters:
                    self.waiters.pop(ev.stream_id).set_result(self.answers.pop(ev.stream_id))

    async def get(self, host, port, path):
        sid = self._quic.get_next_available_stream_id()
        self.h3.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"https"),
                                   (b":authority", f"{host}:{port}".encode()), (b":path", path.encode())],
                             end_stream=True)
        fut = asyncio.get_running_loop().create_future()
        self.waiters[sid] = fut
        self.transmit()
        return await asyncio.wait_for(fut, 3)


async def one(host, port, path):
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=ssl.CERT_NONE)
    async with connect(host, port, configuration=cfg, create_protocol=Client, wait_connected=True) as c:
        return await c.get(host, port, path)


async def main():
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    path = sys.argv[4] if len(sys.argv) > 4 else "/"
    out = {"ok": 0, "failed": 0, "statuses": {}, "bodies": [], "errors": []}
    for _ in range(count):
        try:
            status, body = await asyncio.wait_for(one(host, port, path), 5)
            out["statuses"][status] = out["statuses"].get(status, 0) + 1
            out["bodies"].append(body.decode(errors="replace").strip())
            out["ok" if status == "200" else "failed"] += 1
        except Exception as e:  # a timeout, a refused handshake: counted, the run goes on
            out["failed"] += 1
            out["errors"].append(f"{type(e).__name__}: {e}")
    print(json.dumps(out))


asyncio.run(main())
