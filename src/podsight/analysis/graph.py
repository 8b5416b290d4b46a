"""The traffic graph: who talks to whom, aggregated per (source, destination, port).

Gadgets feed it *observations* through a small adapter in their own folder
(``GadgetSpec.extra["graph"]``: ``"module:function"`` turning a batch of their records
into observations), so this module knows no gadget:

- :class:`Connection`: one TCP connection, closed or still open, seen from one side;
- :class:`ConnectFailure`: a connect that did not succeed (refused, timeout, ...);
- :class:`TlsHello`: the TLS names and versions of a connection to a server.

Nodes are workloads (a pod's top owner, else the pod), Services, Nodes and external
peers; external peers are named by the TLS server name seen for their address, else by
their address (or its ``--aggregate-cidr`` network). An edge is (source node,
destination node, destination port); sources and destinations are clients and servers.

Each connection is counted once: from its client's record, or from its server's when the
client is outside the cluster (not a pod, a node or a Service: no agent sees its side).
Open connections are followed by their key (socket cookie) between reads, so counters
only grow and a connection closed between two reads is counted once with its final
bytes. Memory is bounded by the number of edges and the connections open now.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from podsight.identity.endpoint import Endpoint

#: Histogram buckets of connection durations, seconds (Prometheus ``le``).
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0,
                    1800.0, 3600.0)

#: An open connection not read again for this long is forgotten (its close was lost).
FORGET_OPEN_NS = 300 * 10**9


# -- observations ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Connection:
    """A TCP connection seen from one side: ``local`` owns the socket."""

    key: tuple[Any, ...]  # the same connection across reads (host, socket cookie)
    local: Endpoint
    remote: Endpoint
    local_port: int
    remote_port: int
    role: str  # client | server | unknown
    open: bool
    start_ns: int
    ts_ns: int
    sent: int  # payload bytes sent by the local side
    received: int


@dataclass(frozen=True, slots=True)
class ConnectFailure:
    src: Endpoint
    dst: Endpoint
    port: int
    result: str  # refused | timeout | unreachable | error | aborted
    ts_ns: int


@dataclass(frozen=True, slots=True)
class TlsHello:
    """TLS seen on a connection to ``server_addr:port`` (ClientHello and/or ServerHello)."""

    server_addr: str
    port: int
    sni: str
    version: str
    alpn: str
    cipher: str
    ts_ns: int


@dataclass(frozen=True, slots=True)
class FlowBytes:
    """Bytes and packets on the wire of one flow direction (headers included)."""

    src: Endpoint
    dst: Endpoint
    sport: int
    dport: int
    bytes: int
    packets: int
    ts_ns: int


@dataclass(frozen=True, slots=True)
class Drop:
    """Packets of a flow the kernel dropped, with its reason."""

    src: Endpoint
    dst: Endpoint
    sport: int
    dport: int
    reason: str
    packets: int
    ts_ns: int


@dataclass(frozen=True, slots=True)
class DnsResponse:
    """A DNS answer to a client; ``key`` (client address and port, DNS id) counts an answer
    seen twice (before and after a Service's DNAT) once."""

    client: Endpoint
    rcode: str
    ts_ns: int
    key: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class ClosedConnections:
    """Closed connections with the same ends, ports and role, as columns (a batch of kernel
    records aggregated before identity: ``local``/``remote`` name every one of them).

    The graph counts them exactly as it counts one :class:`Connection` each (closed, not
    open); those it follows as open (their key read before) it takes one by one.
    ``cookie``, ``start_ns``, ``ts_ns``, ``sent``, ``received``: equal-length integer
    arrays (numpy), one element per connection.
    """

    local: Endpoint
    remote: Endpoint
    local_port: int
    remote_port: int
    role: str
    cookie: Any
    start_ns: Any
    ts_ns: Any
    sent: Any
    received: Any

    def __len__(self) -> int:
        return len(self.cookie)

    def one(self, i: int) -> Connection:
        return Connection((int(self.cookie[i]),), self.local, self.remote, self.local_port,
                          self.remote_port, self.role, False, int(self.start_ns[i]),
                          int(self.ts_ns[i]), int(self.sent[i]), int(self.received[i]))


@dataclass(frozen=True, slots=True)
class EdgeTotals:
    """Closed connections already summed (in the kernel) per ends, server port and role,
    named once: the graph counts them as it would count each as a :class:`Connection`
    (closed, never read open). ``buckets``: counts per DURATION_BUCKETS bucket, then
    +Inf; times are boot-clock ns."""

    local: Endpoint
    remote: Endpoint
    local_port: int
    remote_port: int
    role: str
    count: int
    persistent: int
    sent: int
    received: int
    duration_ns: int
    duration_max_ns: int
    buckets: list[int]
    first_ns: int
    last_ns: int


Observation = (Connection | ConnectFailure | TlsHello | FlowBytes | Drop | DnsResponse
               | ClosedConnections | EdgeTotals)


# -- nodes ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Node:
    id: str
    title: str
    namespace: str
    kind: str  # workload | pod | service | node | external


def _in_cluster(ep: Endpoint) -> bool:
    return ep.kind in ("pod", "node", "service")


# -- edges ------------------------------------------------------------------------------------

@dataclass(slots=True)
class Edge:
    source: Node
    target: Node
    port: int
    opened: int = 0
    closed: int = 0
    active: int = 0
    persistent: int = 0
    short: int = 0
    bytes_sent: int = 0  # source -> target (client to server)
    bytes_received: int = 0  # target -> source
    duration_sum: float = 0.0  # seconds, closed connections (duration_ns / 1e9)
    duration_max: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))
    failures: dict[str, int] = field(default_factory=dict)
    first_ns: int = 0  # wall-clock ns
    last_ns: int = 0
    flow_bytes: int = 0  # on the wire, both directions, headers included (flows)
    drops: dict[str, int] = field(default_factory=dict)  # reason -> packets
    duration_ns: int = 0  # the exact sum behind duration_sum (any order of adding agrees)

    @property
    def id(self) -> str:
        return f"{self.source.id}->{self.target.id}:{self.port}"

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def seen(self, wall_ns: int) -> None:
        if not self.first_ns or wall_ns < self.first_ns:
            self.first_ns = wall_ns
        self.last_ns = max(self.last_ns, wall_ns)


@dataclass(slots=True)
class _Open:
    edge: Edge
    sent: int
    received: int
    persistent: bool
    last_ns: int


# -- the graph --------------------------------------------------------------------------------

class Graph:
    """The aggregated graph; thread safe (gadgets add from their runs, HTTP reads)."""

    def __init__(self, *, persistent_ns: int = 10 * 10**9, aggregate_cidr: int | None = None,
                 aggregate_cidr6: int | None = None, boot_offset_ns: int = 0) -> None:
        self.persistent_ns = persistent_ns
        self.aggregate_cidr = aggregate_cidr
        self.aggregate_cidr6 = aggregate_cidr6
        self.offset_ns = boot_offset_ns  # boot -> wall clock
        self.edges: dict[tuple[str, str, int], Edge] = {}
        self._open: dict[tuple[Any, ...], _Open] = {}
        self._tls: dict[str, TlsHello] = {}  # server address -> last TLS seen
        self._nodes: dict[Any, Node] = {}
        self.lock = threading.Lock()
        self.observations = 0
        self.dns: dict[Node, dict[str, int]] = {}  # client node -> rcode -> answers
        self._dns_seen: dict[tuple[Any, ...], None] = {}  # recent answers, oldest first

    # -- naming ------------------------------------------------------------------------

    def node(self, ep: Endpoint) -> Node:
        """The graph node of an endpoint: workload, pod, Service, Node or external peer
        (by address here; named by TLS or network when read, see :meth:`snapshot`)."""
        if ep.kind == "raw":
            return Node(f"x/{ep.addr}", ep.addr, "", "external")
        key = (ep.kind, ep.namespace, ep.name, ep.workload_kind, ep.workload_name)
        node = self._nodes.get(key)
        if node is None:
            if ep.kind == "pod" and ep.workload_name:
                node = Node(f"w/{ep.namespace}/{ep.workload_name}", ep.workload_name,
                            ep.namespace, "workload")
            elif ep.kind == "pod":
                node = Node(f"p/{ep.namespace}/{ep.name}", ep.name, ep.namespace, "pod")
            elif ep.kind == "service":
                node = Node(f"s/{ep.namespace}/{ep.name}", ep.name, ep.namespace, "service")
            else:
                node = Node(f"n/{ep.name}", ep.name, "", "node")
            self._nodes[key] = node
        return node

    def _named(self, node: Node) -> Node:
        """An external peer as shown: its TLS server name, else its address or network."""
        if node.kind != "external":
            return node
        tls = self._tls.get(node.title)
        name = tls.sni if tls is not None and tls.sni else self._external(node.title)
        return Node(f"x/{name}", name, "", "external")

    def _external(self, addr: str) -> str:
        bits = self.aggregate_cidr6 if ":" in addr else self.aggregate_cidr
        if bits is None:
            return addr
        try:
            return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))
        except ValueError:
            return addr

    def _edge(self, src: Node, dst: Node, port: int) -> Edge:
        key = (src.id, dst.id, port)
        edge = self.edges.get(key)
        if edge is None:
            edge = self.edges[key] = Edge(src, dst, port)
        return edge

    # -- adding --------------------------------------------------------------------------

    def add(self, observations: Iterable[Observation]) -> None:
        with self.lock:
            for o in observations:
                self.observations += 1
                if isinstance(o, Connection):
                    self._connection(o)
                elif isinstance(o, ClosedConnections):
                    self.observations += len(o) - 1
                    self._closed(o)
                elif isinstance(o, EdgeTotals):
                    self.observations += o.count - 1
                    self._totals(o)
                elif isinstance(o, ConnectFailure):
                    edge = self._edge(self.node(o.src), self.node(o.dst), o.port)
                    edge.failures[o.result] = edge.failures.get(o.result, 0) + 1
                    edge.seen(o.ts_ns + self.offset_ns)
                elif isinstance(o, TlsHello):
                    self._tls[o.server_addr] = o
                elif isinstance(o, FlowBytes):
                    edge = self._oriented(o.src, o.dst, o.sport, o.dport)
                    edge.flow_bytes += o.bytes
                    edge.seen(o.ts_ns + self.offset_ns)
                elif isinstance(o, Drop):
                    edge = self._oriented(o.src, o.dst, o.sport, o.dport)
                    edge.drops[o.reason] = edge.drops.get(o.reason, 0) + o.packets
                    edge.seen(o.ts_ns + self.offset_ns)
                else:
                    if o.key:
                        if o.key in self._dns_seen:
                            continue
                        if len(self._dns_seen) >= 65536:
                            self._dns_seen.pop(next(iter(self._dns_seen)))
                        self._dns_seen[o.key] = None
                    counts = self.dns.setdefault(self.node(o.client), {})
                    counts[o.rcode] = counts.get(o.rcode, 0) + 1

    def _oriented(self, src: Endpoint, dst: Endpoint, sport: int, dport: int) -> Edge:
        """The edge a packet belongs to, client to server: the edge connections made, in
        either direction, else the lower port taken as the server's."""
        a, b = self.node(src), self.node(dst)
        if (a.id, b.id, dport) in self.edges:
            return self.edges[(a.id, b.id, dport)]
        if (b.id, a.id, sport) in self.edges:
            return self.edges[(b.id, a.id, sport)]
        return self._edge(a, b, dport) if dport <= sport else self._edge(b, a, sport)

    def _connection(self, c: Connection) -> None:
        if c.role == "server":
            if _in_cluster(c.remote):
                return  # its client's side is seen (here or by the agent of its node)
            src, dst, port, sent, received = c.remote, c.local, c.local_port, c.received, \
                c.sent
        else:
            src, dst, port, sent, received = c.local, c.remote, c.remote_port, c.sent, \
                c.received
        wall = c.ts_ns + self.offset_ns
        held = self._open.get(c.key)
        if held is None:
            edge = self._edge(self.node(src), self.node(dst), port)
            edge.opened += 1
            held = _Open(edge, 0, 0, False, wall)
            if c.open:
                edge.active += 1
                self._open[c.key] = held
        else:
            edge = held.edge
        edge.bytes_sent += max(sent - held.sent, 0)
        edge.bytes_received += max(received - held.received, 0)
        held.sent, held.received, held.last_ns = max(sent, held.sent), \
            max(received, held.received), wall
        duration = max(c.ts_ns - c.start_ns, 0)
        if duration > self.persistent_ns and not held.persistent:
            held.persistent = True
            edge.persistent += 1
        edge.seen(wall)
        if c.open:
            return
        if c.key in self._open:
            del self._open[c.key]
            edge.active -= 1
        edge.closed += 1
        if not held.persistent:
            edge.short += 1
        seconds = duration / 1e9
        edge.duration_ns += duration
        edge.duration_sum = edge.duration_ns / 1e9
        edge.duration_max = max(edge.duration_max, seconds)
        for i, le in enumerate(DURATION_BUCKETS):
            if seconds <= le:
                edge.buckets[i] += 1
                break

    def _closed(self, g: ClosedConnections) -> None:
        """:meth:`_connection` for each of ``g``, in bulk for those not followed as open."""
        import numpy as np

        if g.role == "server":
            if _in_cluster(g.remote):
                return
            src, dst, port, sent, received = g.remote, g.local, g.local_port, g.received, \
                g.sent
        else:
            src, dst, port, sent, received = g.local, g.remote, g.remote_port, g.sent, \
                g.received
        ts = g.ts_ns
        if self._open:
            held = self._open
            followed = np.fromiter(((c,) in held for c in g.cookie.tolist()), bool, len(g))
            if followed.any():
                for i in np.flatnonzero(followed).tolist():
                    self._connection(g.one(i))
                bulk = ~followed
                ts, sent, received = ts[bulk], sent[bulk], received[bulk]
                start = g.start_ns[bulk]
                if not len(ts):
                    return
            else:
                start = g.start_ns
        else:
            start = g.start_ns
        n = len(ts)
        edge = self._edge(self.node(src), self.node(dst), port)
        duration = np.maximum(ts.astype(np.int64) - start.astype(np.int64), 0)
        persistent = int(np.count_nonzero(duration > self.persistent_ns))
        edge.opened += n
        edge.closed += n
        edge.persistent += persistent
        edge.short += n - persistent
        edge.bytes_sent += int(sent.sum(dtype=np.uint64))
        edge.bytes_received += int(received.sum(dtype=np.uint64))
        edge.duration_ns += int(duration.sum())
        edge.duration_sum = edge.duration_ns / 1e9
        edge.duration_max = max(edge.duration_max, int(duration.max()) / 1e9)
        slot = np.searchsorted(np.asarray(DURATION_BUCKETS), duration / 1e9, side="left")
        counts = np.bincount(slot, minlength=len(DURATION_BUCKETS) + 1).tolist()
        edge.buckets = [a + b for a, b in zip(edge.buckets, counts, strict=False)]
        edge.seen(int(ts.min()) + self.offset_ns)
        edge.seen(int(ts.max()) + self.offset_ns)

    def _totals(self, t: EdgeTotals) -> None:
        """:meth:`_connection` for ``t.count`` closed connections at once."""
        if t.role == "server":
            if _in_cluster(t.remote):
                return
            src, dst, port, sent, received = t.remote, t.local, t.local_port, t.received, \
                t.sent
        else:
            src, dst, port, sent, received = t.local, t.remote, t.remote_port, t.sent, \
                t.received
        edge = self._edge(self.node(src), self.node(dst), port)
        edge.opened += t.count
        edge.closed += t.count
        edge.persistent += t.persistent
        edge.short += t.count - t.persistent
        edge.bytes_sent += sent
        edge.bytes_received += received
        edge.duration_ns += t.duration_ns
        edge.duration_sum = edge.duration_ns / 1e9
        edge.duration_max = max(edge.duration_max, t.duration_max_ns / 1e9)
        edge.buckets = [a + b for a, b in zip(edge.buckets, t.buckets, strict=False)]
        edge.seen(t.first_ns + self.offset_ns)
        edge.seen(t.last_ns + self.offset_ns)

    def forget_stale(self, now_wall_ns: int) -> int:
        """Open connections not read again for FORGET_OPEN_NS (their close was lost)."""
        with self.lock:
            stale = [k for k, h in self._open.items() if now_wall_ns - h.last_ns > FORGET_OPEN_NS]
            for k in stale:
                self._open.pop(k).edge.active -= 1
            return len(stale)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    # -- reading -------------------------------------------------------------------------

    def snapshot(self) -> list[Edge]:
        """A copy of every edge, consistent at one moment, with external peers named (TLS
        name, else address or --aggregate-cidr network) and edges to one name merged."""
        with self.lock:
            out: dict[tuple[str, str, int], Edge] = {}
            for e in self.edges.values():
                src, dst = self._named(e.source), self._named(e.target)
                key = (src.id, dst.id, e.port)
                m = out.get(key)
                if m is None:
                    out[key] = Edge(src, dst, e.port, e.opened, e.closed, e.active,
                                    e.persistent, e.short, e.bytes_sent, e.bytes_received,
                                    e.duration_sum, e.duration_max, list(e.buckets),
                                    dict(e.failures), e.first_ns, e.last_ns, e.flow_bytes,
                                    dict(e.drops), e.duration_ns)
                    continue
                m.flow_bytes += e.flow_bytes
                for reason, n in e.drops.items():
                    m.drops[reason] = m.drops.get(reason, 0) + n
                m.opened += e.opened
                m.closed += e.closed
                m.active += e.active
                m.persistent += e.persistent
                m.short += e.short
                m.bytes_sent += e.bytes_sent
                m.bytes_received += e.bytes_received
                m.duration_ns += e.duration_ns
                m.duration_sum = m.duration_ns / 1e9
                m.duration_max = max(m.duration_max, e.duration_max)
                m.buckets = [a + b for a, b in zip(m.buckets, e.buckets, strict=True)]
                for result, n in e.failures.items():
                    m.failures[result] = m.failures.get(result, 0) + n
                if e.first_ns:
                    m.seen(e.first_ns)
                m.last_ns = max(m.last_ns, e.last_ns)
            return list(out.values())

    def dns_snapshot(self) -> dict[Node, dict[str, int]]:
        with self.lock:
            return {n: dict(c) for n, c in self.dns.items()}

    def tls_of(self, addr: str) -> TlsHello | None:
        with self.lock:
            return self._tls.get(addr)


# -- queries (the Node Graph API's parameters, as k8spacket takes them) -----------------------

@dataclass(frozen=True)
class Query:
    stats: str = "connection"  # connection | bytes | duration
    namespace: str | None = None
    include: Any = None  # compiled regex or None
    exclude: Any = None
    from_ms: int | None = None
    to_ms: int | None = None


def select(edges: Sequence[Edge], q: Query) -> list[Edge]:
    """The edges a query keeps: an end in ``namespace``; an end whose id or title matches
    ``include`` and none matching ``exclude``; active between ``from`` and ``to``."""
    out = []
    for e in edges:
        ends = (e.source, e.target)
        if q.namespace is not None and all(n.namespace != q.namespace for n in ends):
            continue
        if q.include is not None and not any(q.include.search(n.id) or q.include.search(n.title)
                                             for n in ends):
            continue
        if q.exclude is not None and any(q.exclude.search(n.id) or q.exclude.search(n.title)
                                         for n in ends):
            continue
        if q.from_ms is not None and e.last_ns // 1_000_000 < q.from_ms:
            continue
        if q.to_ms is not None and e.first_ns // 1_000_000 > q.to_ms:
            continue
        out.append(e)
    return out


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.1f} ms"
    if s < 120:
        return f"{s:.2f} s"
    return f"{s / 60:.1f} min"


EDGE_FIELDS = [
    {"field_name": "id", "type": "string"},
    {"field_name": "source", "type": "string"},
    {"field_name": "target", "type": "string"},
    {"field_name": "mainStat", "type": "string"},
    {"field_name": "secondaryStat", "type": "string"},
    {"field_name": "detail__port", "type": "number", "displayName": "Port"},
    {"field_name": "detail__connections", "type": "number", "displayName": "Connections"},
    {"field_name": "detail__active", "type": "number", "displayName": "Open now"},
    {"field_name": "detail__persistent", "type": "number", "displayName": "Persistent"},
    {"field_name": "detail__failed", "type": "number", "displayName": "Failed connects"},
    {"field_name": "detail__dropped", "type": "number", "displayName": "Dropped packets"},
    {"field_name": "detail__bytes_sent", "type": "number", "displayName": "Bytes sent"},
    {"field_name": "detail__bytes_received", "type": "number",
     "displayName": "Bytes received"},
    {"field_name": "detail__duration_avg", "type": "number",
     "displayName": "Average duration (s)"},
    {"field_name": "detail__duration_max", "type": "number",
     "displayName": "Max duration (s)"},
]

ARCS = {
    "connection": (("ok", "green", "Connections that succeeded"),
                   ("failed", "red", "Failed connects")),
    "bytes": (("sent", "blue", "Bytes sent"), ("received", "purple", "Bytes received")),
    "duration": (("short", "yellow", "Short-lived connections"),
                 ("persistent", "green", "Persistent connections")),
}


def node_fields(stats: str) -> list[dict[str, str]]:
    return [
        {"field_name": "id", "type": "string"},
        {"field_name": "title", "type": "string"},
        {"field_name": "subTitle", "type": "string"},
        {"field_name": "mainStat", "type": "string"},
        {"field_name": "secondaryStat", "type": "string"},
        *({"field_name": f"arc__{name}", "type": "number", "color": color,
           "displayName": text} for name, color, text in ARCS[stats]),
        {"field_name": "detail__kind", "type": "string", "displayName": "Kind"},
        {"field_name": "detail__namespace", "type": "string", "displayName": "Namespace"},
    ]


def fields(stats: str = "connection") -> dict[str, Any]:
    """``/api/graph/fields``."""
    return {"edges_fields": EDGE_FIELDS, "nodes_fields": node_fields(stats)}


def _edge_stats(e: Edge, stats: str) -> tuple[str, str]:
    if stats == "bytes":
        return (f"{human_bytes(e.bytes_sent)} sent",
                f"{human_bytes(e.bytes_received)} received")
    if stats == "duration":
        avg = e.duration_sum / e.closed if e.closed else 0.0
        return f"avg {human_seconds(avg)}", f"max {human_seconds(e.duration_max)}"
    return f"{e.opened} conns", f"{e.failed} failed" if e.failed else f"{e.active} open"


def data(edges: Sequence[Edge], q: Query) -> dict[str, list[dict[str, Any]]]:
    """``/api/graph/data`` (and ``/api/graph.json``): nodes and edges for a query."""
    kept = select(edges, q)
    nodes: dict[str, dict[str, Any]] = {}
    totals: dict[str, list[float]] = {}
    for e in kept:
        for n, outgoing in ((e.source, True), (e.target, False)):
            if n.id not in nodes:
                nodes[n.id] = {"id": n.id, "title": n.title,
                               "subTitle": n.namespace or n.kind,
                               "detail__kind": n.kind, "detail__namespace": n.namespace}
                totals[n.id] = [0.0] * 6
            t = totals[n.id]
            t[0] += e.opened
            t[1] += e.failed
            t[2] += e.bytes_sent if outgoing else e.bytes_received
            t[3] += e.bytes_received if outgoing else e.bytes_sent
            t[4] += e.short
            t[5] += e.persistent
    for node_id, node in nodes.items():
        t = totals[node_id]
        if q.stats == "bytes":
            node["mainStat"] = f"{human_bytes(t[2])} out"
            node["secondaryStat"] = f"{human_bytes(t[3])} in"
            pair = (t[2], t[3])
        elif q.stats == "duration":
            node["mainStat"] = f"{int(t[4])} short-lived"
            node["secondaryStat"] = f"{int(t[5])} persistent"
            pair = (t[4], t[5])
        else:
            node["mainStat"] = f"{int(t[0])} conns"
            node["secondaryStat"] = f"{int(t[1])} failed"
            pair = (t[0], t[1])
        total = pair[0] + pair[1]
        first, second = (pair[0] / total, pair[1] / total) if total else (1.0, 0.0)
        names = [name for name, _, _ in ARCS[q.stats]]
        node[f"arc__{names[0]}"] = first
        node[f"arc__{names[1]}"] = 1.0 - first if total else second
    out_edges = []
    for e in kept:
        main, secondary = _edge_stats(e, q.stats)
        out_edges.append({
            "id": e.id, "source": e.source.id, "target": e.target.id,
            "mainStat": main, "secondaryStat": secondary,
            "detail__port": e.port, "detail__connections": e.opened,
            "detail__active": e.active, "detail__persistent": e.persistent,
            "detail__failed": e.failed, "detail__dropped": sum(e.drops.values()),
            "detail__bytes_sent": e.bytes_sent,
            "detail__bytes_received": e.bytes_received,
            "detail__duration_avg": round(e.duration_sum / e.closed, 6) if e.closed else 0,
            "detail__duration_max": round(e.duration_max, 6),
        })
    return {"nodes": list(nodes.values()), "edges": out_edges}


def now_wall_ns() -> int:
    return time.time_ns()
