"""A TCP connection as one side saw it: its record, and how it reads in a table, in JSON
and in SQLite.

The record is oriented from the local socket: ``src`` is the side that owns the socket
the record was read from (named by its process or network namespace), ``dst`` its peer;
``role`` says whether that side connected (client) or accepted (server).
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
class Conn:
    """One TCP connection, closed or still open, from one local socket."""

    ts_ns: int  # CLOCK_BOOTTIME ns: when it closed, or when it was read (open)
    start_ns: int  # when it was established (or first seen, if open before podsight)
    cookie: int  # the socket's cookie: the same connection across reads
    pid: int  # the connecting process (client side), 0 when not known
    comm: str
    netns: int
    cgroup_id: int
    ip: int
    saddr: str
    sport: int
    daddr: str
    dport: int
    role: str  # client | server | unknown
    state: str  # closed | open, or how a connect failed (--failed-connects): refused, ...
    bytes_sent: int  # sent by this side and acknowledged by the peer (tcp_sock.bytes_acked)
    bytes_received: int  # tcp_sock.bytes_received
    segs_out: int
    segs_in: int
    retrans: int
    rtt_us: int  # smoothed RTT, microseconds
    start_seen: bool  # established while podsight ran (else open before: start = seen at)
    src: Endpoint | None = None
    dst: Endpoint | None = None

    @property
    def duration_ns(self) -> int:
        return max(self.ts_ns - self.start_ns, 0)


def human_bytes(n: int) -> str:
    """``512B``, ``1.5K``, ``3.2M``, ``1.1G`` (powers of 1024)."""
    if n < 1024:
        return f"{n}B"
    value = float(n)
    for unit in ("K", "M", "G"):
        value /= 1024
        if value < 1024 or unit == "G":
            break
    return f"{value:.1f}{unit}"


def _time(name: str, get: Any, doc: str, clock: Clock, *, default: bool) -> Field[Any]:
    def as_json(r: Conn) -> str:
        return f'"{clock.rfc3339(clock.wall_ns(get(r)))}"'

    return Field(name, name.upper(), 12, lambda r: clock.hms(clock.wall_ns(get(r))), as_json,
                 (Column(name, "TEXT", f"{doc}, RFC 3339 UTC",
                         lambda r: clock.rfc3339(clock.wall_ns(get(r)))),
                  Column(f"{name}_ns", "INTEGER", f"{doc}, ns since the epoch",
                         lambda r: clock.wall_ns(get(r)))),
                 default=default, doc=doc)


def schema(clock: Clock) -> Schema[Conn]:
    return Schema(
        fields=[
            *k8s_fields("src"),
            _time("time", lambda r: r.ts_ns, "when it closed, or when it was read (open)",
                  clock, default=False),
            _time("start", lambda r: r.start_ns, "when it was established (or first seen)",
                  clock, default=False),
            number("pid", "PID", 7, lambda r: r.pid,
                   "process that connected (client side; 0 when not known)", default=True),
            Field("comm", "COMM", 16, lambda r: r.comm, lambda r: json_string(r.comm),
                  (Column("comm", "TEXT", "command name of the process", lambda r: r.comm),),
                  doc="command name of the process that connected"),
            number("netns", "NETNS", 10, lambda r: r.netns, "network namespace inode"),
            number("ip", "IP", 2, lambda r: r.ip, "IP version, 4 or 6", default=True),
            string("saddr", "SADDR", 15, lambda r: r.saddr, "local address"),
            number("sport", "SPORT", 5, lambda r: r.sport, "local port"),
            string("daddr", "DADDR", 15, lambda r: r.daddr, "peer address"),
            number("dport", "DPORT", 5, lambda r: r.dport, "peer port"),
            endpoint("src", "SRC", "saddr", "sport", "local side"),
            endpoint("dst", "DST", "daddr", "dport", "peer"),
            string("role", "ROLE", 6, lambda r: r.role,
                   "client (this side connected), server (it accepted) or unknown",
                   default=True),
            string("state", "STATE", 6, lambda r: r.state,
                   "closed or open; with --failed-connects, how a connect failed: refused, "
                   "timeout, unreachable, error or aborted", default=True),
            table_only("tx", "TX", 7, lambda r: human_bytes(r.bytes_sent),
                       "bytes sent and acknowledged", right=True),
            table_only("rx", "RX", 7, lambda r: human_bytes(r.bytes_received),
                       "bytes received", right=True),
            table_only("duration", "DURATION", 9, lambda r: format_duration(r.duration_ns),
                       "how long it lived (so far)", right=True),
            number("duration_ns", "DURATION_NS", 12, lambda r: r.duration_ns,
                   "how long it lived (open: so far), ns"),
            number("bytes_sent", "BYTES_SENT", 10, lambda r: r.bytes_sent,
                   "bytes sent by this side and acknowledged by the peer"),
            number("bytes_received", "BYTES_RECV", 10, lambda r: r.bytes_received,
                   "bytes received by this side"),
            number("segs_out", "SEGS_OUT", 8, lambda r: r.segs_out, "segments sent"),
            number("segs_in", "SEGS_IN", 8, lambda r: r.segs_in, "segments received"),
            number("retrans", "RETRANS", 7, lambda r: r.retrans, "segments retransmitted"),
            number("rtt_us", "RTT_US", 7, lambda r: r.rtt_us, "smoothed RTT, microseconds"),
            number("cookie", "COOKIE", 10, lambda r: r.cookie,
                   "the socket's cookie (one connection across reads)"),
            Field("start_seen", "SEEN", 4, lambda r: "yes" if r.start_seen else "no",
                  lambda r: "true" if r.start_seen else "false",
                  (Column("start_seen", "INTEGER",
                          "1: established while podsight ran; 0: open before (start is "
                          "when podsight first saw it)", lambda r: int(r.start_seen)),),
                  default=False,
                  doc="established while podsight ran (false: open before it started)"),
        ],
        sides=Sides(time="ts_ns", local=("src", "saddr", "netns", "cgroup_id"),
                    remote=(("dst", "daddr"),), subjects=("src",)),
        order=lambda r: r.ts_ns,
    )
