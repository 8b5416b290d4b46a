"""Connects from inside one network namespace, many at once: the worker of ``lab probe``.

Run as ``ip netns exec NS python -m podsight.lab.prober --timeout SECONDS`` with a
JSON list of ``{"id", "addr", "port", "proto"}`` on stdin; prints one JSON
line ``{"id", "connected", "result"}`` per target. All targets are tried at
once with non-blocking sockets and one selector, so a namespace probing a
hundred ports takes one timeout, not a hundred.

- TCP: ``connected`` once the handshake completes (``ok``); ``refused`` on a
  reset, ``timeout`` when nothing answered (a dropped SYN), ``unreachable``
  on an ICMP error.
- UDP: one datagram is sent on a connected socket; ``ok`` when an answer
  comes back (the lab's port servers echo), ``refused`` on ICMP
  port-unreachable, ``timeout`` on silence.
"""

from __future__ import annotations

import argparse
import errno
import json
import selectors
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

BATCH = 400  # sockets open at once (well under the default 1024 descriptors)
PAYLOAD = b"podsight-probe\n"


def _outcome(err: int) -> str:
    if err == 0:
        return "ok"
    if err == errno.ECONNREFUSED:
        return "refused"
    if err in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    if err == errno.ETIMEDOUT:
        return "timeout"
    return errno.errorcode.get(err, str(err)).lower()


def probe(targets: Sequence[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    for start in range(0, len(targets), BATCH):
        results += _batch(targets[start:start + BATCH], timeout)
    return results


def _batch(targets: Sequence[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    sel = selectors.DefaultSelector()
    done: dict[int, str] = {}
    socks: dict[int, socket.socket] = {}
    for t in targets:
        family = socket.AF_INET6 if ":" in t["addr"] else socket.AF_INET
        udp = t["proto"] == "udp"
        s = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
        s.setblocking(False)
        socks[t["id"]] = s
        if udp:
            try:
                s.connect((t["addr"], t["port"]))
                s.send(PAYLOAD)
            except OSError as exc:
                done[t["id"]] = _outcome(exc.errno or 0)
                continue
            sel.register(s, selectors.EVENT_READ, t["id"])
        else:
            err = s.connect_ex((t["addr"], t["port"]))
            if err not in (0, errno.EINPROGRESS):
                done[t["id"]] = _outcome(err)
                continue
            sel.register(s, selectors.EVENT_WRITE, t["id"])
    deadline = time.monotonic() + timeout
    while len(done) < len(targets):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        for key, _ in sel.select(left):
            ident = key.data
            s = socks[ident]
            sel.unregister(s)
            if s.type == socket.SOCK_DGRAM:
                try:
                    done[ident] = "ok" if s.recv(2048) else "timeout"
                except OSError as exc:
                    done[ident] = _outcome(exc.errno or 0)
            else:
                done[ident] = _outcome(s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    for s in socks.values():
        s.close()
    sel.close()
    out = []
    for t in targets:
        result = done.get(t["id"], "timeout")
        out.append({"id": t["id"], "connected": result == "ok", "result": result})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="podsight.lab.prober")
    p.add_argument("--timeout", type=float, default=1.0)
    args = p.parse_args(argv)
    targets = json.load(sys.stdin)
    for line in probe(targets, args.timeout):
        sys.stdout.write(json.dumps(line) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
