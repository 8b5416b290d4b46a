"""A BPF ring buffer consumer that drains in batches and decodes in bulk.

Why not libbpf's ring_buffer__poll: it calls back into Python once per
record, and a Python call per event costs more than the event itself. This
consumer maps the ring itself and, because the kernel maps the data pages
twice in a row, sees the records between the consumer and producer positions
as one contiguous buffer, even when they wrap. For a ring of fixed-size
records that buffer is viewed as a numpy structured array in one call.

Programs write with BPF_RB_NO_WAKEUP (and force a wakeup only when the ring
fills past a watermark), so the reader is woken at most once per ``wait``
interval instead of once per event; on this machine that is the difference
between keeping 0.95 and 0.80 of a 46k connects/s storm.

The consumer position is stored with one aligned 8-byte write
(``ctypes.c_uint64.from_buffer``): the kernel reads it concurrently and must
never see a torn value.
"""

from __future__ import annotations

import ctypes
import mmap
import select

import numpy as np

from podsight.ebpf import _libbpf as L
from podsight.ebpf.errors import REBUILD_HINT, BadObject, InvalidArgument
from podsight.ebpf.objects import BPF_MAP_TYPE_RINGBUF, Map

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HEADER_SIZE = 8


def _round8(n: int) -> int:
    return (n + 7) & ~7


class RingBuffer:
    """Consumer side of one BPF_MAP_TYPE_RINGBUF map of fixed-size records."""

    def __init__(self, ring: Map, record: np.dtype) -> None:
        if ring.type != BPF_MAP_TYPE_RINGBUF:
            raise InvalidArgument(f"map {ring.name} is not a ring buffer")
        self._map = ring  # keeps the map (and its fd) alive
        fd = ring.fd
        page = mmap.PAGESIZE
        self.size = ring.max_entries
        self._mask = self.size - 1
        self._cons_mm = self._mmap(fd, page, mmap.PROT_READ | mmap.PROT_WRITE, 0)
        try:
            self._prod_mm = self._mmap(fd, page + 2 * self.size, mmap.PROT_READ, page)
        except BaseException:
            self._cons_mm.close()
            raise
        self._cons: ctypes.c_uint64 | None = ctypes.c_uint64.from_buffer(self._cons_mm)
        self._prod = np.frombuffer(self._prod_mm, dtype=np.uint64, count=1)
        self._data = np.frombuffer(self._prod_mm, dtype=np.uint8, offset=page)
        self.record = record
        self.record_size = HEADER_SIZE + _round8(record.itemsize)
        self._framed = np.dtype(
            {
                "names": ["hdr", "ev"],
                "formats": ["<u4", record],
                "offsets": [0, HEADER_SIZE],
                "itemsize": self.record_size,
            }
        )
        self._epoll = select.epoll()
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLET)
        self.drained = 0

    def _mmap(self, fd: int, length: int, prot: int, offset: int) -> mmap.mmap:
        try:
            return mmap.mmap(fd, length, mmap.MAP_SHARED, prot, 0, offset)
        except OSError as exc:
            raise L.error("mmap", exc.errno or 1,
                          f"map ring buffer {self._map.name} ({length} bytes)") from None

    def wait(self, timeout: float) -> None:
        """Sleep until the program forces a wakeup or ``timeout`` seconds pass."""
        self._epoll.poll(timeout)

    def pending_bytes(self) -> int:
        if self._cons is None:
            return 0
        return int(self._prod[0]) - int(self._cons.value)

    def drain(self) -> np.ndarray:
        """Every committed record since the last drain, as a copied array of ``record``."""
        if self._cons is None:
            return np.zeros(0, dtype=self.record)
        cons = int(self._cons.value)
        avail = int(self._prod[0]) - cons
        if avail <= 0:
            return np.zeros(0, dtype=self.record)
        n = avail // self.record_size
        start = cons & self._mask
        framed = self._data[start : start + n * self.record_size].view(self._framed)
        hdr = framed["hdr"]
        busy = (hdr & BUSY_BIT) != 0
        if busy.any():
            # A producer reserved this record and has not committed it yet:
            # everything after it waits for the next drain.
            n = int(np.argmax(busy))
            framed, hdr = framed[:n], hdr[:n]
        length = hdr & ~np.uint32(BUSY_BIT | DISCARD_BIT)
        if n and not (length == self.record.itemsize).all():
            raise BadObject(
                f"ring buffer {self._map.name}: records of {sorted(set(length.tolist()))} "
                f"bytes, podsight reads {self.record.itemsize}: the object does not match "
                f"this podsight; {REBUILD_HINT}"
            )
        keep = (hdr & DISCARD_BIT) == 0
        events = framed["ev"].copy() if keep.all() else framed["ev"][keep]
        # One 8-byte store, after the copy: the kernel may reuse the space at once.
        self._cons.value = cons + n * self.record_size
        self.drained += len(events)
        return events

    def peek(self) -> tuple[np.ndarray, np.ndarray, int]:
        """Committed records *in place*, for a reader that writes them out without a copy.

        Returns the ring's data (a uint8 view: the pages are mapped twice, so a
        record that wraps is contiguous), the offsets of the kept records'
        bodies in it, and the position to pass to :meth:`advance` once they are
        written. Until then the kernel cannot reuse their space.
        """
        empty = np.zeros(0, dtype=np.int64)
        if self._cons is None:
            return self._empty_data(), empty, 0
        cons = int(self._cons.value)
        avail = int(self._prod[0]) - cons
        n = avail // self.record_size
        if n <= 0:
            return self._data, empty, cons
        start = cons & self._mask
        # The headers as one strided view (no copy, no structured dtype): one pass decides.
        hdr = np.ndarray((n,), dtype="<u4", buffer=self._data, offset=start,
                         strides=(self.record_size,))
        flags = hdr & np.uint32(BUSY_BIT | DISCARD_BIT)
        keep: np.ndarray | None = None
        if flags.any():
            busy = (flags & np.uint32(BUSY_BIT)) != 0
            if busy.any():
                n = int(np.argmax(busy))
                flags = flags[:n]
            keep = flags == 0
        offsets = start + HEADER_SIZE + np.arange(n, dtype=np.int64) * self.record_size
        if keep is not None and not keep.all():
            offsets = offsets[keep]
        return self._data, offsets, cons + n * self.record_size

    def advance(self, position: int) -> None:
        """Give the space up to ``position`` (from :meth:`peek`) back to the kernel."""
        if self._cons is not None and position > int(self._cons.value):
            self._cons.value = position  # one 8-byte store
            self.drained += 1

    @staticmethod
    def _empty_data() -> np.ndarray:
        return np.zeros(0, dtype=np.uint8)

    def close(self) -> None:
        if self._cons is None:
            return
        self._epoll.close()
        # Views must go before their mmaps can close.
        self._cons = None
        del self._prod, self._data
        self._cons_mm.close()
        self._prod_mm.close()

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
