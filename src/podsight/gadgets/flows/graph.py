"""flows' records as traffic-graph observations: the TLS names of connections, so that
external peers are named by the server name their clients asked for (``--tls``), and
bytes on the wire, drops with their reason and DNS answers (``serve --flows``)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

from podsight.analysis.graph import DnsResponse, Drop, FlowBytes, Observation, TlsHello
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
