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
from operator import itemgetter
from typing import Any

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
    """A batch's records still held: ``items[i]`` for each ``i`` in ``where``."""

    node: int
    times: np.ndarray
    items: list[Any]
    where: np.ndarray


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

    def add(self, node: int, times: np.ndarray, items: list[Any], watermark: int) -> None:
        if items:
            self._chunks.append(_Chunk(node, times, items, np.arange(len(items))))
            self.pending += len(items)
        self.mark(node, watermark)

    def release(self, *, everything: bool = False) -> list[Any]:
        """Records every running node has passed (all of them with ``everything``), in
        time order."""
        if not self._chunks:
            return []
        if everything or not self._marks:
            limit = np.iinfo(np.int64).max
        else:
            limit = min(self._marks.values()) - self.window_ns
        times, flat, index, keep = [], [], [], []
        base = 0
        for chunk in self._chunks:
            due = chunk.times <= limit
            if not due.any():
                keep.append(chunk)
                continue
            times.append(chunk.times[due])
            index.append(chunk.where[due] + base)  # positions in ``flat``
            flat.extend(chunk.items)
            base += len(chunk.items)
            if not due.all():  # the rest waits; its items are not copied
                rest = ~due
                keep.append(_Chunk(chunk.node, chunk.times[rest], chunk.items,
                                   chunk.where[rest]))
        if not times:
            return []
        order = np.argsort(np.concatenate(times), kind="stable")
        at = np.concatenate(index)[order].tolist()
        # One C-level gather (itemgetter) instead of a Python lookup per record.
        out = list(itemgetter(*at)(flat)) if len(at) > 1 else [flat[at[0]]]
        self._chunks = keep
        self.pending -= len(out)
        return out
