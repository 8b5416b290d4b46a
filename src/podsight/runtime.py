"""Stopping a run on Ctrl-C, SIGTERM or a limit, at any moment, without cutting output short.

A signal handler that raises (Python's default KeyboardInterrupt) is wrong
for podsight twice over: raised inside libbpf's print callback while an
object loads, ctypes swallows it ("Exception ignored on calling ctypes
callback function") and the run never stops; raised in the middle of a
write, it leaves half a JSON line. So from the moment the command starts,
SIGINT and SIGTERM only set a flag. Startup checks the flag between its
steps (:meth:`StopFlag.check` raises :class:`Stopped`), the run loop checks
it once per batch, and every path ends with the final drain, the closing of
every kernel object and the summary line.
"""

from __future__ import annotations

import signal
import time
from types import FrameType

# Imported first by the CLI, before anything else: keep this module's own imports to the
# interpreter's built-ins, so the window in which a signal still raises is as short as can be.


class Stopped(Exception):
    """Raised by :meth:`StopFlag.check` when a stop was asked for during startup."""


class StopFlag:
    """Set by SIGINT/SIGTERM (once installed) or by a deadline."""

    def __init__(self) -> None:
        self._set = False
        self.signal: int | None = None
        self._deadline: float | None = None
        self._saved: dict[int, object] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self._set = True
        if self.signal is None:
            self.signal = signum

    def install(self) -> None:
        """From now on SIGINT and SIGTERM set the flag (and raise nothing)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._saved.clear()

    def set_deadline(self, seconds: float | None) -> None:
        """Stop ``seconds`` from now (None: no deadline)."""
        self._deadline = time.monotonic() + seconds if seconds else None

    def set(self) -> None:
        self._set = True

    def stop_within(self, seconds: float) -> None:
        """Stop at the latest ``seconds`` from now (an earlier deadline stays)."""
        at = time.monotonic() + seconds
        if self._deadline is None or at < self._deadline:
            self._deadline = at

    def remaining(self, default: float) -> float:
        """How long the next wait may last: ``default``, or less if the deadline is near."""
        if self._set:
            return 0.0
        if self._deadline is None:
            return default
        return max(0.0, min(default, self._deadline - time.monotonic()))

    def is_set(self) -> bool:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self._set = True
        return self._set

    def check(self) -> None:
        """Raise :class:`Stopped` if a stop was asked for (startup checkpoints)."""
        if self.is_set():
            raise Stopped

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` in short steps; True if a stop came meanwhile."""
        end = time.monotonic() + seconds
        while not self.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(left, 0.05))
        return True

    @property
    def timed_out(self) -> bool:
        """Was the stop the deadline's (not a signal's)?"""
        return self.signal is None and self._deadline is not None and (
            time.monotonic() >= self._deadline)


#: The process's stop flag: installed by the CLI before anything else runs.
STOP = StopFlag()
