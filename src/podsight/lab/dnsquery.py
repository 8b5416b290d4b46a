"""One DNS query with nothing but the standard library: the lab's DNS client for tests.

Run as ``python -m podsight.lab.dnsquery [--tcp] [--type A] SERVER NAME``
inside a lab netns (``podsight lab exec mypod -- python3 -m ...``): it sends
one query with recursion desired, over UDP or TCP, and prints the reply as
one JSON object (``rcode``, ``rcode_name``, ``authoritative``, ``answers`` as
``[type, data]`` pairs), or ``{"error": ...}`` with exit status 1 if no reply
came. No DNS tool need be installed, and what goes on the wire is exactly one
plain query, which is what a test of ``podsight flows --dns`` wants to see.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28,
          "SRV": 33, "ANY": 255}  # fmt: skip
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


@dataclass
class Reply:
    """One DNS reply, decoded as far as tests need."""

    rcode: int
    authoritative: bool
    answers: list[tuple[str, str]] = field(default_factory=list)  # (type, data)

    @property
    def rcode_name(self) -> str:
        return RCODES.get(self.rcode, str(self.rcode))

    def addresses(self) -> list[str]:
        return [data for kind, data in self.answers if kind in ("A", "AAAA")]


def encode_name(name: str) -> bytes:
    labels = [label.encode("idna") for label in name.rstrip(".").split(".") if label]
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


def build_query(name: str, qtype: int, ident: int) -> bytes:
    """A standard query with recursion desired, one question, class IN."""
    return (
        struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
        + encode_name(name)
        + struct.pack("!HH", qtype, 1)
    )


def _skip_name(msg: bytes, at: int) -> int:
    while True:
        length = msg[at]
        if length & 0xC0 == 0xC0:
            return at + 2
        if length == 0:
            return at + 1
        at += length + 1


def _read_name(msg: bytes, at: int) -> str:
    labels: list[str] = []
    for _ in range(128):  # a loop of compression pointers ends here
        length = msg[at]
        if length & 0xC0 == 0xC0:
            at = ((length & 0x3F) << 8) | msg[at + 1]
            continue
        if length == 0:
            break
        labels.append(msg[at + 1 : at + 1 + length].decode("ascii", "replace"))
        at += length + 1
    return ".".join(labels) + "."


def parse_reply(msg: bytes, ident: int) -> Reply:
    got, flags, qdcount, ancount, _, _ = struct.unpack_from("!HHHHHH", msg)
    if got != ident or not flags & 0x8000:
        raise ValueError("not a reply to our query")
    at = 12
    for _ in range(qdcount):
        at = _skip_name(msg, at) + 4
    names = {v: k for k, v in QTYPES.items()}
    answers = []
    for _ in range(ancount):
        at = _skip_name(msg, at)
        rtype, _, _, length = struct.unpack_from("!HHIH", msg, at)
        at += 10
        data = msg[at : at + length]
        if rtype == 1:
            text = socket.inet_ntop(socket.AF_INET, data)
        elif rtype == 28:
            text = socket.inet_ntop(socket.AF_INET6, data)
        elif rtype in (2, 5, 12):
            text = _read_name(msg, at)
        else:
            text = data.hex()
        answers.append((names.get(rtype, str(rtype)), text))
        at += length
    return Reply(flags & 0xF, bool(flags & 0x0400), answers)


def query(
    server: str, name: str, qtype: str = "A", *, tcp: bool = False, port: int = 53,
    timeout: float = 3.0,
) -> Reply:  # fmt: skip
    """Ask ``server`` one question over UDP or TCP; raises OSError on timeout."""
    ident = int.from_bytes(os.urandom(2), "big")
    msg = build_query(name, QTYPES[qtype.upper()], ident)
    family = socket.AF_INET6 if ipaddress.ip_address(server).version == 6 else socket.AF_INET
    if tcp:
        with socket.create_connection((server, port), timeout) as sock:
            sock.sendall(struct.pack("!H", len(msg)) + msg)
            data = b""
            while len(data) < 2 or len(data) < 2 + struct.unpack_from("!H", data)[0]:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("server closed the connection mid-reply")
                data += chunk
            return parse_reply(data[2:], ident)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((server, port))
        sock.send(msg)
        while True:
            try:
                return parse_reply(sock.recv(65536), ident)
            except (ValueError, struct.error):
                continue  # a stray datagram; wait for ours


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m podsight.lab.dnsquery")
    parser.add_argument("server")
    parser.add_argument("name")
    parser.add_argument("--type", default="A", choices=sorted(QTYPES))
    parser.add_argument("--tcp", action="store_true")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    try:
        reply = query(args.server, args.name, args.type, tcp=args.tcp, port=args.port,
                      timeout=args.timeout)  # fmt: skip
    except OSError as exc:
        print(json.dumps({"error": str(exc) or type(exc).__name__}))
        return 1
    print(json.dumps({**asdict(reply), "rcode_name": reply.rcode_name}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
