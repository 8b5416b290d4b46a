"""The bridge between a run and its live terminal view: records in, a sampled picture out.

The run writes to the feed from its own thread, between batches, exactly as to
any output; the view (``podsight.tui``, in the main thread) takes a snapshot a
few times a second. Nothing here blocks the run: the feed keeps the latest
:data:`KEEP` records (older ones fall off) and per-second sums for the rate
mode, and the files are written before the feed sees a batch, so the screen
may fall behind or sample but the files never do.

When a gadget hands over raw kernel records that no other output decodes (the
JSON fast path, or the view alone), the feed decodes an evenly spread sample
of each batch (:data:`SAMPLE` records at most) and weighs each sampled record
by how many it stands for, so rates stay right while a connect storm costs
the screen a few thousand decodes a second, not a hundred thousand.

Lines a run writes to stderr while the view owns the terminal (the ready line,
identity notices, the summary) wait in :class:`LogBuffer`, are shown in the
status area, and are printed once the terminal is back.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from podsight.errors import PodsightError
from podsight.schema import Field, Schema

if TYPE_CHECKING:
    import numpy as np

    from podsight.pipeline import Tally

KEEP = 4000  # records kept for the table (newest); filters and sorts apply to these
SAMPLE = 64  # raw records decoded per batch for the screen, at most
WINDOW = 10  # seconds the rate mode sums over
TALLY_EVERY = 1.0  # seconds between readings of the kernel's loss counters


@dataclass(slots=True, eq=False)
class Row:
    """One record as the view holds it: ``weight`` records it stands for (sampling)."""

    record: Any
    weight: float
    seq: int
    hay: str | None = None  # every cell's text, lower case, for keyword filters (lazy)
    ok_gen: int = -1  # the filter generation ``ok`` was computed for
    ok: bool = True


class LogBuffer:
    """A stderr stand-in while the view owns the terminal: keeps lines for later."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._part = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            *whole, self._part = (self._part + text).split("\n")
            self.lines.extend(whole)
        return len(text)

    def flush(self) -> None:
        pass

    def replay(self, stream: TextIO) -> None:
        """Print what was kept (once the terminal is back)."""
        with self._lock:
            text = "".join(line + "\n" for line in self.lines)
            if self._part:
                text += self._part + "\n"
            self.lines, self._part = [], ""
        if text:
            stream.write(text)
            stream.flush()


class LiveFeed:
    """What the run tells its live view: records, counts, losses, files."""

    def __init__(self, title: str, noun: str) -> None:
        self.title = title
        self.noun = noun
        self.log = LogBuffer()
        self.schema: Schema[Any] | None = None
        self.fields: list[Field[Any]] = []  # the run's table columns (-o columns=, identity)
        self.files: list[tuple[str, Callable[[], int]]] = []
        self.ready = threading.Event()
        self.done = threading.Event()
        self.records = 0  # written to the outputs (exact; the summary's count)
        self.received = 0.0  # records the view stands for (sampled ones weighted)
        self.decoded = 0  # raw records decoded for the screen only
        self.offered = 0  # raw records offered for sampling
        self.tally: Tally | None = None
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._rows: deque[Row] = deque(maxlen=KEEP)
        self._seq = 0
        self._ends: tuple[str, ...] = ()
        self._totals: list[Callable[[Any], int]] = []
        # Rate mode: per whole second (monotonic), key -> [weight, total0 * weight, ...].
        self._buckets: deque[tuple[int, dict[Hashable, list[float]]]] = deque(maxlen=WINDOW + 2)
        self._history: deque[tuple[float, int]] = deque(maxlen=64)
        self._tally_at = 0.0

    # -- the run's side (its thread) ----------------------------------------------------

    def open(self, schema: Schema[Any], fields: Sequence[Field[Any]],
             files: Sequence[tuple[str, Callable[[], int]]]) -> None:
        self.schema = schema
        self.fields = list(fields)
        self.files = list(files)
        self._ends = tuple(f.ends[0] for f in schema.fields if f.ends is not None)
        self._totals = [f.total for f in schema.fields if f.total is not None]
        self.ready.set()

    def write(self, records: Sequence[Any]) -> None:
        """Every record the run kept (files already have them)."""
        self._add(records, 1.0)

    def offer(self, raw: np.ndarray, decode: Callable[[np.ndarray], list[Any]]) -> None:
        """Raw records nobody else decodes: decode an even sample of them for the screen."""
        n = len(raw)
        if not n:
            return
        self.offered += n
        if n > SAMPLE:
            step = n / SAMPLE
            raw = raw[[int(i * step) for i in range(SAMPLE)]]
        records = decode(raw)
        self.decoded += len(raw)
        self._add(records, n / len(raw))

    def _add(self, records: Sequence[Any], weight: float) -> None:
        if not records:
            return
        now = int(time.monotonic())
        ends = self._ends
        totals = self._totals
        with self._lock:
            if not self._buckets or self._buckets[-1][0] != now:
                self._buckets.append((now, {}))
            sums = self._buckets[-1][1]
            seq = self._seq
            rows = self._rows
            for r in records:
                key = tuple(getattr(r, t) for t in ends)
                acc = sums.get(key)
                if acc is None:
                    acc = sums[key] = [0.0] * (1 + len(totals))
                acc[0] += weight
                for i, total in enumerate(totals, 1):
                    acc[i] += total(r) * weight
            tail = records if len(records) <= KEEP else records[-KEEP:]
            for r in tail:
                seq += 1
                rows.append(Row(r, weight, seq))
            self._seq = seq + len(records) - len(tail)
            self.received += weight * len(records)

    def tick(self, records: int, tally: Callable[[], Tally] | None = None) -> None:
        """Once per batch: the records written so far, and (once a second) the losses."""
        now = time.monotonic()
        self.records = records
        self._history.append((now, records))
        if tally is not None and now - self._tally_at >= TALLY_EVERY:
            self._tally_at = now
            with contextlib.suppress(PodsightError, OSError):  # advisory until the end
                self.tally = tally()

    def finish(self, records: int, tally: Tally | None) -> None:
        self.records = records
        if tally is not None:
            self.tally = tally
        self.done.set()

    # -- the view's side (main thread) --------------------------------------------------

    @property
    def seq(self) -> int:
        return self._seq

    def snapshot(self) -> list[Row]:
        """The kept records, oldest first."""
        with self._lock:
            return list(self._rows)

    def rates(self, window: int = WINDOW) -> tuple[dict[Hashable, list[float]], float]:
        """Sums per key over the last ``window`` whole seconds, and the seconds covered."""
        now = time.monotonic()
        with self._lock:
            buckets = [(s, dict(b)) for s, b in self._buckets if s > now - window - 1]
        out: dict[Hashable, list[float]] = {}
        for _, sums in buckets:
            for key, acc in sums.items():
                have = out.get(key)
                if have is None:
                    out[key] = list(acc)
                else:
                    for i, v in enumerate(acc):
                        have[i] += v
        span = min(float(window), max(now - self.started, 1.0))
        return out, span

    def rate(self) -> float:
        """Records written per second, over the last two seconds or so."""
        hist = list(self._history)
        if len(hist) < 2:
            return 0.0
        end_t, end_n = hist[-1]
        for t, n in hist:
            if end_t - t <= 2.5:
                return (end_n - n) / (end_t - t) if end_t > t else 0.0
        return 0.0

    @property
    def sampling(self) -> float:
        """How many raw records each one decoded for the screen stands for (1: none skipped)."""
        return self.offered / self.decoded if self.decoded else 1.0
