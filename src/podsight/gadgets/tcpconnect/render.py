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

Identity is resolved at each event's own time (an IP or a namespace may
change hands between two events of one identity), so a template also
remembers since when the names in it hold (``stable_since``) and at which
identity generation that was checked: an older event, or a newer generation
that changed the names, does not reuse it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Protocol, cast

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


class TimedIdentity(Protocol):
    """What the renderer asks identity (``podsight.identity.Resolver``) so that a cached
    template never names a pod that did not hold the address at the event's time."""

    def sync(self, at_ns: int) -> int:
        """Take in changes up to ``at_ns``; the generation of the answers."""
        ...

    def stable_since(self, local_addr: str, netns: int, cgroup_id: int,
                     remote_addr: str) -> int:
        """Since when a socket's two sides are named as they are now."""
        ...


class _MarkerClock:
    def rfc3339(self, wall_ns: int) -> str:
        return _TIME


class JsonRenderer:
    """Renders records as JSON lines through a cache of per-identity templates.

    ``admit`` turns one event into its row (identity resolved at the event's
    time) or None if a filter drops it; ``decode`` is the tracer's. With
    ``identity`` a template is reused only for events its names hold for;
    without it, call :meth:`clear` whenever identity sources change
    (``Resolver.refresh()`` returned True).
    """

    def __init__(self, clock: Clock, decode: Callable[[np.ndarray], list[ConnectEvent]],
                 admit: Callable[[ConnectEvent], ConnectRow | None],
                 identity: TimedIdentity | None = None) -> None:
        self._clock = clock
        self._decode = decode
        self._admit = admit
        self._identity = identity
        # identity key -> [pieces, since (boot ns) its names hold, generation checked at]
        self._templates: dict[bytes, list[Any]] = {}

    def clear(self) -> None:
        self._templates.clear()

    def _check(self, record: np.ndarray, old: list[Any] | None, generation: int) -> list[Any]:
        """The template for this record's identity as of ``generation``: ``old`` if the names
        it holds have not changed since it was made, else a new one."""
        event = self._decode(record)[0]
        since = 0
        if self._identity is not None:
            since = self._identity.stable_since(event.saddr, event.netns, event.cgroup_id,
                                                event.daddr)
        if old is not None and old[1] == since:
            old[2] = generation
            return old
        # Resolved as now (the template holds for events from `since` on), whatever the
        # time of the event at hand; the time itself is a marker in the template.
        current = event if event.ts_ns >= since else dataclasses.replace(event, ts_ns=since)
        return [self._template(current), since, generation]

    def _template(self, event: ConnectEvent) -> tuple[str, ...]:
        """The pieces between the varying values, or _SKIP, or _SLOW."""
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
        times = records["ts_ns"].tolist()
        generation = 0 if self._identity is None else self._identity.sync(max(times))
        templates = self._templates
        if len(templates) > CACHE_LIMIT:
            templates.clear()
        out: list[str] = []
        append = out.append
        for i, (key, sec, ns, sport, lat, ts) in enumerate(zip(
                keys, secs_list, nanos, records["sport"].tolist(),
                records["latency_ns"].tolist(), times, strict=True)):
            entry = templates.get(key)
            if entry is None or entry[2] != generation:
                entry = templates[key] = self._check(records[i : i + 1], entry, generation)
            t = entry[0]
            if t is _SLOW or ts < entry[1]:  # or older than its names: resolved on its own
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
