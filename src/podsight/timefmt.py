"""Kernel timestamps (CLOCK_BOOTTIME ns) to wall-clock strings, cheaply.

Events arrive thousands per second; formatting each with datetime costs
more than the event. The calendar part is formatted once per second and
reused; only the nanoseconds are formatted per event.
"""

from __future__ import annotations

import time


class Clock:
    """Converts bpf_ktime_get_boot_ns() values to wall-clock time."""

    def __init__(self) -> None:
        self.offset_ns = time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        self._sec = -1
        self._prefix = ""

    def boot_now_ns(self) -> int:
        return time.clock_gettime_ns(time.CLOCK_BOOTTIME)

    def wall_ns(self, boot_ns: int) -> int:
        return boot_ns + self.offset_ns

    def rfc3339(self, wall_ns: int) -> str:
        """``2026-11-22T13:39:16.123456789Z`` (RFC 3339, UTC, nanoseconds)."""
        sec, ns = divmod(wall_ns, 1_000_000_000)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._prefix}.{ns:09d}Z"

    def hms(self, wall_ns: int) -> str:
        """``13:39:16.123`` for tables."""
        sec, ns = divmod(wall_ns, 1_000_000_000)
        return time.strftime("%H:%M:%S", time.localtime(sec)) + f".{ns // 1_000_000:03d}"


def format_duration(ns: int) -> str:
    """A duration as a person reads it: 850ns, 85.2us, 1.23ms, 3.01s."""
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.1f}us"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.2f}ms"
    return f"{ns / 1_000_000_000:.2f}s"
