"""Records into an SQLite file that any ``sqlite3`` can read at any moment.

Each batch is one transaction, so a reader (or a Ctrl-C, or a full disk)
sees whole batches only; the file is created with its schema documented
inside it (a ``columns`` table with each column's type and meaning) and a
``capture`` table (command, start, end, counters, how it stopped) because a
capture file outlives the command that wrote it.

The file is created only once the run has passed its checks (root, API,
interfaces), and removed if the run fails before its first batch, so that a
failed start never leaves a file behind that the next run refuses to
overwrite.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

from podsight.errors import RunFailure, UserError
from podsight.schema import Column, Schema

R = TypeVar("R")


class SqliteWriter:
    """Appends rows to one table of a new SQLite file; a context manager."""

    def __init__(self, path: str, table: str, columns: Sequence[Column],
                 meta: Mapping[str, str]) -> None:
        self.path = path
        self.table = table
        self.rows = 0
        self._columns = list(columns)
        self._db: sqlite3.Connection | None = None
        try:
            # Created exclusively: never append to, or clobber, someone's file.
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.close(fd)
        except FileExistsError:
            raise UserError(f"{path} exists: remove it or choose another file") from None
        except OSError as exc:
            raise UserError(f"cannot create {path}: {exc.strerror}") from None
        try:
            self._db = sqlite3.connect(path, isolation_level=None)
            self._create(meta)
        except sqlite3.Error as exc:
            self.discard()
            raise RunFailure(f"cannot create {path}: {exc}") from None
        marks = ", ".join("?" for _ in columns)
        quoted = ", ".join(f'"{c.name}"' for c in columns)
        self._insert = f'INSERT INTO "{table}" ({quoted}) VALUES ({marks})'

    def _create(self, meta: Mapping[str, str]) -> None:
        db = self._db
        assert db is not None
        names = ", ".join(f'"{c.name}" {c.sql_type}' for c in self._columns)
        self._transaction([
            (f'CREATE TABLE "{self.table}" (id INTEGER PRIMARY KEY, {names})', ()),
            ("CREATE TABLE columns (tbl TEXT, name TEXT, type TEXT, doc TEXT)", ()),
            ("CREATE TABLE capture (key TEXT PRIMARY KEY, value TEXT)", ()),
        ])
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO columns VALUES (?, ?, ?, ?)",
                           [(self.table, c.name, c.sql_type, c.doc) for c in self._columns])
            db.executemany("INSERT INTO capture VALUES (?, ?)", sorted(meta.items()))
        except BaseException:
            self._rollback()
            raise
        db.execute("COMMIT")

    def _transaction(self, statements: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN")
        try:
            for sql, args in statements:
                db.execute(sql, args)
        except BaseException:
            self._rollback()
            raise
        db.execute("COMMIT")

    def _rollback(self) -> None:
        """Undo an open transaction; a ROLLBACK that fails (the disk is full, so the
        transaction is already gone) must not hide the error that caused it."""
        if self._db is not None and self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def write(self, rows: Sequence[Sequence[object]]) -> None:
        """Insert a batch as one transaction; a failure leaves the file as it was."""
        db = self._db
        if db is None:
            raise ValueError("SqliteWriter is closed")
        if not rows:
            return
        try:
            db.execute("BEGIN")
            try:
                db.executemany(self._insert, rows)
                db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        except sqlite3.Error as exc:
            raise RunFailure(f"writing {self.path}: {exc}") from None
        self.rows += len(rows)

    def set_meta(self, items: Mapping[str, str]) -> None:
        """Record how the capture went (end time, counters) in one transaction."""
        if self._db is None or not items:
            return
        try:
            self._transaction([("INSERT OR REPLACE INTO capture VALUES (?, ?)", (k, v))
                               for k, v in sorted(items.items())])
        except sqlite3.Error as exc:
            raise RunFailure(f"writing {self.path}: {exc}") from None

    def replace_table(self, name: str, columns: Sequence[tuple[str, str]],
                      rows: Sequence[Sequence[object]]) -> None:
        """A side table (``kubectl podsight``'s ``nodes``) made or replaced whole, in one
        transaction: a reader sees the old rows or the new ones."""
        if self._db is None:
            return
        marks = ", ".join("?" for _ in columns)
        statements: list[tuple[str, tuple[Any, ...]]] = [
            (f'CREATE TABLE IF NOT EXISTS "{name}" ('
             + ", ".join(f'"{c}" {t}' for c, t in columns) + ")", ()),
            (f'DELETE FROM "{name}"', ())]
        statements += [(f'INSERT INTO "{name}" VALUES ({marks})', tuple(r)) for r in rows]
        try:
            self._transaction(statements)
        except sqlite3.Error as exc:
            raise RunFailure(f"writing {self.path}: {exc}") from None

    @property
    def size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    def discard(self) -> None:
        """Close and remove the file (the run failed before anything was captured)."""
        self.close()
        for suffix in ("", "-journal"):
            with contextlib.suppress(OSError):
                os.unlink(self.path + suffix)

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.close()
            finally:
                self._db = None

    def __enter__(self) -> SqliteWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SqliteOutput(Generic[R]):
    """A gadget's records as rows of the table named after it, columns from its schema."""

    def __init__(self, path: str, table: str, schema: Schema[R],
                 meta: Mapping[str, str]) -> None:
        self._columns = schema.sql_columns
        self.writer = SqliteWriter(path, table, self._columns, meta)

    def write(self, records: Sequence[R]) -> None:
        cols = [c.value for c in self._columns]
        self.writer.write([tuple(get(r) for get in cols) for r in records])

    @property
    def bytes(self) -> int:
        return self.writer.size

    def close(self) -> None:
        self.writer.close()
