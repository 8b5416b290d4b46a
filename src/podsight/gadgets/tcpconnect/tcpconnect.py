"""The tcpconnect gadget: load tcpconnect.bpf.o, attach it, decode its events in bulk.

Kernel side (tcpconnect.bpf.c): one record per active connect, written when
the outcome is known; attempts still open at the end are read from the
``inflight`` map and reported as ``pending``. :class:`TcpConnectGadget` is
what the pipeline runs; :class:`TcpConnect` owns the kernel objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self

import numpy as np

from podsight.ebpf import BpfObject, RingBuffer
from podsight.ebpf.system import preflight
from podsight.gadgets.tcpconnect.schema import Connect, schema
from podsight.net.addresses import AddressFormatter, split16
from podsight.net.connects import failure
from podsight.net.netns import sync_netns_filter
from podsight.outputs.json import Slot, TemplateSpec
from podsight.pipeline import Batch, Loss, RunContext, Selection, Tally

# struct event in tcpconnect.bpf.c (104 bytes).
EVENT_DTYPE = np.dtype(
    [
        ("ts_ns", "<u8"),
        ("latency_ns", "<u8"),
        ("cgroup_id", "<u8"),
        ("saddr", "V16"),
        ("daddr", "V16"),
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("uid", "<u4"),
        ("netns", "<u4"),
        ("family", "<u2"),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("syn_retries", "u1"),
        ("result", "u1"),
        ("err", "<i4"),
        ("_pad", "<u4"),
        ("comm", "S16"),
    ]
)
assert EVENT_DTYPE.itemsize == 104

# struct inflight in tcpconnect.bpf.c (96 bytes).
INFLIGHT_DTYPE = np.dtype(
    [
        ("ts_ns", "<u8"),
        ("cgroup_id", "<u8"),
        ("saddr", "V16"),
        ("daddr", "V16"),
        ("pid", "<u4"),
        ("tid", "<u4"),
        ("uid", "<u4"),
        ("netns", "<u4"),
        ("family", "<u2"),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("syn_retries", "u1"),
        ("_pad", "u1"),
        ("err", "<i4"),
        ("comm", "S16"),
        ("_tail", "V4"),
    ]
)
assert INFLIGHT_DTYPE.itemsize == 96

# The `cfg` global (.rodata) of tcpconnect.bpf.c (24 bytes): TcpConnectConfig.rodata()
# fills it.
CFG_DTYPE = np.dtype(
    [
        ("min_latency_ns", "<u8"),
        ("pid", "<u4"),
        ("wakeup_bytes", "<u4"),
        ("dport", "<u2"),
        ("filter_netns", "u1"),
        ("failed_only", "u1"),
        ("_pad", "<u4"),
    ]
)

# (object file, C type, dtype): every layout shared with the kernel, checked against the
# object's BTF by tests/test_layouts.py (podsight.ebpf.layout.check_dtype).
LAYOUTS = (
    ("tcpconnect.bpf.o", "struct event", EVENT_DTYPE),
    ("tcpconnect.bpf.o", "struct inflight", INFLIGHT_DTYPE),
    ("tcpconnect.bpf.o", "cfg", CFG_DTYPE),
)

# enum result in tcpconnect.bpf.c
RAW_OK, RAW_CLOSED, RAW_PENDING = 0, 1, 2

# Counter slots (enum counter in tcpconnect.bpf.c).
COUNTERS = ("attempts", "events", "lost_ringbuf", "lost_inflight", "suppressed", "lost_skipped")

RESULTS = ("ok", "refused", "timeout", "unreachable", "error", "aborted", "pending")

def classify(raw_result: int, err: int, sport: int) -> str:
    """Name the outcome of one attempt: ``ok``, ``pending``, or how it failed
    (:func:`podsight.net.connects.failure`, from the socket error)."""
    if raw_result == RAW_OK:
        return "ok"
    if raw_result == RAW_PENDING:
        return "pending"
    return failure(err, sport)


def decode(records: np.ndarray, fmt: AddressFormatter) -> list[Connect]:
    """Ring records (EVENT_DTYPE) to records: columns are converted in bulk, then zipped."""
    if not len(records):
        return []
    fam = records["family"].tolist()
    sports = records["sport"].tolist()
    src = [fmt(f, a) for f, a in zip(fam, split16(records["saddr"]), strict=True)]
    dst = [fmt(f, a) for f, a in zip(fam, split16(records["daddr"]), strict=True)]
    comms = [c.decode(errors="replace") for c in records["comm"].tolist()]
    results = [
        classify(r, e, s)
        for r, e, s in zip(records["result"].tolist(), records["err"].tolist(), sports,
                           strict=True)
    ]
    return [
        Connect(ts, pid, tid, comm, uid, netns, cg, s[0], s[1], sp, d[1], dp, res,
                err, lat, retries)
        for ts, pid, tid, comm, uid, netns, cg, s, sp, d, dp, res, err, lat, retries in zip(
            records["ts_ns"].tolist(),
            records["pid"].tolist(),
            records["tid"].tolist(),
            comms,
            records["uid"].tolist(),
            records["netns"].tolist(),
            records["cgroup_id"].tolist(),
            src,
            sports,
            dst,
            records["dport"].tolist(),
            results,
            records["err"].tolist(),
            records["latency_ns"].tolist(),
            records["syn_retries"].tolist(),
            strict=True,
        )
    ]


@dataclass
class TcpConnectConfig:
    """What to trace; the filters here run in the kernel."""

    pid: int = 0
    dport: int = 0
    netns: set[int] = field(default_factory=set)
    filter_netns: bool = False  # trace only `netns` (kept current with set_netns)
    failed_only: bool = False
    min_latency_ns: int = 0
    ring_bytes: int = 4 << 20
    inflight_entries: int = 16384
    netns_entries: int = 4096

    def rodata(self) -> bytes:
        """The ``cfg`` global of tcpconnect.bpf.c, byte for byte (CFG_DTYPE, BTF-checked)."""
        cfg = np.zeros(1, CFG_DTYPE)
        cfg["min_latency_ns"] = self.min_latency_ns
        cfg["pid"] = self.pid
        cfg["wakeup_bytes"] = self.ring_bytes // 4
        cfg["dport"] = self.dport
        cfg["filter_netns"] = 1 if self.filter_netns or self.netns else 0
        cfg["failed_only"] = 1 if self.failed_only else 0
        return cfg.tobytes()


class TcpConnect:
    """The loaded and attached tcpconnect programs; a context manager."""

    def __init__(self, config: TcpConnectConfig | None = None) -> None:
        self.config = config or TcpConnectConfig()
        preflight()
        self._obj = BpfObject.from_package(__package__ or "podsight.gadgets.tcpconnect",
                                           "tcpconnect.bpf.o")
        try:
            self._obj.map(".rodata").set_initial_value(self.config.rodata())
            self._obj.map("events").resize(self.config.ring_bytes)
            self._obj.map("inflight").resize(self.config.inflight_entries)
            self._obj.map("netns_filter").resize(self.config.netns_entries)
            self._obj.load()
            self._netns: set[int] = set()
            self.set_netns(self.config.netns)
            self._ring = RingBuffer(self._obj.map("events"), EVENT_DTYPE)
            self._obj.attach_all()
        except BaseException:
            self._obj.close()
            raise
        self._addr = AddressFormatter()

    # -- reading ------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        self._ring.wait(timeout)

    def drain(self) -> np.ndarray:
        """Raw records waiting in the ring buffer (EVENT_DTYPE)."""
        return self._ring.drain()

    def decode(self, records: np.ndarray) -> list[Connect]:
        """Ring records (EVENT_DTYPE) to records."""
        return decode(records, self._addr)

    def pending(self, now_boot_ns: int) -> list[Connect]:
        """Attempts still waiting for an answer, read from the kernel in one batch."""
        _, values = self._obj.map("inflight").lookup_batch(np.dtype("<u8"), INFLIGHT_DTYPE)
        if not len(values):
            return []
        records = np.zeros(len(values), dtype=EVENT_DTYPE)
        for name in INFLIGHT_DTYPE.names or ():
            if name in (EVENT_DTYPE.names or ()) and not name.startswith("_"):
                records[name] = values[name]
        records["latency_ns"] = np.maximum(now_boot_ns - values["ts_ns"].astype(np.int64), 0)
        records["ts_ns"] = now_boot_ns
        records["result"] = RAW_PENDING
        return self.decode(records)

    def set_netns(self, wanted: set[int]) -> None:
        """Change the traced network namespaces (pods come and go while tracing); see
        :func:`podsight.net.netns.sync_netns_filter`."""
        self._netns = sync_netns_filter(self._obj.map("netns_filter"), self._netns, wanted,
                                        self.config.netns_entries)

    def skipped_runs(self) -> int:
        """Program runs the kernel skipped (nested on one CPU), from the programs' info."""
        return self._obj.run_stats().recursion_misses

    def counters(self) -> dict[str, int]:
        sums = self._obj.map("counters").percpu_u64_sums()
        return {name: int(sums[i]) for i, name in enumerate(COUNTERS)}

    # -- lifetime -----------------------------------------------------------

    def detach(self) -> None:
        """Stop the programs (links destroyed); the ring and maps stay readable."""
        for link in self._obj.links:
            link.close()

    def close(self) -> None:
        ring = getattr(self, "_ring", None)
        if ring is not None:
            ring.close()
        self._obj.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


LOSS_CAUSES = {
    "lost_ringbuf": "ring buffer full (a larger --ring-size helps)",
    "lost_inflight": "in-flight table full",
    "lost_skipped": "outcome not seen: the kernel skipped a nested program run",
}

# Sentinel values for JSON templates (see podsight.outputs.json.TemplateJson): values a
# real event is unlikely to carry, so that where they land in a line is unambiguous.
_WALL_SENTINELS = (4102444800_123456789, 4133980801_987654321)  # in 2100 and 2101
_SPORT_SENTINELS = (65521, 65519)
_LATENCY_SENTINELS = (9007199254740881, 9007199254740847)
_IDENTITY = np.dtype(f"V{EVENT_DTYPE.itemsize}")


class TcpConnectGadget:
    """``podsight trace tcpconnect`` as the pipeline runs it."""

    def __init__(self, ctx: RunContext) -> None:
        v = ctx.values
        self.clock = ctx.clock
        self.schema = schema(ctx.clock)
        self.config = TcpConnectConfig(
            pid=v["pid"], dport=v["dport"], failed_only=v["failed_only"],
            min_latency_ns=v["min_latency"], ring_bytes=v["ring_size"],
        )
        self._tracer: TcpConnect | None = None

    @property
    def tracer(self) -> TcpConnect:
        if self._tracer is None:
            raise RuntimeError("tcpconnect is not started")
        return self._tracer

    def start(self, selection: Selection) -> str:
        self.config.filter_netns = selection.netns is not None
        self.config.netns = set(selection.netns or ())
        self._tracer = TcpConnect(self.config)
        return "tracing TCP connects"

    def follow(self, selection: Selection) -> None:
        if selection.netns is not None:
            self.tracer.set_netns(set(selection.netns))

    def wait(self, timeout: float) -> None:
        self.tracer.wait(timeout)

    def collect(self, *, final: bool) -> Batch[Connect]:
        return Batch(raw=self.tracer.drain())

    def decode(self, raw: np.ndarray) -> list[Connect]:
        return self.tracer.decode(raw)

    def detach(self) -> None:
        if self._tracer is not None:
            self._tracer.detach()

    def pending(self) -> list[Connect]:
        return self.tracer.pending(self.clock.boot_now_ns())

    def tally(self, elapsed: float) -> Tally:
        c = self.tracer.counters()
        return Tally(losses={k: Loss(c[k], text) for k, text in LOSS_CAUSES.items()},
                     counters=c, skipped_runs=self.tracer.skipped_runs())

    def close(self) -> None:
        if self._tracer is not None:
            self._tracer.close()
            self._tracer = None

    # -- JSON templates ------------------------------------------------------------------

    def templates(self, admit: Callable[[np.ndarray], Connect | None]
                  ) -> TemplateSpec[Connect]:
        """Per-identity JSON templates: only the time, source port and latency vary.

        The identity is the kernel record without those three, but with whether a
        port was bound (it tells "aborted" from "error"); every filter reads only
        identity fields, so it is decided once per identity too.
        """
        clock = self.clock

        def keys(records: np.ndarray) -> list[bytes]:
            ident = records.copy()
            ident["ts_ns"] = 0
            ident["latency_ns"] = 0
            ident["sport"] = ident["sport"] != 0
            keys: list[bytes] = ident.view(_IDENTITY).tolist()
            return keys

        def times(records: np.ndarray) -> list[str]:
            wall = records["ts_ns"].astype(np.int64) + clock.offset_ns
            secs = wall // 1_000_000_000
            # +1e9 then [1:]: nanoseconds zero-padded to 9 digits, faster than :09d.
            nanos = (wall - secs * 1_000_000_000 + 1_000_000_000).tolist()
            secs_list = secs.tolist()
            # The calendar part once per second, through the clock's own formatting.
            prefix = {s: clock.rfc3339(s * 1_000_000_000)[:-11] for s in set(secs_list)}
            return [f"{prefix[s]}.{str(n)[1:]}Z" for s, n in zip(secs_list, nanos, strict=True)]

        def column(name: str) -> Callable[[np.ndarray], list[str]]:
            # As text once: a source port lands three times in a line.
            return lambda records: list(map(str, records[name].tolist()))

        boot = tuple(w - clock.offset_ns for w in _WALL_SENTINELS)
        return TemplateSpec(
            keys=keys,
            slots=(
                Slot("ts_ns", (boot[0], boot[1]), times,
                     text=lambda ts: clock.rfc3339(clock.wall_ns(ts))),
                Slot("sport", _SPORT_SENTINELS, column("sport")),
                Slot("latency_ns", _LATENCY_SENTINELS, column("latency_ns")),
            ),
            admit=admit,
            times=lambda records: list(records["ts_ns"].tolist()),
        )
