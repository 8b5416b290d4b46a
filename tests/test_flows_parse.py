"""How `podsight flows` parses headers, in each of its parsers, with real packets.

flows.bpf.c parses packets in three places: the tc programs' fixed-offset
path for the common case (IPv4 without options, TCP or UDP), their general
walk for everything else (direct packet access), and the drop program
(probe reads of a freed skb). The last two walk IPv6 extension headers with
one helper, ``ipv6_ext_step``. These tests send datagrams that take each
path: behind a destination options header, fragmented (dstopts -> fragment
-> udp for the first fragment, no upper-layer header at all for the later
ones), with IPv4 options, and too short for the fixed-offset path. Expected
counts come from the sizes the test chose.

tests/test_flows.py has the simplest IPv6 case (one destination options header).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from flowsrun import FlowsRun, flows_of

FRONTEND, BACKEND = "10.244.0.4", "10.244.0.5"
FRONTEND6, BACKEND6 = "fd00:244::4", "fd00:244::5"
ETH, IPV4, IPV6, FRAG, DSTOPTS, UDP = 14, 20, 40, 8, 8, 8
MTU = 1500
FRAG_PORT = 47011  # nothing listens on these in shop/backend: the kernel drops (NO_SOCKET)
NOSOCK6_PORT = 47012
V4_PORT = 47013

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


# COUNT datagrams of SIZE bytes to HOST:PORT from a fresh socket, with the given
# IPv4 options (hex, may be empty); prints the source port.
V4_SENDER = r"""
import socket, sys
host, port, count, size, options = sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if options:
    s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes.fromhex(options))
s.bind(("0.0.0.0", 0))
for _ in range(count):
    s.sendto(b"4" * size, (host, port))
print(s.getsockname()[1])
"""


def test_ipv4_off_the_fixed_offset_path_is_counted_the_same(lab):
    """IPv4 options, and UDP shorter than 20 bytes, take the general walk; plain UDP does not.

    The options are three NOPs and an end-of-list (4 bytes: a 24-byte
    header); a 4-byte datagram leaves 12 bytes after the IPv4 header, fewer
    than the fixed-offset path checks for. All three flows must come out as
    udp with their ports, packets and bytes.
    """
    sends = {  # name: (count, size, options)
        "plain": (3, 50, ""),
        "options": (3, 50, "01010100"),
        "short": (2, 4, ""),
    }
    with FlowsRun("--podname", "frontend", "-n", "shop", "--dport", str(V4_PORT)) as run:
        sports = {}
        for name, (count, size, options) in sends.items():
            proc = lab.exec("shop/frontend", [sys.executable, "-c", V4_SENDER, BACKEND,
                                              str(V4_PORT), str(count), str(size), options],
                            capture_output=True, text=True, timeout=30)
            assert proc.returncode == 0, proc.stderr
            sports[name] = int(proc.stdout)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    for name, (count, size, options) in sends.items():
        records = flows_of(result.records, saddr=FRONTEND, daddr=BACKEND, sport=sports[name],
                           dport=V4_PORT)
        assert len(records) == 1, (name, result.records)
        frame = ETH + IPV4 + len(options) // 2 + UDP + size
        assert records[0]["proto"] == "udp", name
        assert (records[0]["packets"], records[0]["bytes"]) == (count, count * frame), name
    assert result.summary["lost"] == 0, result.stderr
