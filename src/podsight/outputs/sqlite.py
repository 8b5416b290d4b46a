"""Rows into an SQLite file that any ``sqlite3`` can read at any moment.

Each batch is one transaction, so a reader (or a Ctrl-C) sees whole batches
only; the file is created with its schema documented inside it (a
``columns`` table with each column's type and meaning) because a capture
file outlives the command that wrote it.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Protocol

from podsight.errors import UserError


class ColumnSpec(Protocol):
    """A column's name, SQL type and meaning (documented inside the file)."""

    @property
    def name(self) -> str: ...
    @property
    def sql_type(self) -> str: ...
    @property
    def doc(self) -> str: ...


class SqliteWriter:
    """Appends rows to one table of a new SQLite file; a context manager."""

    def __init__(self, path: str, table: str, columns: Sequence[ColumnSpec],
                 meta: dict[str, str]) -> None:
        self.path = path
        self.table = table
        try:
            # Created exclusively: never append to, or clobber, someone's file.
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
        except FileExistsError:
            raise UserError(f"{path} exists: remove it or choose another file") from None
        except OSError as exc:
            raise UserError(f"cannot create {path}: {exc.strerror}") from None
        self._db: sqlite3.Connection | None = sqlite3.connect(path, isolation_level=None)
        names = ", ".join(f'"{c.name}" {c.sql_type}' for c in columns)
        db = self._db
        db.execute("BEGIN")
        db.execute(f'CREATE TABLE "{table}" (id INTEGER PRIMARY KEY, {names})')
        db.execute("CREATE TABLE columns (tbl TEXT, name TEXT, type TEXT, doc TEXT)")
        db.executemany("INSERT INTO columns VALUES (?, ?, ?, ?)",
                       [(table, c.name, c.sql_type, c.doc) for c in columns])
        db.execute("CREATE TABLE capture (key TEXT PRIMARY KEY, value TEXT)")
        db.executemany("INSERT INTO capture VALUES (?, ?)", sorted(meta.items()))
        db.execute("COMMIT")
        marks = ", ".join("?" for _ in columns)
        quoted = ", ".join(f'"{c.name}"' for c in columns)
        self._insert = f'INSERT INTO "{table}" ({quoted}) VALUES ({marks})'
        self.rows = 0

    def write(self, rows: Iterable[Sequence[object]]) -> None:
        """Insert a batch as one transaction."""
        db = self._db
        if db is None:
            raise ValueError("SqliteWriter is closed")
        batch = list(rows)
        if not batch:
            return
        db.execute("BEGIN")
        try:
            db.executemany(self._insert, batch)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        self.rows += len(batch)

    def set_meta(self, key: str, value: str) -> None:
        if self._db is not None:
            self._db.execute("INSERT OR REPLACE INTO capture VALUES (?, ?)", (key, value))

    @property
    def size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> SqliteWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
