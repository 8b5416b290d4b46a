"""A gadget's record, declared once: its table columns, JSON keys and SQLite columns.

Each :class:`Field` says how one piece of a record reads in a table cell, in
a JSON line and in SQLite; outputs walk a :class:`Schema` and know nothing
about any gadget. One declaration is the point: when a flow was described
three times (columns, JSON, SQL) a field added to one was forgotten in
another.

JSON is produced as text, field by field, not through ``json.dumps`` of a
dict: values that repeat (names, endpoints) are encoded once and cached,
which is most of a line, and a generic line costs a few microseconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Generic, TypeVar

from podsight.errors import UserError

R = TypeVar("R")


@lru_cache(maxsize=65536)
def json_string(value: str) -> str:
    """A JSON string literal; cached because comms, names and reasons repeat."""
    return json.dumps(value, ensure_ascii=False)


def json_value(value: Any) -> str:
    """Any JSON-able value as compact JSON text."""
    if isinstance(value, str):
        return json_string(value)
    if isinstance(value, bool) or value is None:
        return "true" if value is True else "false" if value is False else "null"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Column:
    """One SQLite column: name, SQL type, meaning, and its value in a record."""

    name: str
    sql_type: str
    doc: str
    value: Callable[[Any], object]


@dataclass(frozen=True)
class Field(Generic[R]):
    """One piece of a record.

    - ``name``: the ``-o columns=`` name and the JSON key.
    - ``text``: the table cell.
    - ``json``: the value as JSON text, None to leave the key out of this
      line; a field with ``json=None`` never appears in JSON (table only).
    - ``sql``: its SQLite columns (none, one, or several for a structured value).
    - ``default``: shown in the default table columns.

    What the live view (``podsight.tui``) reads, all optional, so that it needs no
    code per gadget:

    - ``group``: the view the column belongs to beyond the standard one
      (``drops``, ``dns``, ``rtt``, ``tls``: cycled with left/right), or the
      identity column set it is part of (``pod``, ``node``: page up/down).
    - ``total``: the column adds up (bytes, packets): its number, summed per key
      in the view's rate mode.
    - ``ends``: the field is one end of the record, as ``(target, address attribute,
      port attribute)`` (set by :func:`endpoint`): the view derives the IP and port,
      pod, workload and node columns from it.
    """

    name: str
    header: str
    width: int
    text: Callable[[R], str]
    json: Callable[[R], str | None] | None = None
    sql: tuple[Column, ...] = ()
    right: bool = False
    default: bool = True
    doc: str = ""
    group: str = ""
    total: Callable[[R], int] | None = None
    ends: tuple[str, str, str] | None = None


@dataclass(frozen=True)
class Sides:
    """Where the identity stage finds a record's endpoints, and where it puts them.

    ``local``: attribute names (addr, netns, cgroup) of the side that owns a
    socket (named by its process's cgroup, else its network namespace), or
    None. ``remote``: address attributes of the other ends, named by address
    (loopback is the local side itself). Each endpoint is written to the
    attribute ``target`` (``src``, ``dst``). ``time``: the attribute holding
    the event's kernel time (CLOCK_BOOTTIME ns), at which identity is resolved.
    ``subjects``: the endpoints pod selectors apply to (``-n``, ``-p``, ...).
    """

    time: str
    local: tuple[str, str, str, str] | None = None  # (target, addr, netns, cgroup)
    remote: tuple[tuple[str, str], ...] = ()  # ((target, addr), ...)
    subjects: tuple[str, ...] = ("src",)


@dataclass
class Schema(Generic[R]):
    """Every field of one gadget's record, plus how records are identified and keyed."""

    fields: list[Field[R]]
    sides: Sides
    #: The record's key in a live view: the latest record per key is shown.
    key: Callable[[R], Hashable] | None = None
    #: The record's time for ordering a live view (newest first).
    order: Callable[[R], int] | None = None
    #: The default table columns, in this order (None: fields with ``default`` set).
    defaults: tuple[str, ...] | None = None
    #: The record's raw bytes (a packet, link layer first), for the live view's detail
    #: pane (hex and decoded headers); None when records carry none.
    payload: Callable[[R], bytes | None] | None = None
    by_name: dict[str, Field[R]] = field(init=False)

    def __post_init__(self) -> None:
        self.by_name = {f.name: f for f in self.fields}

    @property
    def json_fields(self) -> list[Field[R]]:
        return [f for f in self.fields if f.json is not None]

    @property
    def sql_columns(self) -> list[Column]:
        return [c for f in self.fields for c in f.sql]

    def columns(self, spec: str | None, *, extra: Sequence[str] = ()) -> list[Field[R]]:
        """The default columns (plus ``extra``), or those named in ``columns=a,b,c``."""
        if spec is None:
            if self.defaults is not None:
                names = [*self.defaults, *(n for n in extra if n not in self.defaults)]
                return [self.by_name[n] for n in names]
            return [f for f in self.fields if f.default or f.name in extra]
        chosen: list[Field[R]] = []
        for name in (n.strip().lower() for n in spec.split(",")):
            if not name:
                continue
            if name not in self.by_name:
                known = ", ".join(self.by_name)
                raise UserError(f"unknown column {name!r} (columns: {known})")
            chosen.append(self.by_name[name])
        if not chosen:
            raise UserError(f"-o columns= needs at least one column name "
                            f"(columns: {', '.join(self.by_name)})")
        return chosen


# -- field builders ---------------------------------------------------------------------

def number(name: str, header: str, width: int, get: Callable[[Any], int | None], doc: str,
           *, default: bool = False, sql: bool = True, text: Callable[[Any], str] | None = None,
           total: bool = False) -> Field[Any]:
    """An integer: right-aligned in tables, a JSON number, an INTEGER column.

    ``total``: the number adds up across records (bytes, packets): the live view's
    rate mode sums it per key."""
    def as_json(r: Any) -> str | None:
        v = get(r)
        return None if v is None else str(v)

    def as_text(r: Any) -> str:
        v = get(r)
        return "" if v is None else str(v)

    def as_total(r: Any) -> int:
        return get(r) or 0

    return Field(name, header, width, text or as_text, as_json,
                 (Column(name, "INTEGER", doc, get),) if sql else (), right=True,
                 default=default, doc=doc, total=as_total if total else None)


def string(name: str, header: str, width: int, get: Callable[[Any], str | None], doc: str,
           *, default: bool = False, sql: bool = True, text: Callable[[Any], str] | None = None
           ) -> Field[Any]:
    """A string: a JSON string (key left out when None), a TEXT column."""
    def as_json(r: Any) -> str | None:
        v = get(r)
        return None if v is None else json_string(v)

    def as_text(r: Any) -> str:
        return get(r) or ""

    return Field(name, header, width, text or as_text, as_json,
                 (Column(name, "TEXT", doc, get),) if sql else (), default=default, doc=doc)


def table_only(name: str, header: str, width: int, text: Callable[[Any], str], doc: str,
               *, default: bool = True, right: bool = False, group: str = "") -> Field[Any]:
    """A column for people (formatted units, joined names); JSON and SQL carry the raw field."""
    return Field(name, header, width, text, None, (), right=right, default=default, doc=doc,
                 group=group)


# -- endpoints ----------------------------------------------------------------------------

def _endpoint_of(target: str, addr_attr: str) -> Callable[[Any], Any]:
    from podsight.identity.endpoint import Endpoint

    def get(r: Any) -> Endpoint:
        ep = getattr(r, target)
        return ep if ep is not None else Endpoint.raw(getattr(r, addr_attr))
    return get


def endpoint(target: str, header: str, addr_attr: str, port_attr: str, who: str,
             *, has_port: Callable[[Any], bool] | None = None) -> Field[Any]:
    """One end of a record, as identity named it.

    Table: ``p/ns/pod:port`` (no port where ``has_port`` says the protocol has
    none). JSON: ``{"addr", "port", "endpoint", "kind", "namespace", "pod", ...}``
    (unknown members left out). SQLite: flat ``<target>_endpoint``, ``_kind``,
    ``_namespace``, ``_name``, ``_workload``, ``_node``, ``_container`` columns,
    so "who talks to whom" is one GROUP BY.
    """
    ep_of = _endpoint_of(target, addr_attr)

    def text(r: Any) -> str:
        e = ep_of(r)
        if has_port is not None and not has_port(r):
            return str(e.notation)
        return f"{e.notation}:{getattr(r, port_attr)}"

    def as_json(r: Any) -> str:
        e = ep_of(r)
        port = getattr(r, port_attr)
        return (f'{{"addr":"{getattr(r, addr_attr)}","port":{port},'
                f'"endpoint":"{e.notation}:{port}",{e.json_fragment}}}')

    def attr(name: str) -> Callable[[Any], object]:
        def get(r: Any) -> object:
            e = ep_of(r)
            if name == "endpoint":
                return e.notation
            if name == "workload":
                return f"{e.workload_kind}/{e.workload_name}" if e.workload_kind else None
            return getattr(e, name) or None
        return get

    sql = (
        Column(f"{target}_endpoint", "TEXT", f"{who}: p/ns/pod, s/ns/svc, n/node or r/ip",
               attr("endpoint")),
        Column(f"{target}_kind", "TEXT", f"{who}: pod, service, node or raw", attr("kind")),
        Column(f"{target}_namespace", "TEXT", f"{who}: Kubernetes namespace",
               attr("namespace")),
        Column(f"{target}_name", "TEXT", f"{who}: pod, service or node name", attr("name")),
        Column(f"{target}_workload", "TEXT", f"{who}: owning workload, as Kind/name",
               attr("workload")),
        Column(f"{target}_node", "TEXT", f"{who}: node the pod runs on", attr("node")),
        Column(f"{target}_container", "TEXT", f"{who}: container of the process, when known",
               attr("container")),
    )
    return Field(target, header, 30, text, as_json, sql,
                 doc=f"{who}: address, port and identity", group="pod",
                 ends=(target, addr_attr, port_attr))


def k8s_fields(target: str) -> list[Field[Any]]:
    """Inspektor Gadget's K8S.* columns, for the side ``target`` (the traced pod)."""
    def pod_name(r: Any) -> str:
        e = getattr(r, target)
        return str(e.name) if e is not None and e.kind == "pod" else ""

    def attr(name: str) -> Callable[[Any], str]:
        def get(r: Any) -> str:
            e = getattr(r, target)
            return str(getattr(e, name)) if e is not None else ""
        return get

    return [
        table_only("k8s.node", "K8S.NODE", 12, attr("node"), "node of the traced pod",
                   default=False, group="node"),
        table_only("k8s.namespace", "K8S.NAMESPACE", 14, attr("namespace"),
                   "namespace of the traced pod", default=False, group="pod"),
        table_only("k8s.podname", "K8S.PODNAME", 16, pod_name, "the traced pod",
                   default=False, group="pod"),
        table_only("k8s.containername", "K8S.CONTAINERNAME", 18, attr("container"),
                   "container of the traced process", default=False, group="pod"),
    ]
