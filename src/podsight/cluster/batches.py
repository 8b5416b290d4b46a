"""What the agent's pipeline writes to: batches for the stream instead of a terminal.

:class:`RecordBatches` stands where the local command's stdout stands for ``-o json``:
the pipeline's JSON output (its template fast path included) hands it each batch of
lines in one write, which becomes one ``Records`` message with the batch's first
sequence number and each record's wall-clock time (the first RFC 3339 time of its line:
what every gadget's JSON starts with), so the client merges without parsing JSON.
:class:`FrameBatches` is the frame output of capture gadgets: the kernel-built pcapng
blocks and the interfaces they refer to.
"""

from __future__ import annotations

import re
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from podsight.cluster import agent_pb2 as pb

#: The first RFC 3339 time of each line (UTC, nanoseconds: the format of timefmt.Clock).
_FIRST_TIME = re.compile(r'^[^\n]*?"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9})Z"', re.M)


class SeqCounter:
    """The run's sequence numbers, shared by records and frames (one counter per node run)."""

    def __init__(self) -> None:
        self.next = 0
        self.lock = threading.Lock()

    def take(self, n: int) -> int:
        with self.lock:
            first = self.next
            self.next += n
            return first


def line_times(text: str, count: int) -> np.ndarray:
    """Wall-clock ns of each of ``count`` lines (now, for a line without a time)."""
    found = _FIRST_TIME.findall(text)
    if len(found) == count:
        return np.array(found, dtype="datetime64[ns]").astype(np.int64)
    now = time.time_ns()
    out = np.full(count, now, dtype=np.int64)
    for i, line in enumerate(text.split("\n")[:count]):
        m = _FIRST_TIME.match(line)
        if m:
            out[i] = np.datetime64(m.group(1), "ns").astype(np.int64)
    return out


class RecordBatches:
    """A text stream whose every write is a batch of JSON lines, sent as one message."""

    def __init__(self, seq: SeqCounter, emit: Callable[[pb.RunReply], None]) -> None:
        self.seq = seq
        self.emit = emit

    def write(self, text: str) -> int:
        count = text.count("\n")
        if not count:
            return len(text)
        times = line_times(text, count)
        first = self.seq.take(count)
        self.emit(pb.RunReply(records=pb.Records(
            first_seq=first, count=count, lines=text.encode(), times=times.tobytes(),
            watermark=time.time_ns())))
        return len(text)

    def flush(self) -> None:
        pass


def interface_message(iface: Any) -> pb.Interface:
    return pb.Interface(id=iface.id, name=iface.name, description=iface.description,
                        snaplen=iface.snaplen, linktype=iface.linktype, filter=iface.filter,
                        start_ns=iface.start_ns, end_ns=iface.end_ns, closed=iface.closed,
                        received=iface.received, dropped=iface.dropped)


_TS = struct.Struct("<II")


class FrameBatches:
    """A :class:`podsight.pipeline.FrameOutput` that sends the blocks down the stream."""

    def __init__(self, seq: SeqCounter, emit: Callable[[pb.RunReply], None]) -> None:
        self.seq = seq
        self.emit = emit
        self.bytes = 0
        self.full = ""
        self.interfaces: list[pb.Interface] = []

    def write_frames(self, frames: Any, interfaces: Sequence[Any]) -> int:
        n = len(frames)
        self.interfaces = [interface_message(i) for i in interfaces]
        if not n:
            return 0
        blocks = [frames.block(i) for i in range(n)]
        times = np.empty(n, dtype=np.int64)
        for i, b in enumerate(blocks):  # EPB: type, length, interface, ts high, ts low
            hi, lo = _TS.unpack_from(b, 12)
            times[i] = (hi << 32) | lo
        data = b"".join(blocks)
        self.bytes += len(data)
        self.emit(pb.RunReply(frames=pb.Frames(
            first_seq=self.seq.take(n), count=n, blocks=data, times=times.tobytes(),
            interfaces=self.interfaces, watermark=time.time_ns())))
        return n

    def close(self, interfaces: Sequence[Any]) -> None:
        self.interfaces = [interface_message(i) for i in interfaces]


class NoticeLines:
    """The run's stderr as ``Notice`` messages, a line each; the "(Ctrl-C to stop)" line
    as ``Started``. The last line is held back: it is the summary line, which goes in the
    ``Summary`` instead."""

    def __init__(self, node: str, gadget: str, emit: Callable[[pb.RunReply], None]) -> None:
        self.node = node
        self.gadget = gadget
        self.emit = emit
        self._partial = ""
        self._held: str | None = None
        self.started = False

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            line = line.rstrip("\r")
            if not line:
                continue
            if self._held is not None:
                self._send(self._held)
            self._held = line
        return len(text)

    def _send(self, line: str) -> None:
        if line.endswith("(Ctrl-C to stop)") and not self.started:
            self.started = True
            what = line.removeprefix("podsight: ").removesuffix(" (Ctrl-C to stop)")
            self.emit(pb.RunReply(started=pb.Started(node=self.node, what=what,
                                                     gadget=self.gadget)))
            return
        self.emit(pb.RunReply(notice=pb.Notice(line=line)))

    def release(self) -> None:
        """A line held back that turned out not to be the summary (startup ended)."""
        if self._held is not None:
            self._send(self._held)
            self._held = None

    def flush(self) -> None:
        # The "tracing ..." line is written and flushed once the gadget is attached: tell
        # the client at once rather than at the next line.
        if self._held is not None and self._held.endswith("(Ctrl-C to stop)"):
            self.release()

    def isatty(self) -> bool:
        return False
