"""flows' records as traffic-graph observations: the TLS names of connections, so that
external peers are named by the server name their clients asked for (``--tls``)."""

from __future__ import annotations

from collections.abc import Sequence

from podsight.analysis.graph import TlsHello
from podsight.gadgets.flows.records import FlowRecord


def observe(records: Sequence[FlowRecord]) -> list[TlsHello]:
    out = []
    for r in records:
        t = r.tls
        if t is None or not t.sni:
            continue
        out.append(TlsHello(server_addr=t.server, port=t.port, sni=t.sni,
                            version=t.version or (t.offered[0] if t.offered else ""),
                            alpn=",".join(t.alpn), cipher=t.cipher, ts_ns=r.first_ns))
    return out
