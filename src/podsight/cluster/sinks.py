"""Where the merged stream goes on the client: JSON lines, a table, SQLite, one pcapng.

Records arrive as the JSON lines the local ``-o json`` prints, with ``"node"`` first;
JSON outputs write them as they are. The table and SQLite read them back (orjson), so
they need no gadget code: the table shows the node and the record's first keys (or
``-o columns=``), SQLite gets one column per (flattened) key, added as keys appear, and a
``nodes`` table with each node's counts. Frames go to the local command's
:class:`~podsight.outputs.pcapng.PcapngOutput`, with the interfaces of every node
renumbered into one list: one interface block per (node, interface).
"""

from __future__ import annotations

import os
import sqlite3
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from podsight.errors import RunFailure, UserError
from podsight.outputs.stream import write_fd
from podsight.pipeline import CaptureInterface, Frames


class JsonSink:
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


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("endpoint") or value.get("addr") or orjson.dumps(value).decode())
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value)
    return "" if value is None else str(value)


class TableSink:
    """Columns a person reads: NODE, then ``columns`` (default: the first keys seen)."""

    def __init__(self, fd: int, columns: Sequence[str] | None, default_width: int = 7) -> None:
        self.fd = fd
        self.columns = list(columns) if columns else None
        self.limit = default_width
        self.bytes = 0
        self.widths: list[int] = []

    def write(self, lines: Sequence[bytes]) -> None:
        if not lines:
            return
        rows = [orjson.loads(line) for line in lines]
        out = []
        if self.columns is None:
            self.columns = [k for k in rows[0] if k != "node"][: self.limit]
        if not self.widths:
            self.widths = [max(len(c), 10) for c in ["node", *self.columns]]
            out.append("  ".join(c.upper().ljust(w) for c, w in
                                 zip(["node", *self.columns], self.widths, strict=True)))
        for row in rows:
            cells = [_cell(row.get("node")), *(_cell(row.get(c)) for c in self.columns)]
            out.append("  ".join(c.ljust(w) for c, w in zip(cells, self.widths, strict=True))
                       .rstrip())
        data = ("\n".join(out) + "\n").encode()
        write_fd(self.fd, data)
        self.bytes += len(data)

    def close(self) -> None:
        pass


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"src": {"addr": x}}`` to ``{"src_addr": x}``; lists become JSON text."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}".replace(".", "_")
        if isinstance(value, dict):
            out.update(flatten(value, name + "_"))
        elif isinstance(value, list):
            out[name] = orjson.dumps(value).decode()
        else:
            out[name] = value
    return out


def _sql_type(value: Any) -> str:
    if isinstance(value, (bool, int)):
        return "INTEGER"
    if isinstance(value, float):
        return "REAL"
    return "TEXT"


class SqliteSink:
    """Records (one transaction per batch), the run in ``capture``, the nodes in ``nodes``."""

    def __init__(self, path: str, table: str, meta: dict[str, str]) -> None:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
        except FileExistsError:
            raise UserError(f"{path} exists: remove it or choose another file") from None
        except OSError as exc:
            raise UserError(f"cannot create {path}: {exc.strerror}") from None
        self.path = path
        self.table = table
        self.db = sqlite3.connect(path, isolation_level=None)
        self.columns: list[str] = []
        self.db.execute(f'CREATE TABLE "{table}" (id INTEGER PRIMARY KEY, node TEXT)')
        self.columns.append("node")
        self.db.execute("CREATE TABLE capture (key TEXT PRIMARY KEY, value TEXT)")
        self.db.execute("CREATE TABLE nodes (node TEXT, address TEXT, state TEXT, records "
                        "INTEGER, lost_kernel INTEGER, lost_gaps INTEGER, duplicates INTEGER, "
                        "summary TEXT, error TEXT)")
        self.set_meta(meta)

    @property
    def size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def write(self, lines: Sequence[bytes]) -> None:
        if not lines:
            return
        rows = [flatten(orjson.loads(line)) for line in lines]
        try:
            self.db.execute("BEGIN")
            for row in rows:
                for key, value in row.items():
                    if key not in self.columns and key != "id":
                        self.db.execute(f'ALTER TABLE "{self.table}" ADD COLUMN "{key}" '
                                        f"{_sql_type(value)}")
                        self.columns.append(key)
            names = [c for c in self.columns]
            sql = (f'INSERT INTO "{self.table}" ({", ".join(f"{c!r}" for c in names)}) '
                   f'VALUES ({", ".join("?" for _ in names)})').replace("'", '"')
            self.db.executemany(sql, [tuple(r.get(c) for c in names) for r in rows])
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise RunFailure(f"writing {self.path}: {exc}") from None

    def set_meta(self, items: dict[str, str]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO capture VALUES (?, ?)",
                                sorted(items.items()))

    def set_nodes(self, rows: Sequence[tuple[object, ...]]) -> None:
        with self.db:
            self.db.execute("DELETE FROM nodes")
            self.db.executemany("INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def close(self) -> None:
        self.db.close()


class MergedCapture:
    """Frames of every node into one pcapng: each node's interface ids renumbered."""

    def __init__(self, output: Any) -> None:
        self.output = output
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

    def close(self) -> None:
        self.output.close(self.interfaces)
