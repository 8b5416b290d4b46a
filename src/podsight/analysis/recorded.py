"""Records read back from what a gadget wrote (JSON lines, SQLite rows) for the graph.

``podsight graph --from`` and ``kubectl podsight serve`` rebuild graph observations from
recorded records through each gadget's ``graph_recorded`` adapter; the endpoint objects
and times in those records have one shape for every gadget (:func:`podsight.schema.endpoint`
writes them), so reading them back lives here, once, not in each gadget.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from podsight.identity.endpoint import Endpoint


def endpoint(obj: dict[str, Any], addr: str) -> Endpoint:
    """An endpoint as the JSON object (or SQLite columns) of a record named it."""
    kind = obj.get("kind") or "raw"
    workload = obj.get("workload") or {}
    name = obj.get("pod") or obj.get("service") or obj.get("name") or (
        obj.get("node") if kind == "node" else "") or ""
    return Endpoint(kind=kind, addr=addr, namespace=obj.get("namespace") or "", name=name,
                    node=obj.get("node") or "", workload_kind=workload.get("kind", ""),
                    workload_name=workload.get("name", ""))


def columns(row: dict[str, Any], side: str) -> dict[str, Any]:
    """One end's SQLite columns (``src_kind``, ``src_namespace``, ...) as its JSON object."""
    workload = row.get(f"{side}_workload") or ""
    kind, _, name = workload.partition("/")
    return {"kind": row.get(f"{side}_kind"), "namespace": row.get(f"{side}_namespace"),
            "name": row.get(f"{side}_name"), "node": row.get(f"{side}_node"),
            "workload": {"kind": kind, "name": name} if workload else {}}


def wall_ns(text: str) -> int:
    """An RFC 3339 UTC time (``2026-11-30T10:20:53.123456789Z``) as ns since the epoch."""
    seconds, _, frac = text.rstrip("Z").partition(".")
    whole = int(datetime.fromisoformat(seconds + "+00:00").timestamp())
    return whole * 1_000_000_000 + int((frac or "0").ljust(9, "0")[:9])
