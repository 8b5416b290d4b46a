"""The packets gadget, kernel side: load packets.bpf.o, attach per interface, hand over blocks.

One :class:`Capture` owns the object and every attachment. Each captured
interface gets an id (its pcapng interface number) and two entry programs
(ingress, egress) built from the filter (see :mod:`.filter`), attached with
tcx on the interface, inside the pod's network namespace when the interface
is a pod's ``eth0``. The capture program the entry programs tail-call writes
ready Enhanced Packet Blocks (see packets.bpf.c), and :meth:`Capture.frames`
returns them where they lie, as a :class:`~podsight.pipeline.Frames`.
"""

from __future__ import annotations

import errno
import mmap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from podsight.ebpf import BpfObject, RingBuffer
from podsight.ebpf.errors import BpfError, LibbpfError
from podsight.ebpf.progs import BPF_PROG_TYPE_SCHED_CLS, RawProgram
from podsight.ebpf.system import possible_cpus
from podsight.ebpf.tc import TcHook
from podsight.gadgets.packets.filter import CBpf, entry_program
from podsight.net.netns import call_in_netns
from podsight.pipeline import Frames

#: snaplen up to this: fixed-size ring records (capture_slot); above: per-CPU streams.
SLOT_MAX_SNAP = 256
SLOT_MAX = 2048
SLOT_RING_DEFAULT = 32 << 20
EPB_OVERHEAD = 28 + 16
#: One element of the streams array (records never straddle two): packets.bpf.c's
#: STREAM_ELEM, checked against the object's map at load. 2 MiB, not the 4 MiB a value
#: may hold, so a node with many CPUs can be given a small stream per CPU.
STREAM_ELEM = 2 << 20
MAX_ELEMS = 128
#: Whole packets' default: 32M per CPU, but at most STREAM_BUDGET over all the CPUs (the
#: streams are allocated whole when the object loads, and charged to the capture's memory
#: cgroup: 32M on each of a 64-CPU node's CPUs would be 2G, four times what a podsight
#: agent may use). A CPU has at least one element.
STREAM_PER_CPU_DEFAULT = 32 << 20
STREAM_BUDGET = 128 << 20
#: capture_stream wakes the reader when this much waits in one CPU's stream (0: a quarter
#: of it). A smaller mark (1M: blocks still in the cache when copied) made the copy no
#: cheaper and the batches more numerous (bench/packets_path.py --wake).
STREAM_WAKE_DEFAULT = 0
#: capture_stream: with this many blocks already waiting, the reader goes on without
#: sleeping: past its mark a stream wakes no one, and a reader that slept its 50 ms there
#: would let 30M arrive at 600 MB/s.
STREAM_BUSY_RECORDS = 1024
MAX_SNAP = 65536
MAX_IFACES = 1024

# The `cfg` global of packets.bpf.c (.rodata).
CFG_DTYPE = np.dtype([("snaplen", "<u4"), ("slot", "<u4"), ("wakeup_bytes", "<u4"),
                      ("elems_per_cpu", "<u4"), ("stream_wake", "<u4")])
# struct ifstats: per interface, per CPU.
IFSTATS_DTYPE = np.dtype([("matched", "<u8"), ("written", "<u8"), ("bytes", "<u8"),
                          ("lost_ring", "<u8"), ("lost_other", "<u8")])
# struct index_entry: one capture_stream block.
INDEX_DTYPE = np.dtype([("pos", "<u8"), ("len", "<u4"), ("cpu", "<u4"), ("ts", "<u8"),
                        ("saddr", "<u4"), ("daddr", "<u4")])
#: the index ring holds one entry per this many stream bytes (whole Ethernet frames: ~1.5 KiB)
INDEX_PER_STREAM_BYTES = 512
# struct stream_pos: one per CPU.
POS_DTYPE = np.dtype([("prod", "<u8"), ("cons", "<u8")])

LAYOUTS = (
    ("packets.bpf.o", "cfg", CFG_DTYPE),
    ("packets.bpf.o", "struct ifstats", IFSTATS_DTYPE),
    ("packets.bpf.o", "struct index_entry", INDEX_DTYPE),
    ("packets.bpf.o", "struct stream_pos", POS_DTYPE),
)


def stream_elems(buffer_bytes: int | None, ncpu: int) -> int:
    """Stream elements per CPU for ``--buffer-size`` (bytes per CPU; None: the default)."""
    per_cpu = (buffer_bytes if buffer_bytes is not None
               else min(STREAM_PER_CPU_DEFAULT, STREAM_BUDGET // max(ncpu, 1)))
    return max(1, min(MAX_ELEMS, per_cpu // STREAM_ELEM))


def index_bytes(ncpu: int, elems: int) -> int:
    """The index ring's size: room for an entry per 512 bytes of the streams (4M for two
    CPUs' 32M each): the index is not what fills first on whole packets (32 bytes an
    entry, 8 of ring header)."""
    index = _pow2(ncpu * elems * STREAM_ELEM // INDEX_PER_STREAM_BYTES
                  * (INDEX_DTYPE.itemsize + 8))
    return max(2 << 20, min(index, 256 << 20))


def slot_size(snaplen: int) -> int:
    """The ring record of capture_slot: a whole EPB of ``snaplen`` bytes, 8-aligned."""
    return (EPB_OVERHEAD + ((snaplen + 3) & ~3) + 7) & ~7


@dataclass
class Attachment:
    """One interface's two entry programs and their tc links."""

    programs: list[RawProgram]
    hooks: list[TcHook]
    netns: int | None

    @property
    def alive(self) -> bool:
        return all(h.alive for h in self.hooks)

    def close(self) -> None:
        for hook in self.hooks:
            hook.close()
        for prog in self.programs:
            prog.close()
        self.hooks, self.programs = [], []


class Capture:
    """The loaded capture object and its attachments."""

    def __init__(self, snaplen: int, buffer_bytes: int | None = None,
                 stream_wake: int = STREAM_WAKE_DEFAULT) -> None:
        self.snaplen = min(snaplen, MAX_SNAP)
        self.stream = self.snaplen > SLOT_MAX_SNAP
        self.ncpu = possible_cpus()
        self.attachments: dict[int, Attachment] = {}
        self._pending_release: Callable[[], None] | None = None
        self.stream_wake = stream_wake
        obj = BpfObject.from_package("podsight.gadgets.packets", "packets.bpf.o")
        self.obj = obj
        try:
            self._load(buffer_bytes)
        except BaseException:
            obj.close()
            raise

    def _load(self, buffer_bytes: int | None) -> None:
        obj = self.obj
        cfg = np.zeros(1, CFG_DTYPE)
        cfg["snaplen"] = self.snaplen
        page = mmap.PAGESIZE
        if self.stream:
            self.elems = stream_elems(buffer_bytes, self.ncpu)
            cfg["elems_per_cpu"] = self.elems
            cfg["stream_wake"] = self.stream_wake
            index = index_bytes(self.ncpu, self.elems)
            obj.map("pkt_index").resize(index)
            cfg["wakeup_bytes"] = index // 4
            obj.map("streams").resize(self.ncpu * self.elems)
            obj.map("positions").resize(self.ncpu)
            obj.map("ring").resize(page)
            obj.program("capture_slot").set_autoload(False)
        else:
            self.slot = slot_size(self.snaplen)
            # 32M: ~220k records at snaplen 96, ~0.4 s at 550k packets/s, for a reader that a
            # busy machine keeps off its CPU (8M lost packets there where tcpdump lost none);
            # a smaller ring made the programs' ring writes no cheaper (bench/packets.py
            # --prog-stats: 1M 282-397 ns, 2M 254-268, 8M 247-250, 32M 235-245 per packet).
            ring = _pow2(max(buffer_bytes or SLOT_RING_DEFAULT, page))
            cfg["slot"] = self.slot
            cfg["wakeup_bytes"] = ring // 4
            obj.map("ring").resize(ring)
            obj.map("pkt_index").resize(page)
            obj.program("capture_stream").set_autoload(False)
        obj.map(".rodata").set_initial_value(cfg.tobytes())
        if obj.map("streams").value_size != STREAM_ELEM:
            raise RuntimeError("packets.bpf.o's stream element is not capture.STREAM_ELEM")
        try:
            obj.load()
        except LibbpfError as exc:
            if exc.errno != errno.ENOMEM:
                raise
            # The maps are allocated whole here, and charged to our memory cgroup.
            streams = obj.map("streams")
            need = (streams.max_entries * streams.value_size  # ring buffers: bytes
                    + obj.map("pkt_index").max_entries + obj.map("ring").max_entries) >> 20
            raise BpfError(f"the kernel buffers of this capture ({need} MiB) do not fit in "
                           f"the memory podsight may use (its cgroup's limit?): give a smaller "
                           f"--buffer-size, or more memory", errno=errno.ENOMEM) from exc
        program = obj.program("capture_stream" if self.stream else "capture_slot")
        obj.map("jump").update((0).to_bytes(4, "little"), program.fd.to_bytes(4, "little"))
        # EPB timestamps: ktime (CLOCK_MONOTONIC) plus this offset is the wall clock.
        offset = time.clock_gettime_ns(time.CLOCK_REALTIME) - time.clock_gettime_ns(
            time.CLOCK_MONOTONIC)
        obj.map(".bss").update((0).to_bytes(4, "little"), offset.to_bytes(8, "little"))
        self.jump_fd = obj.map("jump").fd
        self.meta_fd = obj.map("meta").fd
        self._ifstats = obj.map("ifstats")
        if self.stream:
            self.ring = RingBuffer(obj.map("pkt_index"), INDEX_DTYPE)
            size = self.ncpu * self.elems * STREAM_ELEM
            self._streams_mm = mmap.mmap(obj.map("streams").fd, size, mmap.MAP_SHARED,
                                         mmap.PROT_READ, 0, 0)
            self._streams = np.frombuffer(self._streams_mm, dtype=np.uint8)
            psize = max(page, (self.ncpu * POS_DTYPE.itemsize + page - 1) // page * page)
            self._pos_mm = mmap.mmap(obj.map("positions").fd, psize, mmap.MAP_SHARED,
                                     mmap.PROT_READ | mmap.PROT_WRITE, 0, 0)
            import ctypes

            self._cons = [ctypes.c_uint64.from_buffer(self._pos_mm, c * 16 + 8)
                          for c in range(self.ncpu)]
        else:
            self.ring = RingBuffer(obj.map("ring"), np.dtype((np.void, self.slot)))

    # -- interfaces ------------------------------------------------------------------------

    def attach(self, iface_id: int, ifindex: int, netns: int | None,
               filters: dict[str, list[CBpf] | None]) -> Attachment:
        """Capture interface ``ifindex`` (of namespace ``netns``, None: ours) as ``iface_id``.

        ``filters``: the classic BPF per direction (None: every packet).
        Errors: :class:`~podsight.ebpf.errors.InterfaceGone` when it went away meanwhile.
        """
        if not 0 <= iface_id < MAX_IFACES:
            raise ValueError(f"at most {MAX_IFACES} interfaces per capture")
        att = Attachment([], [], netns)
        try:
            for bit, direction in ((0, "ingress"), (1, "egress")):
                code = entry_program(filters[direction], direction, self.jump_fd, self.meta_fd,
                                     (iface_id << 1) | bit)
                prog = RawProgram(BPF_PROG_TYPE_SCHED_CLS, code,
                                  f"packets_{direction[:2]}")
                att.programs.append(prog)

                def hook(prog: RawProgram = prog, direction: str = direction) -> TcHook:
                    return TcHook(prog, ifindex, direction)

                att.hooks.append(hook() if netns is None else call_in_netns(netns, hook))
        except BaseException:
            att.close()
            raise
        self.attachments[iface_id] = att
        return att

    def detach(self, iface_id: int) -> None:
        att = self.attachments.pop(iface_id, None)
        if att is not None:
            att.close()

    def detach_all(self) -> None:
        for iface_id in list(self.attachments):
            self.detach(iface_id)

    # -- blocks ------------------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        """Sleep until the kernel wakes us or ``timeout``; not at all in stream mode when
        blocks are waiting already (a CPU's stream past its mark wakes no one)."""
        if self.stream and self.ring.pending_bytes() >= STREAM_BUSY_RECORDS * (
                INDEX_DTYPE.itemsize + 8):
            return
        self.ring.wait(timeout)

    def frames(self) -> Frames:
        """The blocks written since the last call, in place; release them once written."""
        self.release()
        if self.stream:
            return self._stream_frames()
        data, offsets, end = self.ring.peek()
        if not len(offsets):
            self.ring.advance(end)
            return Frames(data, offsets, offsets)
        n, first, step = len(offsets), int(offsets[0]), self.ring.record_size
        if int(offsets[-1]) == first + step * (n - 1):  # none discarded: a strided view
            lengths = np.ndarray((n,), dtype="<u4", buffer=data, offset=first + 4,
                                 strides=(step,)).astype(np.int64)
        else:
            words = data[: (len(data) // 4) * 4].view(np.uint32)
            lengths = words[(offsets + 4) // 4].astype(np.int64)
        ring = self.ring
        self._pending_release = lambda: ring.advance(end)
        return Frames(data, offsets, lengths, self.release)

    def _stream_frames(self) -> Frames:
        """The blocks the index names, in place in the streams, in time order.

        The index is read as strided columns (no structured copy) and given back
        at once (what is kept of it is copied); each CPU's stream is given back on
        release, up to its last entry's end (one producer per stream: its entries
        come in stream order)."""
        data, at, end = self.ring.peek()
        n = len(at)
        if not n:
            self.ring.advance(end)
            empty = np.zeros(0, dtype=np.int64)
            return Frames(self._streams, empty, empty)
        step, first = self.ring.record_size, int(at[0])
        if int(at[-1]) == first + step * (n - 1):  # none discarded: strided columns
            pos, word, ts, pair = (np.ndarray((n,), "<u8", buffer=data, offset=first + k,
                                              strides=(step,)) for k in (0, 8, 16, 24))
        else:
            longs = data[: (len(data) // 8) * 8].view("<u8")
            pos, word, ts, pair = (longs[at // 8 + k] for k in (0, 1, 2, 3))
        pos = pos.astype(np.int64)
        lengths = (word & np.uint64(0xFFFFFFFF)).astype(np.int64)
        cpu = (word >> np.uint64(32)).astype(np.int64)
        saddr = (pair & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        daddr = (pair >> np.uint64(32)).astype(np.uint32)
        # Two CPUs' blocks can be a few ns out of time order (a timestamp is read just
        # after its entry's reservation): put the batch in time order when it is not.
        order = (np.argsort(ts, kind="stable")
                 if n > 1 and bool((ts[1:] < ts[:-1]).any()) else None)
        self.ring.advance(end)
        offsets = ((cpu * self.elems + (pos // STREAM_ELEM) % self.elems) * STREAM_ELEM
                   + pos % STREAM_ELEM)
        last = np.full(self.ncpu, -1, dtype=np.int64)
        np.maximum.at(last, np.minimum(cpu, self.ncpu - 1), pos + lengths)
        marks = [(c, e) for c, e in enumerate(last.tolist()) if e >= 0]
        if order is not None:
            offsets, lengths = offsets[order], lengths[order]
            saddr, daddr = saddr[order], daddr[order]
        cons = self._cons

        def release() -> None:
            for c, mark in marks:
                cons[c].value = mark

        self._pending_release = release
        return Frames(self._streams, offsets, lengths, self.release, ipv4=(saddr, daddr))

    def release(self) -> None:
        """Give the space of the last frames back to the kernel (idempotent)."""
        done, self._pending_release = self._pending_release, None
        if done is not None:
            done()

    # -- counters ----------------------------------------------------------------------

    def counts(self, ids: Sequence[int]) -> dict[int, np.void]:
        """Per interface id: its counters summed over CPUs (IFSTATS_DTYPE)."""
        out: dict[int, np.void] = {}
        for i in ids:
            raw = self._ifstats.lookup(i.to_bytes(4, "little"))
            if raw is None:
                continue
            per_cpu = np.frombuffer(raw, dtype=IFSTATS_DTYPE, count=self.ncpu)
            total = np.zeros(1, IFSTATS_DTYPE)
            for name in IFSTATS_DTYPE.names or ():
                total[name] = per_cpu[name].sum()
            out[i] = total[0]
        return out

    def close(self) -> None:
        self.detach_all()
        self.release()
        ring = getattr(self, "ring", None)
        if ring is not None:
            ring.close()
        if self.stream and hasattr(self, "_cons"):
            self._cons = []
            del self._streams
            self._streams_mm.close()
            self._pos_mm.close()
        self.obj.close()


def _pow2(n: int) -> int:
    return 1 << (max(n, 1) - 1).bit_length()
