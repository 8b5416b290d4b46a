"""tcplife's records as traffic-graph observations (``podsight serve``, ``podsight graph``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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


def _endpoint(obj: dict[str, Any], addr: str) -> Endpoint:
    """An endpoint as the JSON object (or SQLite columns) of a record named it."""
    kind = obj.get("kind") or "raw"
    workload = obj.get("workload") or {}
    name = obj.get("pod") or obj.get("service") or obj.get("name") or (
        obj.get("node") if kind == "node" else "") or ""
    return Endpoint(kind=kind, addr=addr, namespace=obj.get("namespace") or "", name=name,
                    node=obj.get("node") or "", workload_kind=workload.get("kind", ""),
                    workload_name=workload.get("name", ""))


def observe_recorded(row: dict[str, Any]) -> Connection | None:
    """One record written by ``trace tcplife`` (a JSON line, or a SQLite row as a dict of
    its columns), or None if it is not one. Times are wall-clock ns here."""
    if "role" not in row or "bytes_sent" not in row or "state" not in row:
        return None
    if isinstance(row.get("src"), dict):  # JSON
        src, dst = _endpoint(row["src"], row["saddr"]), _endpoint(row["dst"], row["daddr"])
        ts = _wall(row["time"])
        start = ts - int(row["duration_ns"])
    else:  # SQLite columns
        src, dst = (_endpoint(_columns(row, side), row[addr])
                    for side, addr in (("src", "saddr"), ("dst", "daddr")))
        ts, start = int(row["time_ns"]), int(row["start_ns"])
    return Connection(key=(row["cookie"],), local=src, remote=dst, local_port=row["sport"],
                      remote_port=row["dport"], role=row["role"],
                      open=row["state"] == "open", start_ns=start, ts_ns=ts,
                      sent=row["bytes_sent"], received=row["bytes_received"])


def _columns(row: dict[str, Any], side: str) -> dict[str, Any]:
    workload = row.get(f"{side}_workload") or ""
    kind, _, name = workload.partition("/")
    return {"kind": row.get(f"{side}_kind"), "namespace": row.get(f"{side}_namespace"),
            "name": row.get(f"{side}_name"), "node": row.get(f"{side}_node"),
            "workload": {"kind": kind, "name": name} if workload else {}}


def _wall(text: str) -> int:
    from datetime import datetime

    seconds, _, frac = text.rstrip("Z").partition(".")
    whole = int(datetime.fromisoformat(seconds + "+00:00").timestamp())
    return whole * 1_000_000_000 + int((frac or "0").ljust(9, "0")[:9])
