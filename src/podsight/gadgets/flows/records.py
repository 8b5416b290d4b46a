"""From one harvest of raw kernel tables to flow records: merge, de-duplicate, join.

A packet between two pods on one host crosses two observed interfaces (the
sender's veth, then the receiver's), so the kernel has two entries for it.
Like netobserv, podsight reports such a flow once, with the counts of the
interface that saw it first and the list of every interface and direction
that saw it. RTT (per socket), drops (per 5-tuple) and DNS answers are then
joined to the flow they belong to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from podsight.gadgets.flows.dns import DnsAnswer, decode_answer
from podsight.gadgets.flows.flows import DIRECTION_NAMES, EV_DNS, EV_FLOW, Harvest
from podsight.identity.endpoint import Endpoint
from podsight.net.addresses import V4_MAPPED, address
from podsight.net.interfaces import interface_name, interface_name_in
from podsight.net.protocols import protocol_name


@dataclass(slots=True)
class Rtt:
    """Smoothed RTT of the socket that sent this flow, over the interval (µs)."""

    min_us: int
    max_us: int
    avg_us: int
    last_us: int


@dataclass(slots=True)
class Drops:
    """Packets of this flow the kernel dropped, and its latest reason for it."""

    packets: int
    bytes: int
    reason: str
    netns: int
    interface: str


@dataclass(slots=True)
class Tls:
    """TLS of the connection this flow belongs to (--tls): the ClientHello's server name,
    offered versions and ALPN, the ServerHello's chosen version and cipher suite."""

    sni: str = ""
    offered: tuple[str, ...] = ()
    alpn: tuple[str, ...] = ()
    version: str = ""
    cipher: str = ""
    server: str = ""  # the server's address and port (the end the hello named)
    port: int = 0


@dataclass(slots=True)
class FlowRecord:
    """One flow over one interval, counted once however many interfaces saw it."""

    ip: int
    saddr: str
    daddr: str
    sport: int
    dport: int
    proto: int
    bytes: int
    packets: int
    first_ns: int  # CLOCK_BOOTTIME
    last_ns: int
    tcp_flags: int
    dscp: int
    icmp_type: int | None
    icmp_code: int | None
    interfaces: list[tuple[str, str]]  # (interface, direction), first seen first
    rtt: Rtt | None = None
    drops: Drops | None = None
    dns: list[DnsAnswer] = field(default_factory=list)
    tls: Tls | None = None
    src: Endpoint | None = None
    dst: Endpoint | None = None

    @property
    def protocol(self) -> str:
        return protocol_name(self.proto)

    @property
    def five_tuple(self) -> tuple[str, str, int, int, int]:
        return (self.saddr, self.daddr, self.sport, self.dport, self.proto)


_Tuple = tuple[bytes, bytes, int, int, int]


def _tuples(keys: np.ndarray) -> list[_Tuple]:
    s = keys["saddr"].tobytes()
    d = keys["daddr"].tobytes()
    return [
        (s[i * 16 : i * 16 + 16], d[i * 16 : i * 16 + 16], sp, dp, pr)
        for i, (sp, dp, pr) in enumerate(
            zip(keys["sport"].tolist(), keys["dport"].tolist(), keys["proto"].tolist(),
                strict=True)
        )
    ]


class Assembler:
    """Turns harvests into flow records; carries DNS answers one interval if needed."""

    def __init__(self, drop_reasons: dict[int, str] | None = None) -> None:
        self._reasons = drop_reasons or {}
        self._late_dns: list[tuple[_Tuple, DnsAnswer]] = []
        self._names: dict[int, str] = {}
        self._netns_names: dict[tuple[int, int], str] = {}

    def _ifname(self, ifindex: int) -> str:
        name = self._names.get(ifindex)
        if name is None:
            name = self._names[ifindex] = interface_name(ifindex)
        return name

    def _ifname_in(self, netns: int, ifindex: int) -> str:
        """A drop's device lives in its own netns (a pod's eth0 is ifindex 2 there)."""
        name = self._netns_names.get((netns, ifindex))
        if name is None:
            name = self._netns_names[(netns, ifindex)] = interface_name_in(netns, ifindex)
        return name

    def assemble(self, h: Harvest, *, final: bool = False) -> list[FlowRecord]:
        # 1. Per (5-tuple, interface, direction): the table plus overflowed packets.
        per_iface: dict[tuple[_Tuple, int, int], list[int]] = {}
        flows = h.flow_stats
        cols = [flows[c].tolist() for c in ("first_ns", "last_ns", "bytes", "packets",
                                             "tcp_flags", "dscp", "icmp_type", "icmp_code")]
        for t, ifindex, direction, *stats in zip(
            _tuples(h.flow_keys), h.flow_keys["ifindex"].tolist(),
            h.flow_keys["direction"].tolist(), *cols, strict=True,
        ):
            per_iface[(t, ifindex, direction)] = stats
        overflow = h.events[h.events["kind"] == EV_FLOW]
        if len(overflow):
            ok = overflow["key"]
            st = overflow["stats"]
            ocols = [st[c].tolist() for c in ("first_ns", "last_ns", "bytes", "packets",
                                               "tcp_flags", "dscp", "icmp_type", "icmp_code")]
            for t, ifindex, direction, *stats in zip(
                _tuples(ok), ok["ifindex"].tolist(), ok["direction"].tolist(), *ocols,
                strict=True,
            ):
                have = per_iface.get((t, ifindex, direction))
                if have is None:
                    per_iface[(t, ifindex, direction)] = stats
                else:
                    have[0] = min(have[0], stats[0])
                    have[1] = max(have[1], stats[1])
                    have[2] += stats[2]
                    have[3] += stats[3]
                    have[4] |= stats[4]

        # 2. One record per 5-tuple: counts from the interface that saw it first.
        by_tuple: dict[_Tuple, FlowRecord] = {}
        for (t, ifindex, direction), st in sorted(per_iface.items(), key=lambda kv: kv[1][0]):
            seen = (self._ifname(ifindex), DIRECTION_NAMES[direction & 1])
            rec = by_tuple.get(t)
            if rec is not None:
                rec.interfaces.append(seen)
                rec.last_ns = max(rec.last_ns, st[1])
                rec.tcp_flags |= st[4]
                continue
            is_icmp = t[4] in (1, 58)
            by_tuple[t] = FlowRecord(
                ip=4 if t[0].startswith(V4_MAPPED) else 6,
                saddr=address(t[0]), daddr=address(t[1]), sport=t[2], dport=t[3], proto=t[4],
                bytes=st[2], packets=st[3], first_ns=st[0], last_ns=st[1], tcp_flags=st[4],
                dscp=st[5], icmp_type=st[6] if is_icmp else None,
                icmp_code=st[7] if is_icmp else None, interfaces=[seen],
            )

        # 3. RTT: the socket that sends a flow is keyed (local -> remote) like the flow.
        rtts: dict[_Tuple, Rtt] = {}
        for t, mn, mx, last, n, total in zip(
            _tuples(h.rtt_keys), *(h.rtt_stats[c].tolist() for c in
                                    ("min_us", "max_us", "last_us", "samples", "sum_us")),
            strict=True,
        ):
            rtts[t] = Rtt(mn, mx, total // max(n, 1), last)
        for t, rec in by_tuple.items():
            rtt = rtts.get(t) or rtts.get((t[1], t[0], t[3], t[2], t[4]))
            if rtt is not None:
                rec.rtt = rtt

        # 4. Drops: joined by 5-tuple; a drop of a flow no interface saw is its own record.
        for t, nbytes, npackets, last, reason, netns, ifindex in zip(
            _tuples(h.drop_keys), *(h.drop_stats[c].tolist() for c in
                                     ("bytes", "packets", "last_ns", "reason", "netns",
                                      "ifindex")),
            strict=True,
        ):
            drops = Drops(npackets, nbytes, self._reasons.get(reason, str(reason)), netns,
                          self._ifname_in(netns, ifindex) if ifindex else "")
            rec = by_tuple.get(t)
            if rec is None:
                rec = by_tuple[t] = FlowRecord(
                    ip=4 if t[0].startswith(V4_MAPPED) else 6,
                    saddr=address(t[0]), daddr=address(t[1]), sport=t[2], dport=t[3],
                    proto=t[4], bytes=0, packets=0, first_ns=last, last_ns=last, tcp_flags=0,
                    dscp=0, icmp_type=None, icmp_code=None, interfaces=[],
                )
            rec.drops = drops

        # 5. DNS answers go on the response flow and on its query flow.
        answers = self._late_dns
        self._late_dns = []
        dns_events = h.events[h.events["kind"] == EV_DNS]
        for t, ev in zip(_tuples(dns_events["key"]), dns_events, strict=True):
            answers.append((t, decode_answer(ev)))
        for t, answer in answers:
            matched = False
            for key in (t, (t[1], t[0], t[3], t[2], t[4])):
                rec = by_tuple.get(key)
                if rec is not None:
                    rec.dns.append(answer)
                    matched = True
            if not matched:
                if final or answer.carried:
                    # Its packets were counted in a harvest already gone: report it alone.
                    rec = by_tuple[t] = FlowRecord(
                        ip=4 if t[0].startswith(V4_MAPPED) else 6,
                        saddr=address(t[0]), daddr=address(t[1]), sport=t[2], dport=t[3],
                        proto=t[4], bytes=0, packets=0, first_ns=answer.ts_ns,
                        last_ns=answer.ts_ns, tcp_flags=0, dscp=0, icmp_type=None,
                        icmp_code=None, interfaces=[],
                    )
                    rec.dns.append(answer)
                else:
                    answer.carried = True
                    self._late_dns.append((t, answer))
        return sorted(by_tuple.values(), key=lambda r: r.first_ns)
