"""The IPv6 extension-header walk of `podsight flows`, in both parsers, with real packets.

flows.bpf.c parses packets twice: in the tc programs (direct packet access)
and in the drop program (probe reads of a freed skb). Both walk IPv6
extension headers with one helper, ``ipv6_ext_step``. These tests send
datagrams whose upper-layer header sits behind extension headers: a
destination options header, and a fragment header followed by one (the
first fragment: two steps of the walk; the later fragments: no upper-layer
header at all). Expected counts come from the sizes the test chose.

tests/test_flows.py has the simplest case (one destination options header).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from flowsrun import FlowsRun, flows_of

FRONTEND6, BACKEND6 = "fd00:244::4", "fd00:244::5"
ETH, IPV6, FRAG, DSTOPTS, UDP = 14, 40, 8, 8, 8
MTU = 1500
FRAG_PORT = 47011  # nothing listens on these in shop/backend: the kernel drops (NO_SOCKET)
NOSOCK6_PORT = 47012

# COUNT datagrams of SIZE bytes to HOST:PORT, each behind an 8-byte destination
# options header (PadN only); prints the source port.
SENDER = r"""
import socket, sys
host, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, bytes([0, 0, 1, 4, 0, 0, 0, 0]))
s.bind(("::", 0))
for _ in range(count):
    s.sendto(b"f" * size, (host, port))
print(s.getsockname()[1])
"""


def send(lab: Any, port: int, count: int, size: int) -> int:
    proc = lab.exec("shop/frontend", [sys.executable, "-c", SENDER, BACKEND6, str(port),
                                      str(count), str(size)],
                    capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


def fragments(payload: int) -> list[int]:
    """Frame sizes of one datagram's fragments (RFC 8200, as Linux cuts them).

    Linux keeps a destination options header that no routing header precedes
    in the unfragmentable part (``ip6_find_1stfragopt``), so every fragment is
    IPv6, destination options, fragment header, then a multiple of 8 bytes of
    the UDP header and data (the last one takes the rest).
    """
    head = ETH + IPV6 + DSTOPTS + FRAG
    most = (MTU - IPV6 - DSTOPTS - FRAG) // 8 * 8
    whole = UDP + payload
    sizes = []
    while whole > most:
        sizes.append(head + most)
        whole -= most
    return [*sizes, head + whole]


def test_fragments_first_by_ports_later_under_port_zero(lab):
    """A 3000-byte datagram in three fragments: the first walks dstopts -> fragment -> udp.

    The first fragment is keyed by its UDP ports; the later ones (dstopts ->
    fragment at a non-zero offset) carry no UDP header and are counted under
    port 0, still as udp (the fragment header's next header) and not lost.
    """
    payload = 3000
    sizes = fragments(payload)
    assert len(sizes) == 3
    with FlowsRun("--podname", "frontend", "-n", "shop") as run:
        sport = send(lab, FRAG_PORT, 1, payload)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    first = flows_of(result.records, saddr=FRONTEND6, daddr=BACKEND6, sport=sport,
                     dport=FRAG_PORT)
    assert len(first) == 1, result.records
    assert first[0]["proto"] == "udp"
    assert (first[0]["packets"], first[0]["bytes"]) == (1, sizes[0])
    later = flows_of(result.records, saddr=FRONTEND6, daddr=BACKEND6, sport=0, dport=0)
    assert len(later) == 1, result.records
    assert later[0]["proto"] == "udp"
    assert later[0]["packets"] == len(sizes) - 1
    assert later[0]["bytes"] == sum(sizes[1:])
    assert result.summary["lost"] == 0, result.stderr


def test_a_dropped_datagram_behind_dstopts_is_keyed_by_its_ports(lab):
    """The drop parser walks the same headers: the drop joins the flow by its UDP ports."""
    count = 3
    with FlowsRun("--drops", "--podname", "frontend", "-n", "shop") as run:
        sport = send(lab, NOSOCK6_PORT, count, 100)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    records = flows_of(result.records, saddr=FRONTEND6, daddr=BACKEND6, sport=sport,
                       dport=NOSOCK6_PORT)
    assert records, json.dumps(result.records)
    assert sum(r["packets"] for r in records) == count
    drops = [r["drops"] for r in records if "drops" in r]
    assert sum(d["packets"] for d in drops) == count, records
    assert {d["reason"] for d in drops} == {"NO_SOCKET"}
