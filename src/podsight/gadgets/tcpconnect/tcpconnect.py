"""The tcpconnect gadget: load tcpconnect.bpf.o, attach it, decode its events in bulk.

Kernel side (tcpconnect.bpf.c): one record per active connect, written when
the outcome is known; attempts still open at the end are read from the
``inflight`` map and reported as ``pending``.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Self

import numpy as np

from podsight.ebpf import BpfObject, RingBuffer
from podsight.ebpf.system import preflight

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

# The `cfg` global (.rodata) of tcpconnect.bpf.c: the dtype twin of the struct.pack
# format in TcpConnectConfig.rodata(), so that the layout can be checked (24 bytes).
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

_ERRNO_RESULT = {
    errno.ECONNREFUSED: "refused",
    errno.ETIMEDOUT: "timeout",
    errno.EHOSTUNREACH: "unreachable",
    errno.ENETUNREACH: "unreachable",
    errno.EHOSTDOWN: "unreachable",
    errno.ENONET: "unreachable",
}

AF_INET, AF_INET6 = 2, 10
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


def classify(raw_result: int, err: int, sport: int) -> str:
    """Name the outcome of one attempt.

    A close from SYN_SENT carries the socket error: ECONNREFUSED is an RST,
    ETIMEDOUT the kernel giving up after its SYN retries, EHOSTUNREACH and
    ENETUNREACH an ICMP error. With no error the caller closed the socket
    before an answer came (``aborted``), unless no source port was ever
    bound, which means the connect failed locally before sending (``error``).
    """
    if raw_result == RAW_OK:
        return "ok"
    if raw_result == RAW_PENDING:
        return "pending"
    if err:
        return _ERRNO_RESULT.get(err, "error")
    return "aborted" if sport else "error"


@dataclass(slots=True)
class ConnectEvent:
    """One TCP connect attempt and its outcome."""

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

    def rodata(self) -> bytes:
        """The ``cfg`` global of tcpconnect.bpf.c, byte for byte."""
        wakeup = self.ring_bytes // 4
        return struct.pack(
            "<QIIHBBI",
            self.min_latency_ns,
            self.pid,
            wakeup,
            self.dport,
            1 if self.filter_netns or self.netns else 0,
            1 if self.failed_only else 0,
            0,
        )


class AddressFormatter:
    """Formats 16-byte kernel addresses to text, caching (addresses repeat a lot)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, bytes], tuple[int, str]] = {}

    def __call__(self, family: int, raw: bytes) -> tuple[int, str]:
        key = (family, raw)
        hit = self._cache.get(key)
        if hit is None:
            if family == AF_INET:
                hit = (4, socket.inet_ntop(socket.AF_INET, raw[:4]))
            elif raw.startswith(_V4_MAPPED):
                hit = (4, socket.inet_ntop(socket.AF_INET, raw[12:]))
            else:
                hit = (6, socket.inet_ntop(socket.AF_INET6, raw))
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[key] = hit
        return hit


def _split16(column: np.ndarray) -> list[bytes]:
    raw = column.tobytes()
    return [raw[i : i + 16] for i in range(0, len(raw), 16)]


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

    def decode(self, records: np.ndarray) -> list[ConnectEvent]:
        """Records to events: columns are converted in bulk, then zipped."""
        if not len(records):
            return []
        fmt = self._addr
        fam = records["family"].tolist()
        sports = records["sport"].tolist()
        src = [fmt(f, a) for f, a in zip(fam, _split16(records["saddr"]), strict=True)]
        dst = [fmt(f, a) for f, a in zip(fam, _split16(records["daddr"]), strict=True)]
        comms = [c.decode(errors="replace") for c in records["comm"].tolist()]
        results = [
            classify(r, e, s)
            for r, e, s in zip(records["result"].tolist(), records["err"].tolist(), sports,
                               strict=True)
        ]
        return [
            ConnectEvent(ts, pid, tid, comm, uid, netns, cg, s[0], s[1], sp, d[1], dp, res,
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

    def pending(self, now_boot_ns: int) -> list[ConnectEvent]:
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
        """Change the traced network namespaces (pods come and go while tracing)."""
        table = self._obj.map("netns_filter")
        for inode in self._netns - wanted:
            table.delete(inode.to_bytes(4, "little"))
        for inode in wanted - self._netns:
            table.update(inode.to_bytes(4, "little"), b"\x01")
        self._netns = set(wanted)

    def counters(self) -> dict[str, int]:
        sums = self._obj.map("counters").percpu_u64_sums()
        return {name: int(sums[i]) for i, name in enumerate(COUNTERS)}

    # -- lifetime -----------------------------------------------------------

    def close(self) -> None:
        ring = getattr(self, "_ring", None)
        if ring is not None:
            ring.close()
        self._obj.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def result_names() -> Iterable[str]:
    return RESULTS
