"""Node streams into one, in time order, with each node's sequence numbers checked.

Each node's batches carry the sequence number of their first record; :class:`Ledger`
counts what never came (a gap: lost on the way or by an agent that died) and what came
twice (dropped). :class:`Merge` is a k-way merge with a bounded reorder window: records
wait until every running node has said (by a later batch or a heartbeat) that its clock
passed their time plus the window, then leave sorted by time, so records of different
nodes interleave by timestamp. The work per batch is numpy (a mask and one argsort per
release), not a heap operation per record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: How far behind its own clock a node's records may still arrive (ns): the gadget's
#: collect interval and the pipeline's batching, with room to spare.
WINDOW_NS = 1_000_000_000


@dataclass
class Ledger:
    """One node's sequence accounting."""

    expected: int = 0
    received: int = 0
    gaps: int = 0
    duplicates: int = 0

    def admit(self, first: int, count: int) -> tuple[int, int]:
        """The part ``[start, stop)`` of a batch to keep (indexes into the batch)."""
        start = 0
        if first < self.expected:  # some or all of it came already
            start = min(count, self.expected - first)
            self.duplicates += start
        elif first > self.expected:
            self.gaps += first - self.expected
        self.expected = max(self.expected, first + count)
        self.received += count - start
        return start, count

    def close(self, total: int) -> None:
        """The agent's Summary says it handed out ``total`` numbers: the tail never came."""
        if total > self.expected:
            self.gaps += total - self.expected
            self.expected = total


@dataclass
class _Chunk:
    node: int
    times: np.ndarray
    items: list[bytes]


@dataclass
class Merge:
    window_ns: int = WINDOW_NS
    _chunks: list[_Chunk] = field(default_factory=list)
    _marks: dict[int, int] = field(default_factory=dict)  # running node -> its clock
    pending: int = 0

    def join(self, node: int) -> None:
        self._marks.setdefault(node, 0)

    def leave(self, node: int) -> None:
        """The node's stream ended: it holds nothing back any more."""
        self._marks.pop(node, None)

    def mark(self, node: int, watermark: int) -> None:
        if node in self._marks and watermark > self._marks[node]:
            self._marks[node] = watermark

    def add(self, node: int, times: np.ndarray, items: list[bytes], watermark: int) -> None:
        if items:
            self._chunks.append(_Chunk(node, times, items))
            self.pending += len(items)
        self.mark(node, watermark)

    def release(self, *, everything: bool = False) -> list[bytes]:
        """Records every running node has passed (all of them with ``everything``), in
        time order."""
        if not self._chunks:
            return []
        if everything or not self._marks:
            limit = np.iinfo(np.int64).max
        else:
            limit = min(self._marks.values()) - self.window_ns
        times, owners, index, keep = [], [], [], []
        for c, chunk in enumerate(self._chunks):
            due = chunk.times <= limit
            if not due.any():
                keep.append(chunk)
                continue
            where = np.flatnonzero(due)
            times.append(chunk.times[where])
            owners.append(np.full(len(where), c, dtype=np.int64))
            index.append(where)
            if len(where) < len(chunk.items):
                rest = np.flatnonzero(~due)
                keep.append(_Chunk(chunk.node, chunk.times[rest],
                                   [chunk.items[i] for i in rest]))
        if not times:
            return []
        all_times = np.concatenate(times)
        order = np.argsort(all_times, kind="stable")
        who = np.concatenate(owners)[order].tolist()
        at = np.concatenate(index)[order].tolist()
        chunks = self._chunks
        out = [chunks[c].items[i] for c, i in zip(who, at, strict=True)]
        self._chunks = keep
        self.pending -= len(out)
        return out
