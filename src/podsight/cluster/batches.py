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
    """The run's sequence numbers, shared by records and frames (one counter per node run),
    and how far the run has got: :attr:`mark`."""

    def __init__(self) -> None:
        self.next = 0
        self.lock = threading.Lock()
        #: Wall-clock ns before which every record and frame of the run has been sent:
        #: the start of the last collect whose batch is out (the pipeline's ``progress``).
        #: Batches and heartbeats carry it as their watermark: the client's merge holds
        #: other nodes' records until this passes them, so it must never run ahead of
        #: what the gadget has actually collected (as the clock would while the run
        #: thread is stalled and the kernel still holds older events).
        self.mark = 0

    def take(self, n: int) -> int:
        with self.lock:
            first = self.next
            self.next += n
            return first


#: What every gadget's JSON line starts with: ``{"time":"2026-11-30T10:20:53.123456789Z"``.
_HEAD = np.frombuffer(b'{"time":"0000-00-00T00:00:00.000000000Z"', dtype=np.uint8)
_DIGITS = np.array([c == ord("0") for c in _HEAD], dtype=bool)
_FIXED = ~_DIGITS


def _places() -> np.ndarray:
    """Digit weights: the digits of the time (4+2+2+2+2+2+9) to its seven numbers."""
    out = np.zeros((23, 7), dtype=np.float64)
    at = 0
    for col, n in enumerate((4, 2, 2, 2, 2, 2, 9)):
        out[at: at + n, col] = 10 ** np.arange(n - 1, -1, -1)
        at += n
    return out


_PLACES = _places()


def _civil_days(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's days_from_civil)."""
    y = y - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    out: np.ndarray = era * 146097 + doe - 719468
    return out


def _head_times(data: bytes, count: int, skip: int = 0) -> np.ndarray | None:
    """The times of lines that all start with ``{"time":"...Z"``, read in bulk (numpy
    arithmetic on the digits: about 20 ns a line, where a regex and datetime64 from
    text cost over a microsecond, a fifth of the agent's whole cost per event); None
    if some line does not."""
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    if len(ends) != count or not count:
        return None
    starts = np.empty(count, dtype=np.int64)
    starts[0] = skip
    starts[1:] = ends[:-1] + 1 + skip
    if skip:  # the prefix, {"node":"x", ends with the comma: the time's '{' is its ','
        buf = buf.copy()
        buf[starts] = ord("{")
    width = len(_HEAD)
    if int((ends - starts).min()) < width:
        return None
    win = buf[starts[:, None] + np.arange(width)]
    if not (win[:, _FIXED] == _HEAD[_FIXED]).all():
        return None
    digits = win[:, _DIGITS]
    if (digits - 48 > 9).any():  # uint8: anything below '0' wraps above 9 too
        return None
    # year, month, day, hour, minute, second, nanoseconds: one matrix product.
    # In float64 (BLAS; exact: every number is below 2**53), then back to integers.
    y, mo, d, h, mi, sec, ns = ((digits - 48).astype(np.float64) @ _PLACES).astype(np.int64).T
    days = _civil_days(y, mo, d)
    out: np.ndarray = ((days * 86400 + h * 3600 + mi * 60 + sec) * 1_000_000_000) + ns
    return out


def line_times(text: str | bytes, count: int, skip: int = 0) -> np.ndarray:
    """Wall-clock ns of each of ``count`` lines (now, for a line without a time);
    ``skip``: the length of the prefix every line starts with after its ``{``."""
    data = text.encode() if isinstance(text, str) else text
    fast = _head_times(data, count, skip)
    if fast is not None:
        return fast
    text = data.decode()
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

    def __init__(self, seq: SeqCounter, emit: Callable[[pb.RunReply], None],
                 rows: Any = None, prefix: str = "") -> None:
        self.seq = seq
        self.emit = emit
        self.rows = rows  # a SchemaRows sink: the batch's table cells and SQLite values
        self.skip = len(prefix.encode())  # every line's {"node":"...", (the pipeline's)

    def write(self, text: str) -> int:
        count = text.count("\n")
        if not count:
            return len(text)
        data = text.encode()
        times = line_times(data, count, self.skip)
        first = self.seq.take(count)
        table, rows = self.rows.take(count) if self.rows is not None else (b"", b"")
        self.emit(pb.RunReply(records=pb.Records(
            first_seq=first, count=count, lines=data, times=times.tobytes(),
            watermark=self.seq.mark, table=table, rows=rows)))
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
        #: ``packets --comments``: each block with its comment, named on the node (where
        #: the identity of both ends is known), so the client's file carries them as is.
        self.annotate: Callable[[bytes], bytes] | None = None
        #: ``packets --tls-keylog FILE``: the key log followed on the node (or in a
        #: selected pod); new lines go with the next batch, ahead of its blocks.
        self.keylog: Any = None
        self._keys = b""

    def write_frames(self, frames: Any, interfaces: Sequence[Any]) -> int:
        n = len(frames)
        self.interfaces = [interface_message(i) for i in interfaces]
        if self.keylog is not None:
            self._keys += self.keylog.read_new()
        if not n:
            return 0
        blocks = [frames.block(i) for i in range(n)]
        if self.annotate is not None:
            blocks = [self.annotate(b) for b in blocks]
        times = np.empty(n, dtype=np.int64)
        for i, b in enumerate(blocks):  # EPB: type, length, interface, ts high, ts low
            hi, lo = _TS.unpack_from(b, 12)
            times[i] = (hi << 32) | lo
        data = b"".join(blocks)
        self.bytes += len(data)
        self.emit(pb.RunReply(frames=pb.Frames(
            first_seq=self.seq.take(n), count=n, blocks=data, times=times.tobytes(),
            interfaces=self.interfaces, watermark=self.seq.mark, tls_keys=self._keys)))
        self._keys = b""
        return n

    def send_keys(self) -> None:
        """Key log lines written since the last batch, sent now in a batch of no frames.

        An application writes a TLS session's secrets only after the packets they decrypt
        (the server's handshake flight) were captured, often after the last packet of a
        short exchange: waiting for the next frames could hold them past the moment the
        client writes those packets, and tshark would not decrypt them. Called after each
        collect, before the run's mark moves past it: keys written before a mark reach
        the client before the mark does, so the client's reorder window covers them."""
        if self.keylog is not None:
            self._keys += self.keylog.read_new()
        if self._keys:
            self.emit(pb.RunReply(frames=pb.Frames(
                first_seq=self.seq.take(0), count=0, interfaces=self.interfaces,
                watermark=self.seq.mark, tls_keys=self._keys)))
            self._keys = b""

    def close(self, interfaces: Sequence[Any]) -> None:
        self.interfaces = [interface_message(i) for i in interfaces]
        self.send_keys()


class NoticeLines:
    """The run's stderr as ``Notice`` messages, a line each; the "(Ctrl-C to stop)" line
    as ``Started``. The last line is held back: it is the summary line, which goes in the
    ``Summary`` instead."""

    def __init__(self, node: str, gadget: str, emit: Callable[[pb.RunReply], None],
                 describe: Callable[[pb.Started], None] | None = None) -> None:
        self.node = node
        self.gadget = gadget
        self.emit = emit
        self.describe = describe  # adds the table and SQLite columns to Started
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
            started = pb.Started(node=self.node, what=what, gadget=self.gadget)
            if self.describe is not None:
                self.describe(started)
            self.emit(pb.RunReply(started=started))
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
