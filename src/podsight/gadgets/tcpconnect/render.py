"""JSON lines straight from ring-buffer records, at the rate of a connect storm.

Why: at 100k connects/s, a ConnectEvent, a ConnectRow, an identity lookup and a
17-key f-string per event cost about 6 us of Python each -- on 2 cores, a
quarter of the machine taken from the traffic being observed. Yet nearly all
of a line repeats: for one identity (process, thread, cgroup, netns,
addresses, destination port, outcome) only the time, the source port and the
latency change. So each identity is rendered once, by the ordinary
:func:`to_json` (the JSON contract stays in one place) with markers where the
varying values go, and every later event of that identity is the cached
pieces with three values put in. Filters and pod selection are decided once
per identity too: every input they read is part of the identity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, cast

import numpy as np

from podsight.gadgets.tcpconnect.fields import ConnectRow, to_json
from podsight.gadgets.tcpconnect.tcpconnect import EVENT_DTYPE, ConnectEvent
from podsight.timefmt import Clock

# Markers cannot occur in a real line: JSON escapes control characters in strings.
_TIME, _SPORT, _LATENCY = "\x00t\x00", "\x00s\x00", "\x00l\x00"
_SHAPE = (_TIME, _SPORT, _SPORT, _SPORT, _LATENCY)  # the order to_json puts them in
_SKIP: tuple[str, ...] = ()  # identity filtered out
_SLOW: tuple[str, ...] = ("slow",)  # no template for this identity: render each event in full
_IDENTITY = np.dtype(f"V{EVENT_DTYPE.itemsize}")
CACHE_LIMIT = 65536


class _MarkerClock:
    def rfc3339(self, wall_ns: int) -> str:
        return _TIME


class JsonRenderer:
    """Renders records as JSON lines through a cache of per-identity templates.

    ``admit`` turns one event into its row (identity resolved) or None if a
    filter drops it; ``decode`` is the tracer's. Call :meth:`clear` whenever
    identity sources change (``Resolver.refresh()`` returned True).
    """

    def __init__(self, clock: Clock, decode: Callable[[np.ndarray], list[ConnectEvent]],
                 admit: Callable[[ConnectEvent], ConnectRow | None]) -> None:
        self._clock = clock
        self._decode = decode
        self._admit = admit
        self._templates: dict[bytes, tuple[str, ...]] = {}

    def clear(self) -> None:
        self._templates.clear()

    def _template(self, record: np.ndarray) -> tuple[str, ...]:
        """The pieces between the varying values, or _SKIP, or _SLOW."""
        event = self._decode(record)[0]
        row = self._admit(event)
        if row is None:
            return _SKIP
        marked = dataclasses.replace(event, sport=cast(Any, _SPORT),
                                     latency_ns=cast(Any, _LATENCY))
        line = to_json(ConnectRow(marked, row.src, row.dst, 0), cast(Clock, _MarkerClock()))
        pieces, found, rest = [], [], line
        while True:
            at = [(rest.find(m), m) for m in (_TIME, _SPORT, _LATENCY) if m in rest]
            if not at:
                break
            pos, marker = min(at)
            pieces.append(rest[:pos])
            found.append(marker)
            rest = rest[pos + len(marker):]
        pieces.append(rest)
        # A to_json that changed shape still renders right, only slower.
        return tuple(pieces) if tuple(found) == _SHAPE else _SLOW

    def lines(self, records: np.ndarray) -> list[str]:
        if not len(records):
            return []
        # Identity: the record without its time, latency and source port, but with
        # whether a port was bound (it tells "aborted" from "error").
        ident = records.copy()
        ident["ts_ns"] = 0
        ident["latency_ns"] = 0
        ident["sport"] = ident["sport"] != 0
        keys = ident.view(_IDENTITY).tolist()
        wall = records["ts_ns"].astype(np.int64) + self._clock.offset_ns
        secs = wall // 1_000_000_000
        nanos = (wall - secs * 1_000_000_000).tolist()
        secs_list = secs.tolist()
        # Calendar part once per second, through the clock's own formatting.
        prefix = {s: self._clock.rfc3339(s * 1_000_000_000)[:-11] for s in set(secs_list)}
        templates = self._templates
        if len(templates) > CACHE_LIMIT:
            templates.clear()
        out: list[str] = []
        append = out.append
        for i, (key, sec, ns, sport, lat) in enumerate(zip(
                keys, secs_list, nanos, records["sport"].tolist(),
                records["latency_ns"].tolist(), strict=True)):
            t = templates.get(key)
            if t is None:
                t = templates[key] = self._template(records[i : i + 1])
            if t is _SLOW:
                event = self._decode(records[i : i + 1])[0]
                row = self._admit(event)
                if row is not None:
                    append(to_json(row, self._clock))
                continue
            if not t:
                continue
            a, b, c, d, e, f = t
            append(f"{a}{prefix[sec]}.{ns:09d}Z{b}{sport}{c}{sport}{d}{sport}{e}{lat}{f}")
        return out
