"""tcplife's records as traffic-graph observations (``podsight serve``, ``podsight graph``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from podsight.analysis.graph import (
    ClosedConnections,
    ConnectFailure,
    Connection,
    EdgeTotals,
    Observation,
)
from podsight.analysis.recorded import columns as _columns
from podsight.analysis.recorded import endpoint as _endpoint
from podsight.analysis.recorded import wall_ns as _wall
from podsight.gadgets.tcplife.schema import Conn
from podsight.gadgets.tcplife.tcplife import F_FAILED, F_OPEN
from podsight.identity.endpoint import Endpoint
from podsight.net.connects import FAILURES

# What names a record's ends and edge alike: (network namespace, cgroup, local address,
# peer address, family, role, the server's port).
_KEY = np.dtype([("netns", "<u4"), ("cgroup_id", "<u8"), ("saddr", "V16"),
                 ("daddr", "V16"), ("family", "<u2"), ("role", "u1"), ("port", "<u2")])


def observe(records: Sequence[Conn]) -> list[Connection | ConnectFailure]:
    return [
        ConnectFailure(src=r.src or Endpoint.raw(r.saddr), dst=r.dst or Endpoint.raw(r.daddr),
                       port=r.dport, result=r.state, ts_ns=r.ts_ns)
        if r.state in FAILURES else
        Connection(key=(r.cookie,), local=r.src or Endpoint.raw(r.saddr),
                   remote=r.dst or Endpoint.raw(r.daddr), local_port=r.sport,
                   remote_port=r.dport, role=r.role, open=r.state == "open",
                   start_ns=r.start_ns, ts_ns=r.ts_ns, sent=r.bytes_sent,
                   received=r.bytes_received)
        for r in records
    ]


def observe_raw(raw: np.ndarray, naming: Any) -> tuple[list[Observation], int]:
    """A raw batch as observations, and how many connections it held: kernel records
    (CONN_DTYPE, see :func:`observe_records`), or in aggregate mode (EDGE_DTYPE) those
    and the edges' sums (:func:`observe_edges`)."""
    if not raw.dtype.names or "rep" not in raw.dtype.names:
        return observe_records(raw, naming)
    single = raw["n"] == 0
    out, kept = observe_records(raw["rep"][single], naming)
    more, count = observe_edges(raw[~single], naming)
    return out + more, kept + count


def observe_edges(edges: np.ndarray, naming: Any) -> tuple[list[Observation], int]:
    """Edge sums read from the kernel (EDGE_DTYPE) as :class:`EdgeTotals`, each named
    once, as its newest connection (at the read: an address another pod took within one
    read interval names the edge by that pod)."""
    if not len(edges):
        return [], 0
    reps = edges["rep"]
    naming.sync(int(reps["ts_ns"].max()))
    decoded = naming.decode(reps)
    if len(decoded) != len(reps):  # the gadget's --role left some out
        keep = [bool(naming.decode(reps[i:i + 1])) for i in range(len(reps))]
        edges, reps = edges[keep], reps[keep]
    out: list[Observation] = []
    kept = 0
    for row, rep in zip(edges.tolist(), naming.admit(decoded), strict=True):
        if rep is None:
            continue
        _, n, persistent, duration, longest, first, buckets = row
        out.append(EdgeTotals(
            local=rep.src or Endpoint.raw(rep.saddr), remote=rep.dst or Endpoint.raw(rep.daddr),
            local_port=rep.sport, remote_port=rep.dport, role=rep.role, count=n,
            persistent=persistent, sent=rep.bytes_sent, received=rep.bytes_received,
            duration_ns=duration, duration_max_ns=longest, buckets=buckets.tolist(),
            first_ns=first, last_ns=rep.ts_ns))
        kept += n
    return out, kept


def observe_records(raw: np.ndarray, naming: Any) -> tuple[list[Observation], int]:
    """A ring batch of kernel records (CONN_DTYPE) as observations, and how many records
    were kept: the same as :func:`observe` of every record decoded and named, but
    decoded and named once per group of records with the same ends, role and server
    port (:class:`podsight.pipeline.RawNaming`), each group one
    :class:`ClosedConnections`. Records flagged open or failed, and those older than
    their group's naming holds, go one by one."""
    n = len(raw)
    if not n:
        return [], 0
    key = np.zeros(n, _KEY)
    for name in ("netns", "cgroup_id", "saddr", "daddr", "family", "role"):
        key[name] = raw[name]
    key["port"] = np.where(raw["role"] == 2, raw["sport"], raw["dport"])
    ts = raw["ts_ns"]
    _, first, inverse = np.unique(key.view(f"V{_KEY.itemsize}"), return_index=True,
                                  return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.lexsort((ts, inverse))  # by group, then by time
    ends = np.cumsum(np.bincount(inverse, minlength=len(first)))
    starts = ends - np.bincount(inverse, minlength=len(first))
    naming.sync(int(ts.max()))
    reps = raw[order[ends - 1]]  # the newest record of each group
    decoded = naming.decode(reps)
    if len(decoded) != len(reps):  # the gadget's --role left some out: one by one
        return _one_by_one(raw, naming)
    named = naming.admit(decoded)
    opened = (raw["flags"] & (F_OPEN | F_FAILED)) != 0
    out: list[Observation] = []
    kept = 0
    slow: list[np.ndarray] = []
    for g, rep in enumerate(named):
        members = order[starts[g]:ends[g]]
        since = naming.since(decoded[g])  # named (if not selected) as the newest one is
        cut = int(np.searchsorted(ts[members], since, side="left"))
        if cut:
            slow.append(members[:cut])
        bulk = members[cut:]
        if rep is None or not len(bulk):
            continue  # not selected, as the newest one is not
        if opened[bulk].any():
            slow.append(bulk[opened[bulk]])
            bulk = bulk[~opened[bulk]]
            if not len(bulk):
                continue
        rows = raw[bulk]
        out.append(ClosedConnections(
            local=rep.src or Endpoint.raw(rep.saddr), remote=rep.dst or Endpoint.raw(rep.daddr),
            local_port=rep.sport, remote_port=rep.dport, role=rep.role, cookie=rows["cookie"],
            start_ns=rows["start_ns"], ts_ns=rows["ts_ns"], sent=rows["bytes_acked"],
            received=rows["bytes_received"]))
        kept += len(bulk)
    if slow:
        one, count = _one_by_one(raw[np.sort(np.concatenate(slow))], naming)
        out[:0] = one
        kept += count
    return out, kept


def _one_by_one(raw: np.ndarray, naming: Any) -> tuple[list[Observation], int]:
    kept = [r for r in naming.admit(naming.decode(raw)) if r is not None]
    return list(observe(kept)), len(kept)


def observe_recorded(row: dict[str, Any]) -> Connection | ConnectFailure | None:
    """One record written by ``trace tcplife`` (a JSON line, or a SQLite row as a dict of
    its columns), or None if it is not one; a failed connect (``--failed-connects``) is
    a failure of its edge. Times are wall-clock ns here."""
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
    if row["state"] in FAILURES:
        return ConnectFailure(src=src, dst=dst, port=row["dport"], result=row["state"],
                              ts_ns=ts)
    return Connection(key=(row["cookie"],), local=src, remote=dst, local_port=row["sport"],
                      remote_port=row["dport"], role=row["role"],
                      open=row["state"] == "open", start_ns=start, ts_ns=ts,
                      sent=row["bytes_sent"], received=row["bytes_received"])
