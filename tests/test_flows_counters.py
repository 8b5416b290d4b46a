"""Every loss counter of the flows programs, forced with real packets and read back.

Nothing is lost silently: each path on which flows.bpf.c gives up on a
packet, an RTT sample, a drop or a DNS message adds to a counter, and the
summary names it (gadgets/flows/gadget.py, LOSS_CAUSES). Here each counter is driven past
its limit on purpose, with tables made tiny through FlowsConfig, and the
count is checked against what the test sent: exactly where the arithmetic
is known, as a lower bound where the kernel decides how many samples there
are. The library is used directly (``Flows`` attached to shop/frontend's
host-side veth, pslh4, both directions), so nothing is drained or
harvested behind the test's back.
"""

from __future__ import annotations

import re
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from podsight.gadgets.flows.flows import COUNTERS, EV_DNS, EV_FLOW, Flows, FlowsConfig
from podsight.gadgets.flows.gadget import LOSS_CAUSES
from podsight.net.rules import Rule

FRONTEND = "shop/frontend"
BACKEND_IP = "10.244.0.5"
BACKEND_HTTP = 9090
DNS_POD_IP = "10.244.0.6"  # the lab's dnsmasq, asked directly (no Service DNAT)
BRIDGE_MAC = "02:70:73:6c:00:01"
UDP, TCP = 17, 6
NOSOCK_PORTS = (47021, 47022)  # nothing listens there in shop/backend: NO_SOCKET drops
SOURCE = Path(__file__).resolve().parents[1] / "src/podsight/gadgets/flows/flows.bpf.c"
#: Counters that count work done, not losses.
NOT_LOSSES = {"packets", "flows", "overflow", "dns", "drops", "tls"}


# -- no lab needed -------------------------------------------------------------------------


def test_counter_names_follow_the_kernel_enum_and_every_loss_is_named():
    """COUNTERS is enum counter in order; every loss slot has a sentence in the summary."""
    enum = re.search(r"enum counter \{(.*?)\};", SOURCE.read_text(), re.S)
    assert enum is not None
    slots = re.findall(r"\bC_(\w+) = (\d+),", enum.group(1))
    names = [name.lower() for name, _ in slots if name != "MAX"]
    assert [int(n) for _, n in slots] == list(range(len(slots)))
    assert tuple(names) == COUNTERS
    assert set(LOSS_CAUSES) <= set(COUNTERS)
    assert set(COUNTERS) - NOT_LOSSES == set(LOSS_CAUSES)


# -- helpers ----------------------------------------------------------------------------------


@contextmanager
def watching(lab: Any, config: FlowsConfig) -> Iterator[Flows]:
    """Flows with ``config`` on shop/frontend's host-side veth, both directions."""
    ifindex = socket.if_nametoindex(lab.pod(FRONTEND).veth)
    with Flows(config) as flows:
        flows.attach(ifindex, "ingress")
        flows.attach(ifindex, "egress")
        yield flows


def run_in_frontend(lab: Any, script: str, *args: object) -> str:
    proc = lab.exec(FRONTEND, [sys.executable, "-c", script, *map(str, args)],
                    capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out: str = proc.stdout
    return out


def to_backend(*, protocol: int, ports: tuple[int, int]) -> Rule:
    """Only our own traffic: this protocol and destination ports, to or from backend."""
    return Rule(protocol=protocol, port=ports, cidrs=(f"{BACKEND_IP}/32",))


# DNS queries with the given ids from one UDP socket, answered or not; prints its port.
QUERIES = r"""
import socket, sys
from podsight.lab.dnsquery import build_query
server, ids = sys.argv[1], [int(i) for i in sys.argv[2].split(",")]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
for ident in ids:
    s.sendto(build_query("lost.example", 1, ident), (server, 53))
print(s.getsockname()[1])
"""

# N queries to a real server, one at a time, each answer awaited and checked.
ASK = r"""
import socket, sys
from podsight.lab.dnsquery import build_query, parse_reply
server, n, first = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.connect((server, 53))
for ident in range(first, first + n):
    s.send(build_query("web.default.svc.cluster.local", 1, ident))
    parse_reply(s.recv(65536), ident)
"""

# COUNT datagrams of SIZE bytes to HOST:PORT.
DATAGRAMS = r"""
import socket, sys
host, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(count):
    s.sendto(b"d" * size, (host, port))
"""


# -- DNS ----------------------------------------------------------------------------------------


def test_a_full_dns_query_table_counts_each_query_it_cannot_hold(lab):
    """Six unanswered queries into a table of two: four lost, and a repeat is not a loss.

    Nothing listens on backend:53, so no answer ever frees a slot. The query
    sent again with the same id and port is "already there" (EEXIST): the
    first sighting is kept, nothing is lost by it.
    """
    config = FlowsConfig(dns=True, dns_entries=2, rules=(to_backend(protocol=UDP,
                                                                     ports=(53, 53)),))
    with watching(lab, config) as flows:
        run_in_frontend(lab, QUERIES, BACKEND_IP, "101,102,103,104,105,106")
        assert flows.counters()["lost_dns_query"] == 4
        run_in_frontend(lab, QUERIES, BACKEND_IP, "101,101")  # new port: two new queries
        c = flows.counters()
    assert c["lost_dns_query"] == 6, c
    assert c["dns"] == 0 and c["dns_unreadable"] == 0, c


def test_a_repeated_query_is_not_a_loss(lab):
    """The same id from the same port twice: one entry, no loss (table of one)."""
    script = QUERIES.replace('s.bind(("0.0.0.0", 0))', 's.bind(("0.0.0.0", 47031))')
    config = FlowsConfig(dns=True, dns_entries=1, rules=(to_backend(protocol=UDP,
                                                                     ports=(53, 53)),))
    with watching(lab, config) as flows:
        run_in_frontend(lab, script, BACKEND_IP, "201,201,201")
        c = flows.counters()
    assert c["lost_dns_query"] == 0, c
    assert c["packets"] == 3, c


def test_port_53_payloads_shorter_than_a_dns_header_are_counted(lab):
    """UDP datagrams of 0 and 11 bytes to port 53 cannot hold a 12-byte header."""
    config = FlowsConfig(dns=True, rules=(to_backend(protocol=UDP, ports=(53, 53)),))
    with watching(lab, config) as flows:
        run_in_frontend(lab, DATAGRAMS, BACKEND_IP, 53, 3, 11)
        run_in_frontend(lab, DATAGRAMS, BACKEND_IP, 53, 2, 0)
        run_in_frontend(lab, DATAGRAMS, BACKEND_IP, 53, 4, 12)  # long enough: a query
        c = flows.counters()
    assert c["dns_unreadable"] == 5, c
    assert c["packets"] == 9, c


def test_dns_over_tcp_counts_no_empty_segment_as_unreadable(lab, cluster_dns):
    """SYN, ACK and FIN segments on port 53 carry no DNS message: nothing unreadable."""
    config = FlowsConfig(dns=True, rules=(Rule(protocol=TCP, port=(53, 53)),))
    with watching(lab, config) as flows:
        proc = lab.exec(FRONTEND, [sys.executable, "-m", "podsight.lab.dnsquery", "--tcp",
                                   DNS_POD_IP, "web.default.svc.cluster.local"],
                        capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        c = flows.counters()
    assert c["packets"] >= 6, c  # handshake, query, answer, teardown: payload-less ones too
    assert c["dns"] == 1, c
    assert c["dns_unreadable"] == 0, c


def test_dns_answers_that_do_not_fit_in_the_ring_are_counted(lab, cluster_dns):
    """Twenty answers into a one-page ring nobody drains: each is delivered or counted."""
    total = 20
    config = FlowsConfig(dns=True, ring_bytes=4096,
                         rules=(Rule(protocol=UDP, port=(53, 53)),))
    with watching(lab, config) as flows:
        run_in_frontend(lab, ASK, DNS_POD_IP, total, 3000)
        c = flows.counters()
        delivered = int((flows.drain()["kind"] == EV_DNS).sum())
    assert c["dns"] == total, c
    assert c["lost_dns"] >= 1, c  # a page holds 15 records of 256 bytes
    assert delivered + c["lost_dns"] == total, (delivered, c)


@pytest.fixture
def cluster_dns(lab: Any) -> None:
    if lab.nameserver is None:
        pytest.skip(f"the lab has no cluster DNS: {lab.dns_off_reason}")


# -- RTT and drops --------------------------------------------------------------------------------

# Two HTTP connections to backend, a few GETs each: four sockets with RTT samples.
TWO_CONNECTIONS = r"""
import http.client, sys
for _ in range(2):
    c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=10)
    for _ in range(3):
        c.request("GET", "/bytes/20000")
        r = c.getresponse()
        assert r.status == 200 and len(r.read()) == 20000
    c.close()
"""


def test_a_full_rtt_table_counts_lost_samples(lab):
    """A table of one socket: the other three sockets' samples are each counted lost."""
    config = FlowsConfig(rtt=True, rtt_entries=1,
                         rules=(to_backend(protocol=TCP, ports=(BACKEND_HTTP, BACKEND_HTTP)),))
    with watching(lab, config) as flows:
        run_in_frontend(lab, TWO_CONNECTIONS, BACKEND_IP, BACKEND_HTTP)
        c = flows.counters()
        h = flows.harvest()
    assert len(h.rtt_keys) == 1 and int(h.rtt_stats["samples"][0]) >= 1, h.rtt_stats
    assert c["lost_rtt"] >= 3, c


def test_a_full_drop_table_counts_lost_drops(lab):
    """Two dropped flows into a drop table of one: the second flow's drops are all lost."""
    first, second = 3, 4
    config = FlowsConfig(drops=True, drop_entries=1,
                         rules=(to_backend(protocol=UDP, ports=NOSOCK_PORTS),))
    with watching(lab, config) as flows:
        run_in_frontend(lab, DATAGRAMS, BACKEND_IP, NOSOCK_PORTS[0], first, 50)
        run_in_frontend(lab, DATAGRAMS, BACKEND_IP, NOSOCK_PORTS[1], second, 50)
        c = flows.counters()
        h = flows.harvest()
    assert c["drops"] == first + second, c
    assert c["lost_drops"] == second, c
    assert list(h.drop_keys["dport"]) == [NOSOCK_PORTS[0]], h.drop_keys
    assert list(h.drop_stats["packets"]) == [first]


# -- packets ---------------------------------------------------------------------------------------

# Frames no IP stack accepts, sent raw on the pod's eth0 to the bridge: an IPv6
# header cut at 20 of its 40 bytes, and an IPv4 header whose length field says 16.
BAD_FRAMES = r"""
import socket, sys
dst, n = bytes.fromhex(sys.argv[1].replace(":", "")), int(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("eth0", 0))
src = s.getsockname()[4]
cut_v6 = dst + src + b"\x86\xdd" + b"\x60" + bytes(19)
short_v4 = dst + src + b"\x08\x00" + bytes([0x44]) + bytes(19)
for _ in range(n):
    s.send(cut_v6)
    s.send(short_v4)
"""


def test_ip_packets_with_unreadable_or_malformed_headers_are_counted(lab):
    n = 5
    with watching(lab, FlowsConfig()) as flows:
        run_in_frontend(lab, BAD_FRAMES, BRIDGE_MAC, n)
        c = flows.counters()
    assert c["unparsed"] == 2 * n, c


# One datagram to each of N consecutive ports: N flows of one packet.
ONE_EACH = r"""
import socket, sys
host, first, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in range(first, first + n):
    s.sendto(b"o", (host, port))
"""


def test_flows_that_fit_nowhere_are_counted_and_every_packet_is_somewhere(lab):
    """A one-slot cache, a one-entry table, a one-page ring: 100 one-packet flows.

    Each packet ends in exactly one place: a cache slot, the table, a ring
    record, or the lost_flow count; the ring's records are what `overflow`
    says went through it.
    """
    n, first = 100, 47100
    config = FlowsConfig(cache_slots=1, max_flows=1, ring_bytes=4096,
                         rules=(to_backend(protocol=UDP, ports=(first, first + n - 1)),))
    with watching(lab, config) as flows:
        run_in_frontend(lab, ONE_EACH, BACKEND_IP, first, n)
        c = flows.counters()
        h = flows.harvest()
    ring = h.events[h.events["kind"] == EV_FLOW]
    in_ring = int(ring["stats"]["packets"].sum())
    kept = int(h.flow_stats["packets"].sum())
    assert c["packets"] == n, c
    assert c["lost_flow"] >= 1, c
    assert c["overflow"] == in_ring, (c, in_ring)
    assert kept + in_ring + c["lost_flow"] == n, (kept, in_ring, c)
    assert 1 <= len(h.flow_keys) <= 3, h.flow_keys  # one table entry, a slot per CPU used
