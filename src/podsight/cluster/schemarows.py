"""Each record's table cells and SQLite values, made on the agent by the gadget's schema.

The client writes the table and the SQLite file with the local command's writers, which
walk a :class:`~podsight.schema.Schema` of typed records; those records live only on the
agent. So the agent, when the client asks (``RunRequest.outputs``), applies the schema
there: a pipeline sink that turns each record into its cells (the table's columns,
``-o columns=`` included) and its SQLite values (``Schema.sql_columns``), one JSON array
per record, and the ``Started`` message describes the columns. :class:`RecordBatches`
takes the arrays of a batch with its JSON lines (the pipeline writes a batch to every
output in turn, this sink before the JSON lines), so they travel in the same
``Records`` message and stay aligned with its sequence numbers. No gadget code here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from podsight.cluster import agent_pb2 as pb


def _plain(value: Any) -> Any:
    """A value orjson does not know (numpy scalars, addresses) as a number or text."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def dumps(values: Sequence[Any]) -> bytes:
    return orjson.dumps(list(values), default=_plain)


class SchemaRows:
    """A pipeline sink: table cells and/or SQLite values of every record it is given."""

    def __init__(self, table: bool, sql: bool) -> None:
        self.table = table
        self.sql = sql
        self.run: Any = None  # the pipeline Run, set once built (its gadget has the schema)
        self._fields: list[Any] | None = None
        self._columns: list[Any] | None = None
        self._cells: list[bytes] = []
        self._values: list[bytes] = []

    def _prepare(self) -> None:
        if self._fields is None:
            self._fields = self.run.table_fields() if self.table else []
            self._columns = self.run.gadget.schema.sql_columns if self.sql else []

    def describe(self, started: pb.Started) -> None:
        """The columns, into the ``Started`` message."""
        self._prepare()
        assert self._fields is not None and self._columns is not None
        started.table.extend(pb.TableField(name=f.name, header=f.header, width=f.width,
                                           right=f.right) for f in self._fields)
        started.sql.extend(pb.SqlColumn(name=c.name, type=c.sql_type, doc=c.doc)
                           for c in self._columns)

    def write(self, records: Sequence[Any]) -> None:
        self._prepare()
        if self._fields:
            fields = self._fields
            self._cells.extend(dumps([f.text(r) for f in fields]) for r in records)
        if self._columns:
            getters = [c.value for c in self._columns]
            self._values.extend(dumps([get(r) for get in getters]) for r in records)

    def take(self, count: int) -> tuple[bytes, bytes]:
        """The arrays of the batch of ``count`` JSON lines just written, newline-joined
        (empty where the batch had none: the client then shows the JSON keys' absence)."""
        cells, values = self._cells, self._values
        self._cells, self._values = [], []
        out = []
        for part in (cells, values):
            out.append(b"\n".join(part) + b"\n" if len(part) == count else b"")
        return out[0], out[1]
