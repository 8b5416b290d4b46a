"""tcplife's records as traffic-graph observations (``podsight serve``, ``podsight graph``)."""

from __future__ import annotations

from collections.abc import Sequence

from podsight.analysis.graph import Connection
from podsight.gadgets.tcplife.schema import Conn
from podsight.identity.endpoint import Endpoint


def observe(records: Sequence[Conn]) -> list[Connection]:
    return [
        Connection(key=(r.cookie,), local=r.src or Endpoint.raw(r.saddr),
                   remote=r.dst or Endpoint.raw(r.daddr), local_port=r.sport,
                   remote_port=r.dport, role=r.role, open=r.state == "open",
                   start_ns=r.start_ns, ts_ns=r.ts_ns, sent=r.bytes_sent,
                   received=r.bytes_received)
        for r in records
    ]
