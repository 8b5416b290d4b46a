"""tcpconnect's failed connects as traffic-graph observations (``podsight serve``, and
recorded ones for ``podsight graph --from`` and ``kubectl podsight serve``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from podsight.analysis.graph import ConnectFailure
from podsight.analysis.recorded import columns, endpoint, wall_ns
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


def observe_recorded(row: dict[str, Any]) -> ConnectFailure | None:
    """One failed connect written by ``trace tcpconnect`` (a JSON line, or a SQLite row as
    a dict of its columns); None for anything else (a success, another gadget's record).
    Times are wall-clock ns here."""
    result = row.get("result")
    if "role" in row or not isinstance(result, str) or result in NOT_FAILED:
        return None
    if isinstance(row.get("src"), dict):  # JSON
        return ConnectFailure(src=endpoint(row["src"], row["saddr"]),
                              dst=endpoint(row["dst"], row["daddr"]), port=int(row["dport"]),
                              result=result, ts_ns=wall_ns(row["time"]))
    if "saddr" not in row or "time_ns" not in row:
        return None
    return ConnectFailure(src=endpoint(columns(row, "src"), row["saddr"]),
                          dst=endpoint(columns(row, "dst"), row["daddr"]),
                          port=int(row["dport"]), result=result, ts_ns=int(row["time_ns"]))
