"""The tcplife gadget: load tcplife.bpf.o, attach it, decode its records in bulk.

Kernel side (tcplife.bpf.c): a record per connection when it closes, through
the ring buffer; connections still open are read with a BPF iterator over the
table of per-socket state (``--max-open`` entries, keyed by the socket's address;
one read covers every network namespace), every ``--open-every`` and at the end. At
start a TCP iterator run in each network namespace gives state to connections that were
open before.
:class:`TcpLifeGadget` is what the pipeline runs; :class:`TcpLife` owns the
kernel objects.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

from podsight.analysis.graph import DURATION_BUCKETS
from podsight.ebpf import BpfObject, Link, RingBuffer
from podsight.ebpf.iters import read_iter
from podsight.ebpf.system import possible_cpus, preflight
from podsight.gadgets.tcplife.schema import Conn, schema
from podsight.net.addresses import AddressFormatter, split16
from podsight.net.connects import failure
from podsight.net.netns import every_netns, own_netns, run_in_netns_path, sync_netns_filter
from podsight.pipeline import Batch, Loss, RunContext, Selection, Tally

# struct conn in tcplife.bpf.c (128 bytes), less `err` (in a union with srtt_us).
_CONN_FIELDS = np.dtype(
    [
        ("ts_ns", "<u8"),
        ("start_ns", "<u8"),
        ("cookie", "<u8"),
        ("cgroup_id", "<u8"),
        ("bytes_acked", "<u8"),
        ("bytes_received", "<u8"),
        ("saddr", "V16"),
        ("daddr", "V16"),
        ("pid", "<u4"),
        ("netns", "<u4"),
        ("segs_in", "<u4"),
        ("segs_out", "<u4"),
        ("total_retrans", "<u4"),
        ("srtt_us", "<u4"),
        ("family", "<u2"),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("role", "u1"),
        ("flags", "u1"),
        ("comm", "S16"),
    ]
)
# With `err` over srtt_us: numpy fields may overlap, as the C union's members do.
_PLACED: dict[str, Any] = {name: _CONN_FIELDS.fields[name][:2]  # type: ignore[index]
                           for name in _CONN_FIELDS.names or ()}
_PLACED["err"] = (np.dtype("<i4"), _PLACED["srtt_us"][1])
CONN_DTYPE: np.dtype[Any] = np.dtype({
    "names": list(_PLACED), "formats": [f for f, _ in _PLACED.values()],
    "offsets": [o for _, o in _PLACED.values()], "itemsize": _CONN_FIELDS.itemsize,
})
assert CONN_DTYPE.itemsize == 128

# struct state in tcplife.bpf.c (the `states` hash's value, 64 bytes).
STATE_DTYPE = np.dtype(
    [
        ("start_ns", "<u8"),
        ("cgroup_id", "<u8"),
        ("cookie", "<u8"),
        ("pid", "<u4"),
        ("netns", "<u4"),
        ("role", "u1"),
        ("established", "u1"),
        ("flags", "u1"),
        ("syn_acked", "u1"),
        ("err", "<i4"),
        ("comm", "S16"),
        ("mark", "<u8"),
    ]
)
assert STATE_DTYPE.itemsize == 64

# The `cfg` global (.rodata) of tcplife.bpf.c.
N_BOUNDS = len(DURATION_BUCKETS)
CFG_DTYPE = np.dtype([("wakeup_bytes", "<u4"), ("filter_netns", "u1"),
                      ("loopback_once", "u1"), ("failed_connects", "u1"), ("aggregate", "u1"),
                      ("persistent_ns", "<u8"), ("bounds_ns", "<u8", (N_BOUNDS,))])

# struct edge_key and struct edge_val of tcplife.bpf.c (cfg.aggregate: the `edges` map).
EDGE_KEY = np.dtype([("cgroup_id", "<u8"), ("saddr", "V16"), ("daddr", "V16"),
                     ("netns", "<u4"), ("family", "<u2"), ("port", "<u2"), ("role", "u1"),
                     ("_pad", "V7")])
EDGE_VAL = np.dtype([("closed", "<u8"), ("persistent", "<u8"), ("bytes_acked", "<u8"),
                     ("bytes_received", "<u8"), ("duration_ns", "<u8"),
                     ("duration_max_ns", "<u8"), ("first_ns", "<u8"), ("last_ns", "<u8"),
                     ("buckets", "<u8", (N_BOUNDS + 1,)), ("pid", "<u4"), ("_pad", "<u4"),
                     ("comm", "S16")])
assert EDGE_KEY.itemsize == 56 and EDGE_VAL.itemsize == 208

# What the gadget hands a graph sink in aggregate mode: kernel records (``n`` 0: one
# connection, as the ring gave it) and edge sums since the previous read (``n``
# connections; ``rep`` names the edge as its last connection would, with the bytes of
# all of them).
EDGE_DTYPE = np.dtype([("rep", CONN_DTYPE), ("n", "<u8"), ("persistent", "<u8"),
                       ("duration_ns", "<u8"), ("duration_max_ns", "<u8"), ("first_ns", "<u8"),
                       ("buckets", "<u8", (N_BOUNDS + 1,))])

LAYOUTS = (
    ("tcplife.bpf.o", "struct conn", CONN_DTYPE),
    ("tcplife.bpf.o", "struct state", STATE_DTYPE),
    ("tcplife.bpf.o", "cfg", CFG_DTYPE),
    ("tcplife.bpf.o", "struct edge_key", EDGE_KEY),
    ("tcplife.bpf.o", "struct edge_val", EDGE_VAL),
)

ROLES = ("unknown", "client", "server")
F_OPEN = 1
F_START_SEEN = 2
F_FAILED = 4

# Counter slots (enum counter in tcplife.bpf.c).
COUNTERS = ("opened", "closed", "lost_ringbuf", "lost_full", "untracked", "seeded",
            "snapshot", "loopback_server", "failed", "aggregated", "edges_full", "stale",
            "table_seen")

# --max-open's default: the sockets (each side of a connection is one) that can be open
# at once. 131072 covers a busy node; its preallocated table takes ~17 MiB of kernel
# memory (memlock, docs/tcplife.md).
MAX_OPEN = 131072

LOSS_CAUSES = {
    "lost_ringbuf": "ring buffer full (a larger --ring-size helps)",
    "lost_full": "the table of open connections was full (a larger --max-open helps)",
    "untracked": "closed without known state (open before podsight, in a network namespace "
                 "it could not enter)",
}


def decode(records: np.ndarray, fmt: AddressFormatter, role: str = "any") -> list[Conn]:
    """Kernel records (CONN_DTYPE) to records: columns converted in bulk, then zipped.
    Of EDGE_DTYPE, the records that name each row."""
    if records.dtype.names and "rep" in records.dtype.names:
        records = records["rep"]
    if role != "any" and len(records):
        records = records[records["role"] == ROLES.index(role)]
    if not len(records):
        return []
    fam = records["family"].tolist()
    src = [fmt(f, a) for f, a in zip(fam, split16(records["saddr"]), strict=True)]
    dst = [fmt(f, a) for f, a in zip(fam, split16(records["daddr"]), strict=True)]
    comms = [c.decode(errors="replace") for c in records["comm"].tolist()]
    flags = records["flags"].tolist()
    failed = (records["flags"] & F_FAILED) != 0
    rtt = np.where(failed, 0, records["srtt_us"] >> 3).tolist()
    states = ["open" if fl & F_OPEN else "closed" for fl in flags]
    if failed.any():
        for i, err, sport in zip(np.flatnonzero(failed).tolist(),
                                 records["err"][failed].tolist(),
                                 records["sport"][failed].tolist(), strict=True):
            states[i] = failure(err, sport)
    return [
        Conn(ts, start, cookie, pid, comm, netns, cg, s[0], s[1], sp, d[1], dp,
             ROLES[r] if r < len(ROLES) else "unknown", state,
             tx, rx, so, si, rt, rtt_us, bool(fl & F_START_SEEN))
        for ts, start, cookie, pid, comm, netns, cg, s, sp, d, dp, r, state, fl, tx, rx, so,
        si, rt, rtt_us in zip(
            records["ts_ns"].tolist(),
            records["start_ns"].tolist(),
            records["cookie"].tolist(),
            records["pid"].tolist(),
            comms,
            records["netns"].tolist(),
            records["cgroup_id"].tolist(),
            src,
            records["sport"].tolist(),
            dst,
            records["dport"].tolist(),
            records["role"].tolist(),
            states,
            flags,
            records["bytes_acked"].tolist(),
            records["bytes_received"].tolist(),
            records["segs_out"].tolist(),
            records["segs_in"].tolist(),
            records["total_retrans"].tolist(),
            rtt,
            strict=True,
        )
    ]


@dataclass
class TcpLifeConfig:
    """What to trace; the netns filter runs in the kernel."""

    netns: set[int] = field(default_factory=set)
    filter_netns: bool = False
    ring_bytes: int = 4 << 20
    netns_entries: int = 4096
    loopback_once: bool = False
    failed_connects: bool = False
    aggregate: bool = False  # closed connections summed per edge in the kernel (serve)
    persistent_ns: int = 10 * 10**9
    edge_entries: int = 16384
    max_open: int = MAX_OPEN  # entries of `states`: sockets followed at once

    def rodata(self) -> bytes:
        cfg = np.zeros(1, CFG_DTYPE)
        cfg["wakeup_bytes"] = self.ring_bytes // 4
        cfg["filter_netns"] = 1 if self.filter_netns or self.netns else 0
        cfg["loopback_once"] = self.loopback_once
        cfg["failed_connects"] = self.failed_connects
        cfg["aggregate"] = self.aggregate
        cfg["persistent_ns"] = self.persistent_ns
        # The graph's test is seconds <= le on duration_ns / 1e9: the same bound in ns.
        cfg["bounds_ns"] = [round(le * 1e9) for le in DURATION_BUCKETS]
        return cfg.tobytes()


class TcpLife:
    """The loaded and attached tcplife programs; a context manager."""

    def __init__(self, config: TcpLifeConfig | None = None) -> None:
        self.config = config or TcpLifeConfig()
        preflight()
        self._obj = BpfObject.from_package(__package__ or "podsight.gadgets.tcplife",
                                           "tcplife.bpf.o")
        self._tracepoint: Link | None = None
        self._error_report: Link | None = None
        try:
            self._obj.map(".rodata").set_initial_value(self.config.rodata())
            self._obj.map("events").resize(self.config.ring_bytes)
            self._obj.map("netns_filter").resize(self.config.netns_entries)
            self._obj.map("states").resize(self.config.max_open)
            self._obj.map("edges").resize(self.config.edge_entries if self.config.aggregate
                                          else 1)
            self._obj.load()
            self._netns: set[int] = set()
            self.set_netns(self.config.netns)
            self._ring = RingBuffer(self._obj.map("events"), CONN_DTYPE)
            self._open = self._obj.program("tcplife_open").attach_iter(self._obj.map("states"))
            if self.config.failed_connects:
                self._error_report = self._obj.program("tcplife_error").attach()
            self._tracepoint = self._obj.program("tcplife_state").attach()
            self.seeded_netns = self._seed()
        except BaseException:
            self.close()
            raise
        self._addr = AddressFormatter()
        self._percpu = np.dtype((EDGE_VAL, possible_cpus()))
        self._prev_index: dict[bytes, int] = {}
        self._prev = np.zeros(0, EDGE_VAL)
        self.edges_read = 0  # entries in the edge table at the last read
        self.open_read = 0  # entries in the table of open connections at the last read

    def _seed(self) -> int:
        """Give state to connections open before the tracepoint was attached: a TCP
        iterator walks one network namespace, so it is read inside each one. Returns how
        many namespaces were walked."""
        link = self._obj.program("tcplife_seed").attach_iter()
        try:
            walked = 0
            own = own_netns()
            for inode, path in every_netns().items():
                if self.config.filter_netns and inode not in self._netns and 0 not in self._netns:
                    continue
                if inode == own:
                    read_iter(link)
                    walked += 1
                elif run_in_netns_path(path, lambda: read_iter(link), None) is not None:
                    walked += 1
            return walked
        finally:
            link.close()

    # -- reading ------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        self._ring.wait(timeout)

    def drain(self) -> np.ndarray:
        """Records of closed connections waiting in the ring buffer (CONN_DTYPE)."""
        return self._ring.drain()

    def open_connections(self) -> np.ndarray:
        """Every connection still open, read now (CONN_DTYPE, flagged open). Also notes
        how many entries the table held (the iterator counts those it walks)."""
        slot = COUNTERS.index("table_seen")
        before = int(self._obj.map("counters").percpu_u64_sums()[slot])
        data = read_iter(self._open)
        self.open_read = int(self._obj.map("counters").percpu_u64_sums()[slot]) - before
        usable = len(data) - len(data) % CONN_DTYPE.itemsize
        return np.frombuffer(data[:usable], dtype=CONN_DTYPE)

    def edges(self) -> np.ndarray:
        """The edges' sums since the previous call (EDGE_DTYPE, ``n`` > 0), read with one
        batch lookup and summed over CPUs. Entries stay in the map (deleting one could
        drop a CPU's update made meanwhile), so the difference from the previous read is
        what is new."""
        keys, per_cpu = self._obj.map("edges").lookup_batch(EDGE_KEY, self._percpu)
        n = len(keys)
        if not n:
            return np.zeros(0, EDGE_DTYPE)
        tot = np.zeros(n, EDGE_VAL)
        for name in ("closed", "persistent", "bytes_acked", "bytes_received", "duration_ns",
                     "buckets"):
            tot[name] = per_cpu[name].sum(axis=1)
        tot["duration_max_ns"] = per_cpu["duration_max_ns"].max(axis=1)
        tot["last_ns"] = per_cpu["last_ns"].max(axis=1)
        first = per_cpu["first_ns"]
        tot["first_ns"] = np.where(first > 0, first, np.iinfo(np.uint64).max).min(axis=1)
        latest = per_cpu["last_ns"].argmax(axis=1)
        rows = np.arange(n)
        tot["pid"] = per_cpu["pid"][rows, latest]
        tot["comm"] = per_cpu["comm"][rows, latest]
        names = [bytes(k) for k in keys.view(f"V{EDGE_KEY.itemsize}").tolist()]
        index = np.fromiter((self._prev_index.get(k, -1) for k in names), np.int64, n)
        prev = np.zeros(n, EDGE_VAL)
        seen = index >= 0
        prev[seen] = self._prev[index[seen]]
        self._prev_index = {k: i for i, k in enumerate(names)}
        self.edges_read = n
        self._prev = tot
        new = tot["closed"] > prev["closed"]
        keys, tot, prev = keys[new], tot[new], prev[new]
        out = np.zeros(len(keys), EDGE_DTYPE)
        rep = out["rep"]
        for name in ("cgroup_id", "saddr", "daddr", "netns", "family", "role"):
            rep[name] = keys[name]
        server = keys["role"] == ROLES.index("server")
        rep["sport"] = np.where(server, keys["port"], 0)
        rep["dport"] = np.where(server, 0, keys["port"])
        rep["ts_ns"] = tot["last_ns"]
        rep["start_ns"] = tot["last_ns"]
        rep["pid"] = tot["pid"]
        rep["comm"] = tot["comm"]
        rep["flags"] = F_START_SEEN
        rep["bytes_acked"] = tot["bytes_acked"] - prev["bytes_acked"]
        rep["bytes_received"] = tot["bytes_received"] - prev["bytes_received"]
        out["n"] = tot["closed"] - prev["closed"]
        for name in ("persistent", "duration_ns", "buckets"):
            out[name] = tot[name] - prev[name]
        out["duration_max_ns"] = tot["duration_max_ns"]
        out["first_ns"] = tot["first_ns"]
        return out

    def decode(self, records: np.ndarray, role: str = "any") -> list[Conn]:
        return decode(records, self._addr, role)

    def set_netns(self, wanted: set[int]) -> None:
        """Change the traced network namespaces (pods come and go while tracing); see
        :func:`podsight.net.netns.sync_netns_filter`."""
        self._netns = sync_netns_filter(self._obj.map("netns_filter"), self._netns, wanted,
                                        self.config.netns_entries)

    def skipped_runs(self) -> int:
        return self._obj.run_stats().recursion_misses

    def counters(self) -> dict[str, int]:
        sums = self._obj.map("counters").percpu_u64_sums()
        return {name: int(sums[i]) for i, name in enumerate(COUNTERS)}

    # -- lifetime -----------------------------------------------------------

    def detach(self) -> None:
        """Stop the tracepoint; the ring, the states and the open-connection iterator stay
        readable."""
        if self._tracepoint is not None:
            self._tracepoint.close()
        if self._error_report is not None:
            self._error_report.close()

    def close(self) -> None:
        ring = getattr(self, "_ring", None)
        if ring is not None:
            ring.close()
        self._obj.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TcpLifeGadget:
    """``podsight trace tcplife`` as the pipeline runs it."""

    def __init__(self, ctx: RunContext) -> None:
        v = ctx.values
        self.clock = ctx.clock
        self.schema = schema(ctx.clock)
        self.config = TcpLifeConfig(ring_bytes=v.get("ring_size", 4 << 20),
                                    loopback_once=bool(v.get("loopback_once")),
                                    failed_connects=bool(v.get("failed_connects")),
                                    aggregate=bool(v.get("aggregate")),
                                    persistent_ns=v.get("persistent_ns", 10 * 10**9),
                                    edge_entries=v.get("edge_entries", 16384),
                                    max_open=v.get("max_open", MAX_OPEN))
        self.role: str = v.get("role", "any")
        every = v.get("open_every", 0) or 0
        self.open_every = every / 1e9 if every else 0.0
        self._next_open = 0.0
        # aggregate: how often the edges are read (what bounds naming an edge by an IP that
        # another pod took meanwhile)
        self.edge_every = (v.get("edge_every", 10**9) or 10**9) / 1e9
        self._next_edges = 0.0
        self._tracer: TcpLife | None = None

    @property
    def tracer(self) -> TcpLife:
        if self._tracer is None:
            raise RuntimeError("tcplife is not started")
        return self._tracer

    def start(self, selection: Selection) -> str:
        self.config.filter_netns = selection.netns is not None
        self.config.netns = set(selection.netns or ())
        self._tracer = TcpLife(self.config)
        self._next_open = time.monotonic() + self.open_every
        self._next_edges = time.monotonic() + self.edge_every
        return "tracing TCP connections"

    def follow(self, selection: Selection) -> None:
        if selection.netns is not None:
            self.tracer.set_netns(set(selection.netns))

    def wait(self, timeout: float) -> None:
        if self.open_every:
            timeout = max(0.0, min(timeout, self._next_open - time.monotonic()))
        if self.config.aggregate:
            timeout = max(0.0, min(timeout, self._next_edges - time.monotonic()))
        self.tracer.wait(timeout)

    def collect(self, *, final: bool) -> Batch[Conn]:
        raw = self.tracer.drain()
        records: list[Conn] = []
        if self.open_every and not final and time.monotonic() >= self._next_open:
            self._next_open = time.monotonic() + self.open_every
            records = self.tracer.decode(self.tracer.open_connections(), self.role)
        if self.config.aggregate:
            raw = self._with_edges(raw, final)
        return Batch(records=records, raw=raw)

    def _with_edges(self, raw: np.ndarray, final: bool) -> np.ndarray:
        """Aggregate mode: the ring's records (``n`` 0) and, when it is time, the edges'
        new sums, as one EDGE_DTYPE batch for the graph sink."""
        edges = None
        if final or time.monotonic() >= self._next_edges:
            self._next_edges = time.monotonic() + self.edge_every
            edges = self.tracer.edges()
        out = np.zeros(len(raw), EDGE_DTYPE)
        out["rep"] = raw
        return out if edges is None or not len(edges) else np.concatenate((out, edges))

    def decode(self, raw: np.ndarray) -> list[Conn]:
        return self.tracer.decode(raw, self.role)

    def templates(self, admit: Any) -> None:
        return None

    def detach(self) -> None:
        if self._tracer is not None:
            self._tracer.detach()

    def pending(self) -> list[Conn]:
        """Connections still open at the end, read from the kernel in one walk."""
        return self.tracer.decode(self.tracer.open_connections(), self.role)

    def tally(self, elapsed: float) -> Tally:
        c = self.tracer.counters()
        notes = []
        if c["edges_full"]:
            # not lost: they went to the ring as records, and the graph counted them
            notes.append(f"{c['edges_full']} connections sent one by one: the kernel's edge "
                         f"table ({self.config.edge_entries}) was full (--edge-entries)")
        return Tally(losses={k: Loss(c[k], text) for k, text in LOSS_CAUSES.items()},
                     counters=c, skipped_runs=self.tracer.skipped_runs(), notes=notes)

    def fill(self) -> dict[str, float]:
        """How full the kernel's tables are: open connections (as of the last read of
        them) and, in aggregate mode, edges (as of the last read of those)."""
        if self._tracer is None:
            return {}
        # An entry shown again after the read's buffer filled is counted twice (one per
        # ~256 records): the ratio is capped at full.
        out = {"states": min(1.0, self._tracer.open_read / self.config.max_open)}
        if self.config.aggregate:
            out["edges"] = self._tracer.edges_read / self.config.edge_entries
        return out

    def close(self) -> None:
        if self._tracer is not None:
            self._tracer.close()
            self._tracer = None
