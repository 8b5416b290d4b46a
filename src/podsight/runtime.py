"""Running a trace until Ctrl-C, SIGTERM or a timeout, without cutting output short.

Ctrl-C must not raise in the middle of a write (that leaves a half line in
a JSON file), so while a trace runs SIGINT and SIGTERM only set a flag; the
loop sees it within one drain interval, drains what is left, reports pending
work and closes every kernel object in order.
"""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Any


class StopFlag:
    """Set by SIGINT/SIGTERM (while active) or by a deadline."""

    def __init__(self, timeout: float | None = None) -> None:
        self._set = False
        self._deadline = time.monotonic() + timeout if timeout else None
        self._saved: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self._set = True

    def set(self) -> None:
        self._set = True

    def remaining(self, default: float) -> float:
        """How long the next wait may last: ``default``, or less if the deadline is near."""
        if self._deadline is None:
            return default
        return max(0.0, min(default, self._deadline - time.monotonic()))

    def is_set(self) -> bool:
        if self._deadline is not None and time.monotonic() >= self._deadline:
            self._set = True
        return self._set

    @property
    def timed_out(self) -> bool:
        """Was the stop the deadline's (not a signal's)?"""
        return self._deadline is not None and time.monotonic() >= self._deadline

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
