"""The lab's web servers: the external host's HTTP/HTTPS site and the pods' HTTP ports.

Run as ``python -m podsight.lab.webserver --name NAME --http [ADDR:]PORT
[--https [ADDR:]PORT --cert C --key K] [--ready-fd FD]`` inside a lab netns.
It is a standard-library server on purpose: nothing to install, and small
enough that what appears on the wire is exactly what a test expects.

Endpoints (all answers are ``text/plain``):

- ``GET /``          one line naming the server, so a test can tell who answered
- ``GET /bytes/N``   N bytes (at most 64 MiB), for flow and byte-count tests
- ``POST /...``      reads the body and reports its length, for upload tests

With ``--ready-fd`` the server writes ``ready <pid>`` to that descriptor once
every socket listens: the lab starts it through ``setsid -f`` (so it is not a
child that must be reaped) and learns both readiness and pid from this line.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_BYTES = 64 << 20
CHUNK = 64 << 10


class Handler(BaseHTTPRequestHandler):
    server_version = "podsight-lab"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 30

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        name = getattr(self.server, "lab_name", "podsight-lab")
        path = self.path.split("?", 1)[0]
        if path.startswith("/bytes/"):
            try:
                size = int(path.removeprefix("/bytes/"))
            except ValueError:
                size = -1
            if not 0 <= size <= MAX_BYTES:
                self._reply(400, b"size must be 0..67108864\n")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            if self.command == "HEAD":
                return
            block = b"x" * CHUNK
            while size > 0:
                n = min(size, CHUNK)
                self.wfile.write(block[:n])
                size -= n
            return
        self._reply(200, f"hello from {name}\n".encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        remaining = min(length, MAX_BYTES)
        while remaining > 0:
            data = self.rfile.read(min(remaining, CHUNK))
            if not data:
                break
            remaining -= len(data)
        self._reply(200, f"received {length - remaining} bytes\n".encode())

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: a request log would grow without bound in a long-lived lab."""


class LabHTTPServer(ThreadingHTTPServer):
    """A threading server that listens on IPv4 and IPv6 when bound to ``::``."""

    daemon_threads = True
    request_queue_size = 128
    lab_name = "podsight-lab"

    def __init__(self, host: str, port: int, name: str) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.lab_name = name
        super().__init__((host, port), Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that vanish mid-request are normal in a lab; keep the log short."""
        exc = sys.exc_info()[1]
        sys.stderr.write(f"{self.lab_name}: {client_address}: {exc!r}\n")


class LabHTTPSServer(LabHTTPServer):
    """TLS is set up per connection in the worker thread, never in the accept loop.

    Wrapping the listening socket would run each handshake inside ``accept``,
    so one stalled client would stop the whole server.
    """

    def __init__(self, host: str, port: int, name: str, context: ssl.SSLContext) -> None:
        self.context = context
        super().__init__(host, port, name)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(30)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return  # a client that gave up mid-handshake (or curl -k probing)
        try:
            super().finish_request(tls, client_address)
        finally:
            with contextlib.suppress(OSError):
                tls.close()


def parse_listen(text: str) -> tuple[str, int]:
    """``8080`` -> ``("::", 8080)``; ``203.0.113.10:80``; ``[fd00::1]:80``."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "::"
    host = host.strip("[]") or "::"
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad listen address {text!r}") from None
    return host, number


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m podsight.lab.webserver")
    parser.add_argument("--name", default="podsight-lab")
    parser.add_argument("--http", type=parse_listen, action="append", default=[])
    parser.add_argument("--https", type=parse_listen, action="append", default=[])
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--ready-fd", type=int)
    args = parser.parse_args(argv)

    servers: list[LabHTTPServer] = [LabHTTPServer(h, p, args.name) for h, p in args.http]
    if args.https:
        if not (args.cert and args.key):
            parser.error("--https needs --cert and --key")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        servers += [LabHTTPSServer(h, p, args.name, context) for h, p in args.https]
    if not servers:
        parser.error("nothing to serve: give --http or --https")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    if args.ready_fd is not None:
        os.write(args.ready_fd, f"ready {os.getpid()}\n".encode())
        os.close(args.ready_fd)
    while not stop.wait(1.0):
        pass
    for server in servers:
        server.shutdown()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
