"""JSON lines from a schema: one object per record, written a batch at a time.

:class:`JsonLines` encodes any gadget's records field by field (see
:mod:`podsight.schema`). :class:`TemplateJson` is the fast path for gadgets
whose events arrive by the hundred thousand per second: most of a line
depends only on the event's *identity* (process, addresses, outcome), and
only a few values change per event (time, source port, latency). Each
identity is rendered once, through the same schema, into a template, and
every later event of that identity only fills in its few values. The
template is found by rendering one record twice with two sets of sentinel
values and checking that the pieces between them agree, so no marker can
be confused with data; an identity whose line does not split cleanly is
rendered in full each time (right, only slower).

Identity is resolved at each event's own time, and an IP or a namespace may
change hands between two events of one identity key. So, given a
:class:`TemplateIdentity`, a template also remembers since when the names in
it hold, and the identity generation it was checked at: it is made from an
event at or after that instant, an older event is rendered on its own, and
after a change anywhere the template is checked again (and kept when its own
names did not change).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TextIO, TypeVar

import numpy as np

from podsight.outputs.stream import write_all
from podsight.schema import Schema

R = TypeVar("R")

CACHE_LIMIT = 65536


class JsonEncoder(Generic[R]):
    """A record as one JSON object, keys in schema order, absent values left out.

    ``prefix``: members every line starts with (``"node":"node-a",``: ``podsight agent``
    names its node there), part of every template too, so it costs nothing per event."""

    def __init__(self, schema: Schema[R], prefix: str = "") -> None:
        self._parts: list[tuple[str, Callable[[R], str | None]]] = [
            (f'"{f.name}":', f.json) for f in schema.json_fields if f.json is not None
        ]
        self._open = "{" + prefix

    def __call__(self, record: R) -> str:
        out = []
        for key, enc in self._parts:
            text = enc(record)
            if text is not None:
                out.append(key + text)
        return self._open + ",".join(out) + "}"


class JsonLines(Generic[R]):
    """Writes records as JSON lines to a stream; counts the bytes written."""

    def __init__(self, schema: Schema[R], stream: TextIO, prefix: str = "") -> None:
        self.encode = JsonEncoder(schema, prefix)
        self.stream = stream
        self.bytes = 0

    def write(self, records: Sequence[R]) -> None:
        self.write_lines([self.encode(r) for r in records])

    def write_lines(self, lines: Sequence[str]) -> None:
        if lines:
            text = "\n".join(lines) + "\n"
            write_all(self.stream, text)
            self.bytes += len(text)


@dataclass(frozen=True)
class Slot:
    """A record attribute whose value changes from event to event of one identity.

    ``sentinels``: two unusual values of the attribute, used to find where
    its text lands in a line; ``text`` renders a sentinel as the schema
    would (``str`` for numbers; a time is formatted). ``values``: the
    attribute's per-event texts (or numbers, whose ``str()`` is the text)
    for a batch of raw records, computed in bulk.
    """

    attr: str
    sentinels: tuple[Any, Any]
    values: Callable[[np.ndarray], list[Any]]
    text: Callable[[Any], str] = str


@dataclass(frozen=True)
class TemplateSpec(Generic[R]):
    """What a gadget tells :class:`TemplateJson` about its raw records.

    ``keys``: each raw record's identity (the record with its varying fields
    cleared), as bytes. ``slots``: the varying attributes. ``admit``: one raw
    record (a 1-element array) to its record, identity named and filters
    applied, or None when a filter drops it: the pipeline's own per-record
    path, so a template says exactly what the slow path would.
    """

    keys: Callable[[np.ndarray], list[bytes]]
    slots: tuple[Slot, ...]
    admit: Callable[[np.ndarray], R | None]
    #: Each raw record's kernel time (CLOCK_BOOTTIME ns): the time its identity is named at.
    times: Callable[[np.ndarray], list[int]] | None = None


class TemplateIdentity(Protocol):
    """What :class:`TemplateJson` asks identity so that a template never names a pod that
    did not hold the address at an event's time (the pipeline's resolver)."""

    def sync(self, at_ns: int) -> int:
        """Take in identity changes up to ``at_ns``; the generation of the answers."""
        ...

    def since(self, record: np.ndarray) -> int:
        """Since when the names of this raw record (a 1-element array) are what they are now."""
        ...


_SKIP: tuple[Any, ...] = ()  # this identity is filtered out
_SLOW: tuple[Any, ...] = ("slow",)  # no clean template: render each event in full
#: What a batch fill yields for an event whose line must be rendered in full.
_SLOW_LINE = "\x00slow\x00"


def _skip_line(*values: object) -> str:
    return ""


def _slow_line(*values: object) -> str:
    return _SLOW_LINE


class TemplateJson(Generic[R]):
    """JSON lines straight from raw records, through per-identity templates.

    Records must be dataclasses (a template is rendered from a copy with the
    slots' attributes replaced). With ``identity`` (and the spec's ``times``)
    a template holds only for events its names hold for; without, the caller
    must :meth:`clear` when identity sources change.

    Why two paths: checking each event against its template's validity costs
    as much as filling it in. So a batch whose every identity has a template
    valid now, and no event older than any of them, is rendered by one list
    comprehension of compiled fills (one call and one f-string per event); any
    other batch takes the careful path, which also makes the templates the next
    batches use.
    """

    def __init__(self, encoder: JsonEncoder[R], spec: TemplateSpec[R],
                 identity: TemplateIdentity | None = None) -> None:
        self._encode = encoder
        self._spec = spec
        self._identity = identity if spec.times is not None else None
        # key -> [template (None: not made yet), since (boot ns), generation checked at]
        self._templates: dict[bytes, list[Any]] = {}
        self._makers: dict[tuple[int, ...], Callable[..., Callable[..., str]]] = {}
        n = len(spec.slots)
        args = ", ".join(f"a{i}" for i in range(n))
        #: [fill(a0, a1, ...) for each event]: the whole batch in one comprehension.
        self._render_all: Callable[..., list[str]] = eval(
            f"lambda F, {', '.join(f'c{i}' for i in range(n))}: "
            f"[f({args}) for f, {args} in zip(F, {', '.join(f'c{i}' for i in range(n))})]")
        # The fast path's view: key -> fill for templates valid at `_fast_generation`.
        self._fast: dict[bytes, Callable[..., str]] = {}
        self._fast_generation = -1
        self._fast_since = 0  # the newest `since` among them: older events go the careful way

    def clear(self) -> None:
        self._templates.clear()
        self._fast.clear()
        self._fast_since = 0

    def _render(self, row: R, which: int) -> tuple[str, list[str]]:
        slots = self._spec.slots
        line = self._encode(dataclasses.replace(  # type: ignore[type-var]
            row, **{s.attr: s.sentinels[which] for s in slots}))
        return line, [s.text(s.sentinels[which]) for s in slots]

    def _template(self, record: np.ndarray) -> Any:
        """The fill function for this identity (its pieces bound in), or _SKIP, or _SLOW."""
        row = self._spec.admit(record)
        if row is None:
            return _SKIP
        line_a, texts_a = self._render(row, 0)
        line_b, texts_b = self._render(row, 1)
        pieces: list[str] = []
        order: list[int] = []
        rest = line_a
        while True:
            hits = [(rest.find(t), i) for i, t in enumerate(texts_a) if t and t in rest]
            if not hits:
                break
            pos, i = min(hits)
            pieces.append(rest[:pos])
            order.append(i)
            rest = rest[pos + len(texts_a[i]):]
        pieces.append(rest)
        # The same cut must rebuild the line rendered with the other sentinels: then
        # every cut is a slot's text and nothing else moved.
        rebuilt = pieces[0] + "".join(texts_b[i] + pieces[k + 1] for k, i in enumerate(order))
        if not order or rebuilt != line_b:
            return _SLOW
        shape = tuple(order)
        make = self._makers.get(shape)
        if make is None:
            # lambda p0, p1, ...: lambda a0, a1, ...: f"{p0}{a_i0}{p1}{a_i1}...": compiled
            # once per shape; each identity's pieces are bound in as closure cells.
            body = "".join(f"{{p{k}}}{{a{i}}}" for k, i in enumerate(shape))
            body += f"{{p{len(shape)}}}"
            ps = ", ".join(f"p{k}" for k in range(len(pieces)))
            args = ", ".join(f"a{i}" for i in range(len(self._spec.slots)))
            make = self._makers[shape] = eval(f'lambda {ps}: lambda {args}: f"{body}"')
        return make(*pieces)

    def _check(self, record: np.ndarray, entry: list[Any] | None,
               generation: int) -> list[Any]:
        """The entry for this record's identity as of ``generation``: ``entry`` while the
        names it holds did not change, else a new one (its template made by the first event
        at or after ``since``)."""
        since = 0 if self._identity is None else self._identity.since(record)
        if entry is not None and entry[1] == since:
            entry[2] = generation
            return entry
        return [None, since, generation]

    def lines(self, records: np.ndarray) -> list[str]:
        """JSON lines for a batch of raw records (filtered-out identities give none)."""
        if not len(records):
            return []
        spec = self._spec
        keys = spec.keys(records)
        columns = [s.values(records) for s in spec.slots]
        identity = self._identity
        times = spec.times(records) if identity is not None and spec.times is not None else None
        generation = identity.sync(max(times)) if identity is not None and times else 0
        if generation != self._fast_generation:
            self._fast.clear()
            self._fast_generation = generation
            self._fast_since = 0
        if len(self._templates) > CACHE_LIMIT:
            self.clear()
        fills = list(map(self._fast.get, keys))
        if None in fills or (times is not None and min(times) < self._fast_since):
            return self._careful(records, keys, columns, times, generation)
        out = self._render_all(fills, *columns)
        if _SLOW_LINE in out:
            for i, line in enumerate(out):
                if line is _SLOW_LINE:
                    row = spec.admit(records[i : i + 1])
                    out[i] = self._encode(row) if row is not None else ""
        return [line for line in out if line] if "" in out else out

    def _careful(self, records: np.ndarray, keys: list[bytes], columns: list[list[Any]],
                 times: list[int] | None, generation: int) -> list[str]:
        """Event by event: check each identity's template against identity's changes, make
        the missing ones, render events older than their template's names in full."""
        spec = self._spec
        templates = self._templates
        fast = self._fast
        out: list[str] = []
        append = out.append
        for i, (key, values) in enumerate(zip(keys, zip(*columns, strict=True), strict=True)):
            entry = templates.get(key)
            if entry is None or entry[2] != generation:
                entry = templates[key] = self._check(records[i : i + 1], entry, generation)
            t = entry[0]
            if times is not None and times[i] < entry[1]:
                t = _SLOW  # older than the names in the template: named on its own
            elif t is None:
                t = entry[0] = self._template(records[i : i + 1])
            if t is not _SLOW or times is None or times[i] >= entry[1]:
                # Valid now for every event at or after `since`: the fast path may use it.
                fast[key] = _skip_line if t is _SKIP else _slow_line if t is _SLOW else t
                self._fast_since = max(self._fast_since, entry[1])
            if t is _SLOW:
                row = spec.admit(records[i : i + 1])
                if row is not None:
                    append(self._encode(row))
                continue
            if t is not _SKIP:
                append(t(*values))
        return out
