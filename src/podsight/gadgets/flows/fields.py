"""How a flow record reads in a table, in JSON and in SQLite (JSON keys and SQL columns
are a contract; docs/flows.md describes both)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from podsight.events import Field
from podsight.gadgets.flows.records import FlowRecord, flag_names
from podsight.identity import Endpoint
from podsight.timefmt import Clock, format_duration


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"


def _endpoint(ep: Endpoint | None, addr: str) -> Endpoint:
    return ep if ep is not None else Endpoint.raw(addr)


def _endpoint_json(ep: Endpoint | None, addr: str, port: int) -> str:
    e = _endpoint(ep, addr)
    return f'{{"addr":"{addr}","port":{port},"endpoint":"{e.notation}:{port}",{e.json_fragment}}}'


def to_json(r: FlowRecord, clock: Clock) -> str:
    """One flow as a JSON object (keys: start, end, ip, proto, saddr, sport, daddr, dport,
    src, dst, bytes, packets, tcp_flags, dscp, interfaces, and when present icmp, rtt,
    drops, dns)."""
    rest: dict[str, Any] = {
        "bytes": r.bytes,
        "packets": r.packets,
        "tcp_flags": flag_names(r.tcp_flags),
        "dscp": r.dscp,
        "interfaces": [{"name": n, "direction": d} for n, d in r.interfaces],
    }
    if r.icmp_type is not None:
        rest["icmp"] = {"type": r.icmp_type, "code": r.icmp_code}
    if r.rtt is not None:
        rest["rtt"] = {"min_us": r.rtt.min_us, "max_us": r.rtt.max_us, "avg_us": r.rtt.avg_us,
                       "last_us": r.rtt.last_us}
    if r.drops is not None:
        rest["drops"] = {"packets": r.drops.packets, "bytes": r.drops.bytes,
                         "reason": r.drops.reason, "interface": r.drops.interface,
                         "netns": r.drops.netns}
    if r.dns:
        rest["dns"] = [{"id": a.id, "name": a.name, "type": a.qtype, "rcode": a.rcode,
                        "latency_ns": a.latency_ns} for a in r.dns]
    tail = json.dumps(rest, separators=(",", ":"))[1:]
    return (
        f'{{"start":"{clock.rfc3339(clock.wall_ns(r.first_ns))}",'
        f'"end":"{clock.rfc3339(clock.wall_ns(r.last_ns))}","ip":{r.ip},'
        f'"proto":"{r.protocol}","saddr":"{r.saddr}","sport":{r.sport},'
        f'"daddr":"{r.daddr}","dport":{r.dport},'
        f'"src":{_endpoint_json(r.src, r.saddr, r.sport)},'
        f'"dst":{_endpoint_json(r.dst, r.daddr, r.dport)},{tail}'
    )


def _where(addr: str, port: int, ep: Endpoint | None, proto: int) -> str:
    e = _endpoint(ep, addr)
    return e.notation if proto in (1, 58) else e.with_port(port)


def _rtt(r: FlowRecord) -> str:
    return format_duration(r.rtt.avg_us * 1000) if r.rtt else ""


def _drops(r: FlowRecord) -> str:
    return f"{r.drops.packets} {r.drops.reason}" if r.drops else ""


def _dns(r: FlowRecord) -> str:
    if not r.dns:
        return ""
    a = r.dns[-1]
    return f"{a.qtype} {a.name} {a.rcode} {format_duration(a.latency_ns)}"


def _interfaces(r: FlowRecord) -> str:
    return ",".join(f"{n}:{d}" for n, d in r.interfaces)


def fields(clock: Clock) -> list[Field[FlowRecord]]:
    """Every column ``-o columns=`` can name."""
    return [
        Field("time", "TIME", 8, lambda r: clock.hms(clock.wall_ns(r.last_ns))[:8]),
        Field("src", "SRC", 28, lambda r: _where(r.saddr, r.sport, r.src, r.proto)),
        Field("dst", "DST", 28, lambda r: _where(r.daddr, r.dport, r.dst, r.proto)),
        Field("proto", "PROTO", 6, lambda r: r.protocol),
        Field("saddr", "SADDR", 15, lambda r: r.saddr, default=False),
        Field("sport", "SPORT", 5, lambda r: str(r.sport), right=True, default=False),
        Field("daddr", "DADDR", 15, lambda r: r.daddr, default=False),
        Field("dport", "DPORT", 5, lambda r: str(r.dport), right=True, default=False),
        Field("bytes", "BYTES", 9, lambda r: human_bytes(r.bytes), right=True),
        Field("packets", "PKTS", 6, lambda r: str(r.packets), right=True),
        Field("flags", "FLAGS", 12, lambda r: ",".join(flag_names(r.tcp_flags & 0xFF))),
        Field("dscp", "DSCP", 4, lambda r: str(r.dscp), right=True, default=False),
        Field("rtt", "RTT", 8, _rtt, right=True, default=False),
        Field("drops", "DROPS", 22, _drops, default=False),
        Field("dns", "DNS", 40, _dns, default=False),
        Field("interfaces", "IFACES", 16, _interfaces),
    ]


@dataclass(frozen=True)
class Column:
    """One SQLite column: name, SQL type, meaning, and how to read it from a record."""

    name: str
    sql_type: str
    doc: str
    value: Callable[[FlowRecord, Clock], object]


def _ep(side: str, attr: str) -> Callable[[FlowRecord, Clock], object]:
    def get(r: FlowRecord, clock: Clock) -> object:
        ep = r.src if side == "src" else r.dst
        addr = r.saddr if side == "src" else r.daddr
        e = _endpoint(ep, addr)
        if attr == "endpoint":
            return e.notation
        if attr == "workload":
            return f"{e.workload_kind}/{e.workload_name}" if e.workload_kind else None
        return getattr(e, attr) or None
    return get


def _identity_columns(side: str, who: str) -> list[Column]:
    return [
        Column(f"{side}_endpoint", "TEXT", f"{who}: p/ns/pod, s/ns/svc, n/node or r/ip",
               _ep(side, "endpoint")),
        Column(f"{side}_kind", "TEXT", f"{who}: pod, service, node or raw", _ep(side, "kind")),
        Column(f"{side}_namespace", "TEXT", f"{who}: Kubernetes namespace",
               _ep(side, "namespace")),
        Column(f"{side}_name", "TEXT", f"{who}: pod, service or node name", _ep(side, "name")),
        Column(f"{side}_workload", "TEXT", f"{who}: owning workload, as Kind/name",
               _ep(side, "workload")),
        Column(f"{side}_node", "TEXT", f"{who}: node the pod runs on", _ep(side, "node")),
    ]


def _dns_attr(attr: str) -> Callable[[FlowRecord, Clock], object]:
    def get(r: FlowRecord, clock: Clock) -> object:
        return getattr(r.dns[-1], attr) if r.dns else None
    return get


SQL_COLUMNS: list[Column] = [
    Column("start", "TEXT", "first packet, RFC 3339 UTC",
           lambda r, c: c.rfc3339(c.wall_ns(r.first_ns))),
    Column("end", "TEXT", "last packet, RFC 3339 UTC",
           lambda r, c: c.rfc3339(c.wall_ns(r.last_ns))),
    Column("start_ns", "INTEGER", "first packet, ns since the Unix epoch",
           lambda r, c: c.wall_ns(r.first_ns)),
    Column("end_ns", "INTEGER", "last packet, ns since the Unix epoch",
           lambda r, c: c.wall_ns(r.last_ns)),
    Column("ip", "INTEGER", "IP version, 4 or 6", lambda r, c: r.ip),
    Column("proto", "TEXT", "tcp, udp, sctp, icmp, icmpv6 or the protocol number",
           lambda r, c: r.protocol),
    Column("saddr", "TEXT", "source address", lambda r, c: r.saddr),
    Column("sport", "INTEGER", "source port (0 for ICMP)", lambda r, c: r.sport),
    Column("daddr", "TEXT", "destination address", lambda r, c: r.daddr),
    Column("dport", "INTEGER", "destination port (0 for ICMP)", lambda r, c: r.dport),
    *_identity_columns("src", "source"),
    *_identity_columns("dst", "destination"),
    Column("bytes", "INTEGER", "bytes on the wire, Ethernet header included",
           lambda r, c: r.bytes),
    Column("packets", "INTEGER", "packets on the wire (a GSO packet counts its segments)",
           lambda r, c: r.packets),
    Column("tcp_flags", "TEXT", "TCP flags seen, comma separated (SYN, SYN_ACK, FIN, ...)",
           lambda r, c: ",".join(flag_names(r.tcp_flags)) or None),
    Column("dscp", "INTEGER", "DSCP of the first packet", lambda r, c: r.dscp),
    Column("icmp_type", "INTEGER", "ICMP type", lambda r, c: r.icmp_type),
    Column("icmp_code", "INTEGER", "ICMP code", lambda r, c: r.icmp_code),
    Column("interfaces", "TEXT", "interfaces that saw the flow, first first, comma separated",
           lambda r, c: ",".join(n for n, _ in r.interfaces) or None),
    Column("directions", "TEXT", "ingress/egress per interface, same order",
           lambda r, c: ",".join(d for _, d in r.interfaces) or None),
    Column("rtt_min_us", "INTEGER", "smoothed RTT of the sending socket, minimum (µs)",
           lambda r, c: r.rtt.min_us if r.rtt else None),
    Column("rtt_avg_us", "INTEGER", "smoothed RTT, average over samples (µs)",
           lambda r, c: r.rtt.avg_us if r.rtt else None),
    Column("rtt_max_us", "INTEGER", "smoothed RTT, maximum (µs)",
           lambda r, c: r.rtt.max_us if r.rtt else None),
    Column("drop_packets", "INTEGER", "packets the kernel dropped",
           lambda r, c: r.drops.packets if r.drops else None),
    Column("drop_bytes", "INTEGER", "bytes the kernel dropped",
           lambda r, c: r.drops.bytes if r.drops else None),
    Column("drop_reason", "TEXT", "latest drop reason (enum skb_drop_reason)",
           lambda r, c: r.drops.reason if r.drops else None),
    Column("dns_id", "INTEGER", "DNS transaction id (latest answer)", _dns_attr("id")),
    Column("dns_name", "TEXT", "DNS query name", _dns_attr("name")),
    Column("dns_type", "TEXT", "DNS query type (A, AAAA, ...)", _dns_attr("qtype")),
    Column("dns_rcode", "TEXT", "DNS response code (NOERROR, NXDOMAIN, ...)", _dns_attr("rcode")),
    Column("dns_latency_ns", "INTEGER", "query to response (ns)", _dns_attr("latency_ns")),
]


def sql_row(r: FlowRecord, clock: Clock) -> tuple[object, ...]:
    return tuple(col.value(r, clock) for col in SQL_COLUMNS)
