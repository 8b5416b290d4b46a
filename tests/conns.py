"""Test traffic of known shape: a server and a client that exchange exactly the bytes
asked for, run in lab pods (or on loopback), for the tcplife and graph tests.

The client sends an 8-byte header (request and response sizes) and the request; the
server answers with the response and waits for the client to close first, so the bytes
each socket sent are known exactly: client 8 + request, server response.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

SERVER = r"""
import socket, struct, sys, threading
port = int(sys.argv[1])
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", port))
s.listen(1024)
print("ready", flush=True)

def exactly(c, n):
    got = bytearray()
    while len(got) < n:
        d = c.recv(min(1 << 16, n - len(got)))
        if not d:
            break
        got += d
    return bytes(got)

def serve(c):
    with c:
        req, resp = struct.unpack("!II", exactly(c, 8))
        exactly(c, req)
        c.sendall(b"r" * resp)
        while c.recv(1 << 16):
            pass

while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

CLIENT = r"""
import json, os, socket, struct, sys
host, port, req, resp, count, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == "hold"
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
socks, ports = [], []
for _ in range(count):
    c = socket.socket(fam, socket.SOCK_STREAM)
    c.connect((host, port))
    c.sendall(struct.pack("!II", req, resp) + b"q" * req)
    got = 0
    while got < resp:
        d = c.recv(1 << 16)
        assert d, "server closed early"
        got += len(d)
    ports.append(c.getsockname()[1])
    if hold:
        socks.append(c)
    else:
        c.close()
print(json.dumps({"pid": os.getpid(), "comm": open("/proc/self/comm").read().strip(),
                  "sports": ports}), flush=True)
if hold:
    sys.stdin.readline()
    for c in socks:
        c.close()
    print("closed", flush=True)
"""


class Server:
    """The server in a lab pod (``pod``) or on the host (``pod=None``); a context manager."""

    def __init__(self, lab: Any, pod: str | None, port: int) -> None:
        argv = [sys.executable, "-c", SERVER, str(port)]
        self.proc = (lab.popen(pod, argv, stdout=subprocess.PIPE, text=True) if pod
                     else subprocess.Popen(argv, stdout=subprocess.PIPE, text=True))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", f"server did not start: {line!r}"

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def exchange(lab: Any, pod: str | None, host: str, port: int, req: int, resp: int,
             count: int = 1) -> dict[str, Any]:
    """``count`` connections that each send ``8 + req`` bytes and receive ``resp``, closed
    by the client; returns the client's pid and source ports."""
    argv = [sys.executable, "-c", CLIENT, host, str(port), str(req), str(resp), str(count),
            "close"]
    proc = (lab.exec(pod, argv, capture_output=True, text=True, timeout=120) if pod
            else subprocess.run(argv, capture_output=True, text=True, timeout=120))
    assert proc.returncode == 0, proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


class Held:
    """``count`` connections opened and kept open until :meth:`close` (persistent)."""

    def __init__(self, lab: Any, pod: str | None, host: str, port: int, req: int, resp: int,
                 count: int = 1) -> None:
        argv = [sys.executable, "-c", CLIENT, host, str(port), str(req), str(resp),
                str(count), "hold"]
        kw: dict[str, Any] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE,
                              "text": True}
        self.proc = lab.popen(pod, argv, **kw) if pod else subprocess.Popen(argv, **kw)
        assert self.proc.stdout is not None
        self.info: dict[str, Any] = json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            assert self.proc.stdout.readline().strip() == "closed"
            self.proc.wait(timeout=30)

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
