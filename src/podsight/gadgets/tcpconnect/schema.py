"""A TCP connect attempt: its record, and how it reads in a table, in JSON and in SQLite.

The JSON keys are a contract (README, "trace tcpconnect"): time, pid, tid,
comm, uid, netns, ip, saddr, sport, daddr, dport, src, dst, result, errno,
latency_ns, syn_retries, in this order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from podsight.schema import (
    Column,
    Field,
    Schema,
    Sides,
    endpoint,
    json_string,
    k8s_fields,
    number,
    string,
    table_only,
)
from podsight.timefmt import Clock, format_duration

if TYPE_CHECKING:
    from podsight.identity import Endpoint


@dataclass(slots=True)
class Connect:
    """One TCP connect attempt and its outcome; ``src``/``dst`` are named by identity."""

    ts_ns: int  # CLOCK_BOOTTIME ns when the outcome was known
    pid: int
    tid: int
    comm: str
    uid: int
    netns: int
    cgroup_id: int
    ip: int
    saddr: str
    sport: int
    daddr: str
    dport: int
    result: str
    errno: int
    latency_ns: int
    syn_retries: int
    src: Endpoint | None = None
    dst: Endpoint | None = None


def _time(clock: Clock) -> Field[Any]:
    def as_json(r: Connect) -> str:
        return f'"{clock.rfc3339(clock.wall_ns(r.ts_ns))}"'

    return Field("time", "TIME", 12, lambda r: clock.hms(clock.wall_ns(r.ts_ns)), as_json,
                 (Column("time", "TEXT", "when the outcome was known, RFC 3339 UTC",
                         lambda r: clock.rfc3339(clock.wall_ns(r.ts_ns))),
                  Column("time_ns", "INTEGER", "when the outcome was known, ns since the epoch",
                         lambda r: clock.wall_ns(r.ts_ns))),
                 default=False, doc="when the outcome was known")


def schema(clock: Clock) -> Schema[Connect]:
    """Every field; the default table columns are those BCC's tcpconnect users expect."""
    return Schema(
        fields=[
            *k8s_fields("src"),
            _time(clock),
            number("pid", "PID", 7, lambda r: r.pid, "process (tgid) that connected",
                   default=True),
            number("tid", "TID", 7, lambda r: r.tid, "thread that connected"),
            Field("comm", "COMM", 16, lambda r: r.comm, lambda r: json_string(r.comm),
                  (Column("comm", "TEXT", "command name of the process", lambda r: r.comm),),
                  doc="command name of the process"),
            number("uid", "UID", 6, lambda r: r.uid, "user id of the process"),
            number("netns", "NETNS", 10, lambda r: r.netns, "network namespace inode"),
            number("ip", "IP", 2, lambda r: r.ip, "IP version, 4 or 6", default=True),
            string("saddr", "SADDR", 15, lambda r: r.saddr, "source address"),
            number("sport", "SPORT", 5, lambda r: r.sport,
                   "source port (0: the connect failed before one was bound)"),
            string("daddr", "DADDR", 15, lambda r: r.daddr, "destination address"),
            number("dport", "DPORT", 5, lambda r: r.dport, "destination port"),
            endpoint("src", "SRC", "saddr", "sport", "source"),
            endpoint("dst", "DST", "daddr", "dport", "destination"),
            table_only("latency", "LATENCY", 9, lambda r: format_duration(r.latency_ns),
                       "handshake time (or time until the failure)", right=True),
            string("result", "RESULT", 11, lambda r: r.result,
                   "ok, refused, timeout, unreachable, error, aborted or pending",
                   default=True),
            number("errno", "ERRNO", 5, lambda r: r.errno, "the socket's error, 0 if none"),
            number("latency_ns", "LATENCY_NS", 10, lambda r: r.latency_ns,
                   "handshake time in ns (pending: time waited so far)"),
            number("syn_retries", "RETRIES", 7, lambda r: r.syn_retries,
                   "SYNs sent again before the outcome"),
        ],
        sides=Sides(time="ts_ns", local=("src", "saddr", "netns", "cgroup_id"),
                    remote=(("dst", "daddr"),), subjects=("src",)),
        order=lambda r: r.ts_ns,
    )
