"""Where the merged stream goes on the client: JSON lines, a table, SQLite, one pcapng.

Records arrive as the JSON lines the local ``-o json`` prints, with ``"node"`` first;
JSON outputs write them as they are (never parsed). The table and SQLite are the local
command's writers, fed with the cells and values the agent made by the gadget's schema
(:mod:`.schemarows`), so they need no gadget code here and look like the local
command's, with the node added. Frames go to the local command's
:class:`~podsight.outputs.pcapng.PcapngOutput`, with the interfaces of every node
renumbered into one list: one interface block per (node, interface).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import Any, TextIO

import numpy as np
import orjson

from podsight.cluster import agent_pb2 as pb
from podsight.outputs.sqlite import SqliteWriter
from podsight.outputs.stream import write_fd
from podsight.outputs.table import TableWriter
from podsight.pipeline import CaptureInterface, Frames
from podsight.schema import Column, Field


class JsonSink:
    """JSON lines to ``fd``: the agents' lines as they came (``"node"`` already in them),
    joined, never parsed: a split and a join per record is all the client spends."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.bytes = 0

    def write(self, lines: Sequence[bytes]) -> None:
        if lines:
            data = b"\n".join(lines) + b"\n"
            write_fd(self.fd, data)
            self.bytes += len(data)

    def close(self) -> None:
        if self.fd > 2:
            os.close(self.fd)


def _node_field(width: int) -> Field[Any]:
    return Field(name="node", header="NODE", width=width, text=lambda row: row[0])


def _cell_field(f: pb.TableField, i: int) -> Field[Any]:
    def text(row: tuple[str, list[str]]) -> str:
        cells = row[1]
        return cells[i] if i < len(cells) else ""
    return Field(name=f.name, header=f.header, width=f.width, text=text, right=f.right)


class TableSink:
    """The local command's table (its :class:`~podsight.outputs.table.TableWriter`, the
    gadget's formatted columns as the agent's schema made them), NODE first."""

    needs = "table"

    def __init__(self, stream: TextIO, node_width: int = 6) -> None:
        self.stream = stream
        self.node_width = max(node_width, 4)
        self.writer: TableWriter | None = None

    def describe(self, started: pb.Started) -> None:
        if self.writer is None:
            fields = [_node_field(self.node_width),
                      *(_cell_field(f, i) for i, f in enumerate(started.table))]
            self.writer = TableWriter(fields, self.stream)
            self.writer.header()

    def write(self, items: Sequence[tuple[bytes, str, bytes, bytes]]) -> None:
        if self.writer is not None and items:
            self.writer.write([(node, orjson.loads(cells)) for _, node, cells, _ in items])
            self.stream.flush()

    def close(self) -> None:
        pass


#: The column every cluster table adds in front of the gadget's.
NODE_COLUMN = Column("node", "TEXT", "the node whose agent observed the record",
                     lambda row: row[0])
NODES_TABLE = (("node", "TEXT"), ("address", "TEXT"), ("state", "TEXT"),
               ("records", "INTEGER"), ("lost_kernel", "INTEGER"), ("lost_gaps", "INTEGER"),
               ("duplicates", "INTEGER"), ("summary", "TEXT"), ("error", "TEXT"))


class SqliteSink:
    """The local command's SQLite file (its :class:`~podsight.outputs.sqlite.SqliteWriter`:
    the gadget's table with the columns of its schema, ``columns`` documenting them,
    ``capture``), plus a ``node`` column and a ``nodes`` table with each node's counts.
    The file is created when the first node says what its columns are; if none ever
    does, at the end with the ``node`` column alone, so the ``nodes`` table still says
    what happened."""

    needs = "sql"

    def __init__(self, path: str, table: str, meta: dict[str, str]) -> None:
        self.path = path
        self.table = table
        self.meta = dict(meta)
        self.writer: SqliteWriter | None = None
        self.width = 1

    def describe(self, started: pb.Started) -> None:
        if self.writer is None:
            columns = [NODE_COLUMN, *(Column(c.name, c.type, c.doc, lambda row: None)
                                      for c in started.sql)]
            self.width = len(columns)
            self.writer = SqliteWriter(self.path, self.table, columns, self.meta)

    @property
    def size(self) -> int:
        return self.writer.size if self.writer is not None else 0

    def write(self, items: Sequence[tuple[bytes, str, bytes, bytes]]) -> None:
        if self.writer is None or not items:
            return
        width = self.width
        rows = []
        for _, node, _, values in items:
            row = [node, *orjson.loads(values)]
            if len(row) != width:
                row = (row + [None] * width)[:width]
            rows.append(row)
        self.writer.write(rows)

    def set_meta(self, items: dict[str, str]) -> None:
        if self.writer is None:
            self.meta.update(items)
        else:
            self.writer.set_meta(items)

    def set_nodes(self, rows: Sequence[tuple[object, ...]]) -> None:
        if self.writer is None:
            self.writer = SqliteWriter(self.path, self.table, [NODE_COLUMN], self.meta)
        self.writer.replace_table("nodes", NODES_TABLE, rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class ForwardedKeys:
    """The TLS keys the agents read on their nodes (``packets --tls-keylog FILE``), given to
    the client's :class:`~podsight.outputs.pcapng.PcapngOutput` as its key source: it
    writes what is new as a Decryption Secrets Block before the next packets it writes.
    Keys come with the batch whose packets need them and are added before that batch
    is merged, so they always precede those packets in the file."""

    def __init__(self) -> None:
        self.keys = b""
        self._new = b""

    def add(self, data: bytes) -> None:
        if data:
            if not data.endswith(b"\n"):
                data += b"\n"
            self.keys += data
            self._new += data

    def read_new(self) -> bytes:
        new, self._new = self._new, b""
        return new


class MergedCapture:
    """Frames of every node into one pcapng: each node's interface ids renumbered."""

    def __init__(self, output: Any, keys: ForwardedKeys | None = None) -> None:
        self.output = output
        self.keys = keys
        self.interfaces: list[CaptureInterface] = []
        self._ids: dict[tuple[str, int], CaptureInterface] = {}

    def update(self, node: str, interfaces: Sequence[Any]) -> None:
        """The node's interfaces and their counters, as its agent last told them."""
        for m in interfaces:
            iface = self._ids.get((node, m.id))
            if iface is None:
                iface = CaptureInterface(
                    id=len(self.interfaces), name=f"{node}/{m.name}",
                    description=f"{m.description} (node {node})" if m.description
                    else f"node {node}", snaplen=m.snaplen, filter=m.filter,
                    linktype=m.linktype or 1, start_ns=m.start_ns)
                self._ids[(node, m.id)] = iface
                self.interfaces.append(iface)
            iface.end_ns, iface.closed = m.end_ns, m.closed
            iface.received, iface.dropped = m.received, m.dropped

    def add_keys(self, data: bytes) -> None:
        """A node's new TLS key log lines (a batch's ``tls_keys``)."""
        if self.keys is not None:
            self.keys.add(data)

    def renumber(self, node: str, blocks: bytes, count: int) -> list[bytes]:
        """The batch's blocks, each with its interface id in the merged numbering."""
        out = []
        view = memoryview(blocks)
        at = 0
        for _ in range(count):
            length, local = struct.unpack_from("<II", blocks, at + 4)
            block = bytearray(view[at: at + length])
            iface = self._ids.get((node, local))
            struct.pack_into("<I", block, 8, iface.id if iface is not None else local)
            out.append(bytes(block))
            at += length
        return out

    def write(self, blocks: Sequence[bytes]) -> int:
        if not blocks:
            return 0
        data = np.frombuffer(b"".join(blocks), dtype=np.uint8)
        lengths = np.array([len(b) for b in blocks], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
        n: int = self.output.write_frames(Frames(data, offsets, lengths), self.interfaces)
        return n

    @property
    def size(self) -> int:
        return int(self.output.bytes)

    @property
    def full(self) -> str:
        return str(self.output.full)

    def close(self) -> None:
        self.output.close(self.interfaces)
