"""What the live view shows, from a record schema alone: views, identity column sets,
filters, sorting, rate rows and column widths. No textual here: this is the part
that knows schemas, and it is tested without a terminal.

Everything comes from :class:`podsight.schema.Field` metadata, so a new gadget
(packets, say) gets every view by declaring its fields:

- a field's ``group`` puts it in a view beyond the standard one (``drops``,
  ``dns``, ``rtt``, ``tls``) or in an identity column set (``pod``, ``node``);
- an endpoint field (``ends``) yields the IP and port, pod, workload and node
  columns of that end;
- a field with ``total`` is summed per key in rate mode.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from podsight.errors import UserError
from podsight.identity.endpoint import Endpoint
from podsight.schema import Field, Schema

#: Identity column sets, cycled with page up/down (netobserv's keys and names).
IDENTITY_SETS = ("none", "ip", "pod", "workload", "node", "all")
IDENTITY_LABELS = {"none": "none", "ip": "IP and port", "pod": "pod", "workload": "workload",
                   "node": "node", "all": "all"}
#: Views beyond the standard one, cycled with left/right when the schema has their columns.
VIEW_GROUPS = ("drops", "dns", "rtt", "tls")
VIEW_LABELS = {"standard": "standard", "drops": "drops", "dns": "DNS", "rtt": "RTT",
               "tls": "TLS", "all": "all"}
MAX_WIDTH = 48  # a column never takes more than this while others need room


@dataclass(frozen=True)
class Col:
    """One column of the view: a schema field, or one derived from an endpoint."""

    name: str
    header: str
    text: Callable[[Any], str]
    right: bool = False
    #: A sortable value (numbers sort as numbers); None: the text.
    value: Callable[[Any], Any] | None = None


def _field_col(f: Field[Any]) -> Col:
    value = None
    if len(f.sql) == 1 and f.sql[0].sql_type == "INTEGER":
        value = f.sql[0].value
    elif f.total is not None:
        value = f.total
    return Col(f.name, f.header, f.text, f.right, value)


def endpoint_of(r: Any, target: str, addr: str) -> Endpoint:
    ep = getattr(r, target, None)
    return ep if isinstance(ep, Endpoint) else Endpoint.raw(str(getattr(r, addr, "")))


def workload_text(e: Endpoint) -> str:
    if e.workload_kind:
        return f"{e.namespace}/{e.workload_kind}/{e.workload_name}"
    return e.notation


class Layout:
    """The columns of every view and identity set of one schema."""

    def __init__(self, schema: Schema[Any], defaults: Sequence[Field[Any]]) -> None:
        self.schema = schema
        self.defaults = list(defaults)
        self.ends = [f.ends for f in schema.fields if f.ends is not None]
        self._id_names = {f.name for f in schema.fields
                          if f.ends is not None or f.group in ("pod", "node")}
        for _, addr, port in self.ends:
            self._id_names |= {addr, port}
        groups = {f.group for f in schema.fields}
        self.views = ["standard", *(g for g in VIEW_GROUPS if g in groups), "all"]
        self.identity_sets = list(IDENTITY_SETS) if self.ends else ["none"]
        self.derived: dict[str, Col] = {}
        for target, addr, port in self.ends:
            for col in self._derived(target, addr, port):
                self.derived[col.name] = col

    def _derived(self, target: str, addr: str, port: str) -> list[Col]:
        up = target.upper()

        def ep(r: Any) -> Endpoint:
            return endpoint_of(r, target, addr)

        return [
            Col(f"{target}.addr", f"{up}.ADDR", lambda r: str(getattr(r, addr, ""))),
            Col(f"{target}.port", f"{up}.PORT", lambda r: str(getattr(r, port, "")), True,
                lambda r: getattr(r, port, 0)),
            Col(f"{target}.namespace", f"{up}.NAMESPACE", lambda r: ep(r).namespace),
            Col(f"{target}.name", f"{up}.NAME", lambda r: ep(r).name),
            Col(f"{target}.workload", f"{up}.WORKLOAD", lambda r: workload_text(ep(r))),
            Col(f"{target}.node", f"{up}.NODE",
                lambda r: ep(r).node or (ep(r).name if ep(r).kind == "node" else "")),
            Col(f"{target}.container", f"{up}.CONTAINER", lambda r: ep(r).container),
        ]

    def is_identity(self, f: Field[Any]) -> bool:
        return f.name in self._id_names

    def identity_columns(self, which: str) -> list[Col]:
        by_name = self.schema.by_name
        out: list[Col] = []
        for target, addr, port in self.ends:
            ip = [_field_col(by_name[addr]) if addr in by_name else self.derived[f"{target}.addr"],
                  _field_col(by_name[port]) if port in by_name else self.derived[f"{target}.port"]]
            pod = [_field_col(by_name[target])]
            workload = [self.derived[f"{target}.workload"]]
            node = [self.derived[f"{target}.node"]]
            if which == "ip":
                out += ip
            elif which == "pod":
                out += pod
            elif which == "workload":
                out += workload
            elif which == "node":
                out += node
            elif which == "all":
                out += [*ip, *pod, *workload, *node, self.derived[f"{target}.container"]]
        if which in ("pod", "node", "all"):
            # Identity fields of the gadget's own (K8S.* of the traced pod), when shown.
            extra = [f for f in self.defaults if f.group in (which,) or
                     (which == "all" and f.group in ("pod", "node"))]
            out += [_field_col(f) for f in extra if f.ends is None]
        return out

    def columns(self, view: str, identity: str) -> list[Col]:
        """The columns of ``view`` with the identity columns of ``identity``."""
        fields = self.schema.fields if view == "all" else self.defaults
        base = [f for f in fields if not self.is_identity(f)
                and (view == "all" or f.group not in VIEW_GROUPS)]
        if view in VIEW_GROUPS:
            base += [f for f in self.schema.fields if f.group == view and f not in base]
        # Identity columns go where the first identity column was in the defaults.
        at = next((i for i, f in enumerate(fields) if self.is_identity(f)), 0)
        at = sum(1 for f in fields[:at] if f in base)
        cols = [_field_col(f) for f in base]
        return [*cols[:at], *self.identity_columns(identity), *cols[at:]]

    def all_columns(self) -> list[Col]:
        """Every column there is (keyword filters search them all)."""
        return self.columns("all", "all")

    def lookup(self, name: str) -> Col | None:
        """A column by name or header, case-insensitive (for ``Field:value`` filters)."""
        want = name.strip().lower()
        for col in self.all_columns():
            if want in (col.name.lower(), col.header.lower()):
                return col
        for col in self.derived.values():
            if want in (col.name.lower(), col.header.lower()):
                return col
        return None


# -- filters ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Filter:
    """``keyword``, ``regex``, ``Field:value``, each negated by a leading ``!``."""

    text: str  # as typed (shown in the filter bar)
    pattern: re.Pattern[str]
    col: Col | None = None
    negate: bool = False

    def match(self, r: Any, hay: Callable[[], str]) -> bool:
        if self.col is not None:
            hit = self.pattern.search(self.col.text(r)) is not None
        else:
            hit = self.pattern.search(hay()) is not None
        return hit != self.negate


def parse_filter(text: str, layout: Layout, *, exact: bool = False) -> Filter:
    """A filter from what was typed; :class:`UserError` for one that cannot be one.

    The value is a case-insensitive regular expression (an invalid one is taken
    literally); ``exact`` (a selected cell) matches the whole value literally.
    """
    raw = text.strip()
    negate = raw.startswith("!")
    body = raw[1:].strip() if negate else raw
    if not body:
        raise UserError("an empty filter")
    col = None
    name, sep, value = body.partition(":")
    if sep and name and re.fullmatch(r"[\w.\-]+", name):
        col = layout.lookup(name)
        if col is not None:
            body = value
    if exact:
        pattern = re.compile("^" + re.escape(body) + "$")
    else:
        try:
            pattern = re.compile(body, re.IGNORECASE)
        except re.error:
            pattern = re.compile(re.escape(body), re.IGNORECASE)
    return Filter(raw, pattern, col, negate)


# -- sorting -------------------------------------------------------------------------------

def sort_key(col: Col) -> Callable[[Any], tuple[int, Any]]:
    """Numbers as numbers, everything else as lower-case text; missing values last."""
    if col.value is not None:
        get = col.value

        def numeric(r: Any) -> tuple[int, Any]:
            v = get(r)
            return (0, v) if isinstance(v, int | float) else (1, 0)
        return numeric
    text = col.text
    return lambda r: (0, text(r).lower())


# -- rate mode -----------------------------------------------------------------------------

@dataclass(frozen=True)
class RateKey:
    """What rate mode groups by: a name and, per end, the text of its endpoint."""

    name: str
    label: str
    headers: tuple[str, ...]
    cells: Callable[[tuple[Any, ...]], tuple[str, ...]]


def rate_keys(layout: Layout) -> list[RateKey]:
    """Pairs and single ends, by pod, workload and node; one row for a schema with no ends."""
    n = len(layout.ends)
    if n == 0:
        return [RateKey("all", "all", ("ALL",), lambda key: ("all",))]
    names = [t.upper() for t, _, _ in layout.ends]

    def ep(e: Any) -> Endpoint:
        return e if isinstance(e, Endpoint) else Endpoint.raw("?")

    out = [
        RateKey("pod pair", "pod pair", tuple(names),
                lambda key: tuple(ep(e).notation for e in key)),
        RateKey("workload pair", "workload pair", tuple(f"{h}.WORKLOAD" for h in names),
                lambda key: tuple(workload_text(ep(e)) for e in key)),
        RateKey("node pair", "node pair", tuple(f"{h}.NODE" for h in names),
                lambda key: tuple(ep(e).node or ep(e).name if ep(e).kind != "raw"
                                  else ep(e).notation for e in key)),
    ]
    if n > 1:
        for i, h in enumerate(names):
            out.append(RateKey(h.lower(), f"{h.lower()} only", (h,), _one_end(i, ep)))
    return out


def _one_end(i: int, ep: Callable[[Any], Endpoint]) -> Callable[[tuple[Any, ...]],
                                                                 tuple[str, ...]]:
    return lambda key: (ep(key[i]).notation,)


def si(value: float) -> str:
    """1234567 -> 1.2M: rates at a glance."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.1f}" if value and abs(value) < 10 else f"{value:.0f}"


def rate_rows(sums: dict[Hashable, list[float]], span: float, key: RateKey,
              totals: Sequence[Field[Any]], noun: str) -> tuple[list[str], list[list[str]],
                                                             list[list[float]]]:
    """Headers, cells and numbers of the rate table: per key, records and totals per second."""
    grouped: dict[tuple[str, ...], list[float]] = {}
    for k, acc in sums.items():
        cells = key.cells(k if isinstance(k, tuple) else (k,))
        have = grouped.get(cells)
        if have is None:
            grouped[cells] = list(acc)
        else:
            for i, v in enumerate(acc):
                have[i] += v
    headers = [*key.headers, f"{noun.split()[-1].upper()}/S",
               *(f"{f.header}/S" for f in totals)]
    rows: list[list[str]] = []
    numbers: list[list[float]] = []
    for cells, acc in grouped.items():
        per_s = [v / span for v in acc]
        rows.append([*cells, *(si(v) for v in per_s)])
        numbers.append(per_s)
    return headers, rows, numbers


# -- widths --------------------------------------------------------------------------------

def fit(headers: Sequence[str], rows: Sequence[Sequence[str]], width: int,
        pad: int = 2) -> tuple[list[int], int]:
    """Column widths that fit ``width`` cells (``pad`` per column between them), and how
    many columns fit at all: the widest columns give up room first, down to their
    header; what still does not fit is left off at the right."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            if len(cell) > widths[i]:
                widths[i] = len(cell)
    floor = [max(len(h), 6) for h in headers]
    widths = [min(w, max(MAX_WIDTH, f)) for w, f in zip(widths, floor, strict=True)]
    total = sum(widths) + pad * len(widths)
    while total > width:
        i = max(range(len(widths)), key=lambda j: widths[j] - floor[j])
        if widths[i] <= floor[i]:
            break
        step = min(widths[i] - floor[i], total - width)
        widths[i] -= step
        total -= step
    shown = len(widths)
    while shown > 1 and sum(widths[:shown]) + pad * shown > width:
        shown -= 1
    return widths, shown


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


# -- the detail pane ------------------------------------------------------------------------

def detail_lines(r: Any, layout: Layout) -> list[str]:
    """Both ends in full (who, in which pod, workload, node and container), the headers
    decoded if the record carries bytes (a packet), every field of the record, then the
    bytes as hex (last: the longest part, below the fold in a small pane)."""
    schema = layout.schema
    out = []
    data = payload_of(r, schema)
    for target, addr, port in layout.ends:
        e = endpoint_of(r, target, addr)
        out.append(f"{target}: {e.notation}:{getattr(r, port, '')}  ({e.kind})")
        for label, value in (("address", e.addr), ("namespace", e.namespace),
                             ("name", e.name), ("workload", workload_text(e)
                                                if e.workload_kind else ""),
                             ("node", e.node), ("container", e.container),
                             ("labels", ",".join(f"{k}={v}" for k, v in
                                                 sorted(e.labels.items())))):
            if value:
                out.append(f"  {label:<10} {value}")
    if out:
        out.append("")
    if data:
        from podsight.tui.packet import decode_headers

        out.append(f"headers ({len(data)} bytes)")
        out += ["  " + line for line in decode_headers(data)]
        out.append("")
    width = max((len(f.name) for f in schema.fields), default=8)
    for f in schema.fields:
        if f.ends is not None:
            continue
        try:
            text = f.text(r)
        except (AttributeError, TypeError, ValueError):
            continue
        if text:
            out.append(f"{f.name:<{width}}  {text}")
    if data:
        from podsight.tui.packet import hexdump

        out.append("")
        out += hexdump(data)
    return out


def payload_of(r: Any, schema: Schema[Any]) -> bytes | None:
    """The record's raw bytes: the schema says where, or the record has a bytes attribute."""
    if schema.payload is not None:
        return schema.payload(r)
    for name in getattr(type(r), "__slots__", ()):
        value = getattr(r, name, None)
        if isinstance(value, bytes | bytearray | memoryview) and len(value):
            return bytes(value)
    return None
