"""flows' records as traffic-graph observations: the TLS names of connections, so that
external peers are named by the server name their clients asked for (``--tls``), and
bytes on the wire, drops with their reason and DNS answers (``serve --flows``)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from podsight.analysis.graph import DnsResponse, Drop, FlowBytes, Observation, TlsHello
from podsight.analysis.recorded import columns as _columns
from podsight.analysis.recorded import endpoint as _endpoint
from podsight.analysis.recorded import wall_ns as _wall
from podsight.gadgets.flows.records import FlowRecord
from podsight.identity.endpoint import Endpoint


@lru_cache(maxsize=4096)
def _local_scope(addr: str) -> bool:
    """Multicast and link-local addresses (router solicitations, mDNS): no workload talks
    to them, and they would put every veth's link-local address in the graph."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return ip.is_multicast or ip.is_link_local


def observe(records: Sequence[FlowRecord]) -> list[Observation]:
    out: list[Observation] = []
    for r in records:
        if _local_scope(r.saddr) or _local_scope(r.daddr):
            continue
        src, dst = r.src or Endpoint.raw(r.saddr), r.dst or Endpoint.raw(r.daddr)
        if r.bytes:
            out.append(FlowBytes(src, dst, r.sport, r.dport, r.bytes, r.packets, r.last_ns))
        if r.drops is not None and r.drops.packets:
            out.append(Drop(src, dst, r.sport, r.dport, r.drops.reason, r.drops.packets,
                            r.last_ns))
        # An answer is joined to one direction of its flow: the client is the end that
        # is not port 53.
        client, addr, port = (src, r.saddr, r.sport) if r.dport == 53 else \
            (dst, r.daddr, r.dport)
        out.extend(DnsResponse(client, answer.rcode, answer.ts_ns, (addr, port, answer.id))
                   for answer in r.dns)
        t = r.tls
        if t is None or not t.sni:
            continue
        out.append(TlsHello(server_addr=t.server, port=t.port, sni=t.sni,
                            version=t.version or (t.offered[0] if t.offered else ""),
                            alpn=",".join(t.alpn), cipher=t.cipher, ts_ns=r.first_ns))
    return out


def observe_recorded(row: dict[str, Any]) -> list[Observation] | None:
    """One record written by ``podsight flows`` (a JSON line, or a SQLite row as a dict of
    its columns) as the observations :func:`observe` makes of it, or None if it is not
    a flow record: what ``kubectl podsight serve --flows/--tls`` feeds the graph with
    (the agents send JSON lines) and ``podsight graph --from`` reads. Times are
    wall-clock ns. A DNS answer's own time is not recorded: the flow's last packet
    stands for it. A SQLite row holds the latest DNS answer only, and no TLS server
    end, so TLS names come from JSON lines only."""
    if "packets" not in row or "bytes" not in row or "tcp_flags" not in row:
        return None
    saddr, daddr = str(row["saddr"]), str(row["daddr"])
    if _local_scope(saddr) or _local_scope(daddr):
        return []
    sport, dport = int(row["sport"]), int(row["dport"])
    json_row = isinstance(row.get("src"), dict)
    if json_row:
        src, dst = _endpoint(row["src"], saddr), _endpoint(row["dst"], daddr)
        first, last = _wall(row["start"]), _wall(row["end"])
        drops = row.get("drops") or {}
        drop_packets, reason = int(drops.get("packets") or 0), str(drops.get("reason") or "")
        answers = [(str(a.get("rcode") or ""), int(a.get("id") or 0))
                   for a in row.get("dns") or ()]
    else:
        src, dst = (_endpoint(_columns(row, side), addr)
                    for side, addr in (("src", saddr), ("dst", daddr)))
        first, last = int(row["start_ns"]), int(row["end_ns"])
        drop_packets, reason = int(row.get("drop_packets") or 0), str(row.get("drop_reason")
                                                                      or "")
        answers = [(str(row["dns_rcode"] or ""), int(row.get("dns_id") or 0))] \
            if row.get("dns_rcode") else []
    out: list[Observation] = []
    if row["bytes"]:
        out.append(FlowBytes(src, dst, sport, dport, int(row["bytes"]), int(row["packets"]),
                             last))
    if drop_packets:
        out.append(Drop(src, dst, sport, dport, reason, drop_packets, last))
    client, addr, port = (src, saddr, sport) if dport == 53 else (dst, daddr, dport)
    out.extend(DnsResponse(client, rcode, last, (addr, port, dns_id))
               for rcode, dns_id in answers)
    t = row.get("tls") if json_row else None
    if t and t.get("sni") and t.get("server"):
        offered = t.get("offered") or []
        out.append(TlsHello(server_addr=str(t["server"]), port=int(t.get("port") or 0),
                            sni=str(t["sni"]),
                            version=str(t.get("version") or (offered[0] if offered else "")),
                            alpn=",".join(t.get("alpn") or ()),
                            cipher=str(t.get("cipher") or ""), ts_ns=first))
    return out
