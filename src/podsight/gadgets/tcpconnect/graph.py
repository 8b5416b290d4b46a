"""tcpconnect's failed connects as traffic-graph observations (``podsight serve``)."""

from __future__ import annotations

from collections.abc import Sequence

from podsight.analysis.graph import ConnectFailure
from podsight.gadgets.tcpconnect.schema import Connect
from podsight.identity.endpoint import Endpoint

#: Outcomes that are not failures: a success, and an attempt still waiting at the end.
NOT_FAILED = ("ok", "pending")


def observe(records: Sequence[Connect]) -> list[ConnectFailure]:
    return [
        ConnectFailure(src=r.src or Endpoint.raw(r.saddr), dst=r.dst or Endpoint.raw(r.daddr),
                       port=r.dport, result=r.result, ts_ns=r.ts_ns)
        for r in records if r.result not in NOT_FAILED
    ]
