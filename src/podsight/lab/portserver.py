"""A lab pod's server for ``lab up --topology``: answers on given ports over TCP and UDP.

Run as ``python -m podsight.lab.portserver --name REF --ports 80,9090 [--ready-fd FD]``
inside a pod's netns. Each port is listened on over TCP (accept, write one
line naming the pod, close) and UDP (echo each datagram back), IPv4 and IPv6
on one dual-stack socket. A probe then sees a handshake or an answer when
the network lets it through, a reset or an ICMP port-unreachable when
nothing listens, and silence when a policy drops it. One thread, one
selector: a pod with many ports costs one process.

With ``--ready-fd`` it writes ``ready <pid>`` there once every socket
listens, as the lab's web server does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import signal
import socket
import sys
from collections.abc import Sequence


def _sockets(ports: Sequence[int]) -> list[tuple[socket.socket, str]]:
    out = []
    for port in ports:
        for kind, name in ((socket.SOCK_STREAM, "tcp"), (socket.SOCK_DGRAM, "udp")):
            s = socket.socket(socket.AF_INET6, kind)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::", port))
            if kind == socket.SOCK_STREAM:
                s.listen(128)
            s.setblocking(False)
            out.append((s, name))
    return out


def serve(name: str, ports: Sequence[int], ready_fd: int | None = None) -> None:
    sel = selectors.DefaultSelector()
    for listener, kind in _sockets(ports):
        sel.register(listener, selectors.EVENT_READ, kind)
    if ready_fd is not None:
        os.write(ready_fd, f"ready {os.getpid()}\n".encode())
        os.close(ready_fd)
    greeting = f"hello from {name}\n".encode()
    while True:
        for key, _ in sel.select():
            s: socket.socket = key.fileobj  # type: ignore[assignment]  # registered sockets
            if key.data == "tcp":
                with contextlib.suppress(OSError):
                    conn, _ = s.accept()
                    with conn:
                        conn.setblocking(False)
                        with contextlib.suppress(OSError):
                            conn.send(greeting)
            else:
                with contextlib.suppress(OSError):
                    data, peer = s.recvfrom(2048)
                    s.sendto(data, peer)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="podsight.lab.portserver")
    p.add_argument("--name", required=True)
    p.add_argument("--ports", required=True, help="comma list of port numbers")
    p.add_argument("--ready-fd", type=int)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ports = sorted({int(x) for x in args.ports.split(",") if x})
    try:
        serve(args.name, ports, args.ready_fd)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        sys.stderr.write(f"portserver {args.name}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
