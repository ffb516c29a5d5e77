"""One-shot HTTP exchanges with the server under test, outside the load client."""

import socket


def get(host, port):
    """One request; the body (both servers answer "worker <pid>...") or None."""
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            out = b""
            while chunk := s.recv(4096):
                out += chunk
        return out.split(b"\r\n\r\n", 1)[1].decode() if out.startswith(b"HTTP/1.1 200") else None
    except OSError:
        return None


def connectable(port, host="127.0.0.1"):
    """Whether a request there gets a 200."""
    return get(host, port) is not None


def exchange(data, port, timeout=3):
    """Sends raw bytes, returns everything the server sends back until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                return out
            out += chunk
