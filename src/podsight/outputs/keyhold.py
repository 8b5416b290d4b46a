"""Packets held back a moment so that the TLS keys that decrypt them are written first.

An application writes a TLS session's secrets to its key log (``SSLKEYLOGFILE``) only
after it has read the packets they decrypt: curl writes the handshake secrets after the
server's handshake flight has arrived, and that flight was captured before. tshark and
Wireshark take a Decryption Secrets Block into account only for the packets after it in
the file (two passes do not help: measured with tshark 4.0, a DSB placed after the
ServerHello leaves the whole session encrypted). A capture that writes each batch as it
comes therefore loses decryption whenever it drains the ring between the server's flight
and the application's key write, which a busy capture does all the time.

:class:`KeyedHold` sits in front of the file when ``--tls-keylog`` is given: it copies
each batch out of the kernel's ring (the ring is given back at once, as usual) and hands
a packet to the file only once it is :data:`HOLD_NS` old, so the file reads the key log
after the application wrote what those packets need. The cost is a copy of the captured
bytes and up to :data:`HOLD_NS` of them in memory, paid only with ``--tls-keylog``. It
counts ``--max-packets`` itself, on what it accepts, so the run's counts stay what the
file holds. ``kubectl podsight packets`` needs none of this: the client's merge holds
packets for its reorder window, and agents send keys ahead of its watermark.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from podsight.pipeline import Frames

#: How long a packet waits for the keys that decrypt it (ns): an application writes them
#: within milliseconds of reading the packets; half a second leaves room for a loaded node.
HOLD_NS = 500_000_000


@dataclass
class _Held:
    times: np.ndarray  # each block's timestamp, wall-clock ns
    frames: Frames  # the blocks, in memory of their own


def _copy(frames: Frames, n: int) -> _Held:
    """The first ``n`` blocks of ``frames`` copied into one buffer.

    A slice assignment per block: every block lies apart from the next in the ring (a
    record header between them), and a per-byte gather index would take eight times
    the batch's bytes."""
    offsets = frames.offsets[:n].astype(np.int64)
    lengths = frames.lengths[:n].astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    data = np.empty(int(lengths.sum()), dtype=np.uint8)
    source = frames.data
    for at, off, length in zip(starts.tolist(), offsets.tolist(), lengths.tolist(),
                               strict=True):
        data[at: at + length] = source[off: off + length]
    words = data
    # EPB: type, length, interface, timestamp high, timestamp low (ns: if_tsresol 9).
    hi = words[(starts + 12)[:, None] + np.arange(4)].copy().view("<u4").ravel()
    lo = words[(starts + 16)[:, None] + np.arange(4)].copy().view("<u4").ravel()
    times = (hi.astype(np.int64) << 32) | lo.astype(np.int64)
    pairs = frames.ipv4
    ipv4 = None if pairs is None else (pairs[0][:n].copy(), pairs[1][:n].copy())
    return _Held(times, Frames(data, starts, lengths, ipv4=ipv4))


def _part(held: _Held, start: int, stop: int) -> Frames:
    f = held.frames
    pairs = f.ipv4
    return Frames(f.data, f.offsets[start:stop], f.lengths[start:stop],
                  ipv4=None if pairs is None else (pairs[0][start:stop], pairs[1][start:stop]))


class KeyedHold:
    """A :class:`podsight.pipeline.FrameOutput` that hands packets to ``inner`` once they
    are :data:`HOLD_NS` old (every collect calls :meth:`write_frames`, with or without
    packets, so held ones leave on time), and all of them at :meth:`close`."""

    def __init__(self, inner: Any, *, max_packets: int | None = None, hold_ns: int = HOLD_NS,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.inner = inner
        self.target = getattr(inner, "target", None)
        self.max_packets = max_packets
        self.hold_ns = hold_ns
        self.clock = clock
        self.accepted = 0
        self._full = ""
        self._held: list[_Held] = []

    @property
    def bytes(self) -> int:
        """The file's size once what is held is in it: ``--max-bytes`` counts what was
        accepted, so the hold does not let the file grow past the limit."""
        return int(self.inner.bytes) + sum(int(h.frames.lengths.sum()) for h in self._held)

    @property
    def full(self) -> str:
        return self._full or str(self.inner.full)

    @property
    def held(self) -> int:
        """Packets accepted and not yet in the file."""
        return sum(len(h.times) for h in self._held)

    def write_frames(self, frames: Frames, interfaces: Sequence[Any]) -> int:
        n = len(frames)
        if self.max_packets is not None:
            n = max(0, min(n, self.max_packets - self.accepted))
        if n:
            self._held.append(_copy(frames, n))
            self.accepted += n
            if self.max_packets is not None and self.accepted >= self.max_packets:
                self._full = "--max-packets reached"
        self._release(self.clock() - self.hold_ns, interfaces)
        return n

    def _release(self, until: int, interfaces: Sequence[Any]) -> None:
        """Held packets stamped at or before ``until`` to the file, in the order they came;
        always a call, so the file also learns of new and gone interfaces and new keys."""
        out: list[Frames] = []
        while self._held:
            held = self._held[0]
            due = int(np.searchsorted(held.times, until, side="right"))
            if due == len(held.times):
                out.append(held.frames)
                self._held.pop(0)
                continue
            if due:
                out.append(_part(held, 0, due))
                self._held[0] = _Held(held.times[due:], _part(held, due, len(held.times)))
            break
        if not out:
            self.inner.write_frames(Frames(np.empty(0, np.uint8), np.empty(0, np.int64),
                                           np.empty(0, np.int64)), interfaces)
        for frames in out:
            self.inner.write_frames(frames, interfaces)

    def close(self, interfaces: Sequence[Any]) -> None:
        try:
            self._release(np.iinfo(np.int64).max, interfaces)
        finally:
            self.inner.close(interfaces)
