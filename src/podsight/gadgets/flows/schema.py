"""A flow over one interval: how it reads in a table, in JSON and in SQLite.

JSON keys and SQLite columns are a contract, documented in docs/flows.md
(a test checks that page against this schema).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from podsight.gadgets.flows.records import FlowRecord
from podsight.net.protocols import ICMP_PROTOCOLS, flag_names
from podsight.schema import (
    Column,
    Field,
    Schema,
    Sides,
    endpoint,
    number,
    string,
    table_only,
)
from podsight.timefmt import Clock, format_duration


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"


def _has_port(r: FlowRecord) -> bool:
    return r.proto not in ICMP_PROTOCOLS


def _time(name: str, get: Callable[[FlowRecord], int], what: str, clock: Clock) -> Field[Any]:
    return Field(
        name, name.upper(), 12, lambda r: clock.hms(clock.wall_ns(get(r))),
        lambda r: f'"{clock.rfc3339(clock.wall_ns(get(r)))}"',
        (Column(name, "TEXT", f"{what}, RFC 3339 UTC",
                lambda r: clock.rfc3339(clock.wall_ns(get(r)))),
         Column(f"{name}_ns", "INTEGER", f"{what}, ns since the Unix epoch",
                lambda r: clock.wall_ns(get(r)))),
        default=False, doc=what)


def _obj(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _rtt_json(r: FlowRecord) -> str | None:
    if r.rtt is None:
        return None
    return _obj({"min_us": r.rtt.min_us, "max_us": r.rtt.max_us, "avg_us": r.rtt.avg_us,
                 "last_us": r.rtt.last_us})


def _drops_json(r: FlowRecord) -> str | None:
    d = r.drops
    if d is None:
        return None
    return _obj({"packets": d.packets, "bytes": d.bytes, "reason": d.reason,
                 "interface": d.interface, "netns": d.netns})


def _dns_json(r: FlowRecord) -> str | None:
    if not r.dns:
        return None
    return _obj([{"id": a.id, "name": a.name, "type": a.qtype, "rcode": a.rcode,
                  "latency_ns": a.latency_ns} for a in r.dns])


def _dns_text(r: FlowRecord) -> str:
    if not r.dns:
        return ""
    a = r.dns[-1]
    return f"{a.qtype} {a.name} {a.rcode} {format_duration(a.latency_ns)}"


def _dns_attr(attr: str) -> Callable[[FlowRecord], object]:
    def get(r: FlowRecord) -> object:
        return getattr(r.dns[-1], attr) if r.dns else None
    return get


def _tls_attr(attr: str) -> Callable[[FlowRecord], object]:
    def get(r: FlowRecord) -> object:
        if r.tls is None:
            return None
        value = getattr(r.tls, attr)
        if isinstance(value, tuple):
            value = ",".join(value)
        return value or None
    return get


def _tls_json(r: FlowRecord) -> str | None:
    t = r.tls
    if t is None:
        return None
    members: dict[str, object] = {}
    if t.sni:
        members["sni"] = t.sni
    if t.offered:
        members["offered"] = list(t.offered)
    if t.alpn:
        members["alpn"] = list(t.alpn)
    if t.version:
        members["version"] = t.version
    if t.cipher:
        members["cipher"] = t.cipher
    if t.server:  # which end is the server: the graph names it by the SNI (serve --tls)
        members["server"] = t.server
        members["port"] = t.port
    return _obj(members)


def _tls_text(r: FlowRecord) -> str:
    t = r.tls
    if t is None:
        return ""
    return " ".join(x for x in (t.sni, t.version or (t.offered[0] if t.offered else ""),
                                ",".join(t.alpn)) if x)


def schema(clock: Clock) -> Schema[FlowRecord]:
    """Every field of a flow record, in JSON key order."""
    icmp: Field[FlowRecord] = Field(
        "icmp", "ICMP", 9,
        lambda r: f"{r.icmp_type}/{r.icmp_code}" if r.icmp_type is not None else "",
        lambda r: _obj({"type": r.icmp_type, "code": r.icmp_code})
        if r.icmp_type is not None else None,
        (Column("icmp_type", "INTEGER", "ICMP type", lambda r: r.icmp_type),
         Column("icmp_code", "INTEGER", "ICMP code", lambda r: r.icmp_code)),
        default=False, doc="ICMP type and code")
    interfaces: Field[FlowRecord] = Field(
        "interfaces", "IFACES", 16, lambda r: ",".join(f"{n}:{d}" for n, d in r.interfaces),
        lambda r: _obj([{"name": n, "direction": d} for n, d in r.interfaces]),
        (Column("interfaces", "TEXT", "interfaces that saw the flow, first first, comma "
                "separated", lambda r: ",".join(n for n, _ in r.interfaces) or None),
         Column("directions", "TEXT", "ingress/egress per interface, same order",
                lambda r: ",".join(d for _, d in r.interfaces) or None)),
        doc="every interface and direction that saw the flow")
    rtt: Field[FlowRecord] = Field(
        "rtt", "RTT", 8, lambda r: format_duration(r.rtt.avg_us * 1000) if r.rtt else "",
        _rtt_json,
        (Column("rtt_min_us", "INTEGER", "smoothed RTT of the sending socket, minimum (µs)",
                lambda r: r.rtt.min_us if r.rtt else None),
         Column("rtt_avg_us", "INTEGER", "smoothed RTT, average over samples (µs)",
                lambda r: r.rtt.avg_us if r.rtt else None),
         Column("rtt_max_us", "INTEGER", "smoothed RTT, maximum (µs)",
                lambda r: r.rtt.max_us if r.rtt else None)),
        right=True, default=False, doc="smoothed RTT of the sending socket (--rtt)",
        group="rtt")
    drops: Field[FlowRecord] = Field(
        "drops", "DROPS", 22, lambda r: f"{r.drops.packets} {r.drops.reason}" if r.drops else "",
        _drops_json,
        (Column("drop_packets", "INTEGER", "packets the kernel dropped",
                lambda r: r.drops.packets if r.drops else None),
         Column("drop_bytes", "INTEGER", "bytes the kernel dropped",
                lambda r: r.drops.bytes if r.drops else None),
         Column("drop_reason", "TEXT", "latest drop reason (enum skb_drop_reason)",
                lambda r: r.drops.reason if r.drops else None)),
        default=False, doc="packets the kernel dropped, with its reason (--drops)",
        group="drops", total=lambda r: r.drops.packets if r.drops else 0)
    dns: Field[FlowRecord] = Field(
        "dns", "DNS", 40, _dns_text, _dns_json,
        (Column("dns_id", "INTEGER", "DNS transaction id (latest answer)", _dns_attr("id")),
         Column("dns_name", "TEXT", "DNS query name", _dns_attr("name")),
         Column("dns_type", "TEXT", "DNS query type (A, AAAA, ...)", _dns_attr("qtype")),
         Column("dns_rcode", "TEXT", "DNS response code (NOERROR, NXDOMAIN, ...)",
                _dns_attr("rcode")),
         Column("dns_latency_ns", "INTEGER", "query to response (ns)",
                _dns_attr("latency_ns"))),
        default=False, doc="DNS answers matched to their query (--dns)", group="dns")
    tls: Field[FlowRecord] = Field(
        "tls", "TLS", 30, _tls_text, _tls_json,
        (Column("tls_sni", "TEXT", "TLS server name (ClientHello SNI)", _tls_attr("sni")),
         Column("tls_offered", "TEXT", "TLS versions the client offered, comma separated",
                _tls_attr("offered")),
         Column("tls_alpn", "TEXT", "ALPN protocols the client offered, comma separated",
                _tls_attr("alpn")),
         Column("tls_version", "TEXT", "TLS version the server chose (ServerHello)",
                _tls_attr("version")),
         Column("tls_cipher", "TEXT", "cipher suite the server chose (ServerHello)",
                _tls_attr("cipher"))),
        default=False, doc="TLS server name, versions, ALPN and cipher suite (--tls)",
        group="tls")
    return Schema(
        fields=[
            table_only("time", "TIME", 8,
                       lambda r: clock.hms(clock.wall_ns(r.last_ns))[:8], "last packet"),
            _time("start", lambda r: r.first_ns, "first packet", clock),
            _time("end", lambda r: r.last_ns, "last packet", clock),
            number("ip", "IP", 2, lambda r: r.ip, "IP version, 4 or 6"),
            string("proto", "PROTO", 6, lambda r: r.protocol,
                   "tcp, udp, sctp, icmp, icmpv6 or the protocol number"),
            string("saddr", "SADDR", 15, lambda r: r.saddr, "source address"),
            number("sport", "SPORT", 5, lambda r: r.sport, "source port (0 for ICMP)"),
            string("daddr", "DADDR", 15, lambda r: r.daddr, "destination address"),
            number("dport", "DPORT", 5, lambda r: r.dport, "destination port (0 for ICMP)"),
            endpoint("src", "SRC", "saddr", "sport", "source", has_port=_has_port),
            endpoint("dst", "DST", "daddr", "dport", "destination", has_port=_has_port),
            number("bytes", "BYTES", 9, lambda r: r.bytes,
                   "bytes on the wire, Ethernet header included",
                   text=lambda r: human_bytes(r.bytes), total=True),
            number("packets", "PKTS", 6, lambda r: r.packets,
                   "packets on the wire (a GSO packet counts its segments)", total=True),
            table_only("flags", "FLAGS", 12, lambda r: ",".join(flag_names(r.tcp_flags & 0xFF)),
                       "TCP header flags seen"),
            Field("tcp_flags", "TCP_FLAGS", 20, lambda r: ",".join(flag_names(r.tcp_flags)),
                  lambda r: _obj(flag_names(r.tcp_flags)),
                  (Column("tcp_flags", "TEXT",
                          "TCP flags seen, comma separated (SYN, SYN_ACK, FIN, ...)",
                          lambda r: ",".join(flag_names(r.tcp_flags)) or None),),
                  doc="TCP flags seen, with SYN_ACK, FIN_ACK, RST_ACK"),
            number("dscp", "DSCP", 4, lambda r: r.dscp, "DSCP of the first packet"),
            interfaces,
            icmp,
            rtt,
            drops,
            dns,
            tls,
        ],
        defaults=("time", "src", "dst", "proto", "bytes", "packets", "flags", "interfaces"),
        sides=Sides(time="first_ns", remote=(("src", "saddr"), ("dst", "daddr")),
                    subjects=("src", "dst")),
        key=lambda r: r.five_tuple,
        order=lambda r: r.last_ns,
    )
