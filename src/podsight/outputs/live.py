"""A live table on a terminal: the latest record per key, redrawn in place, with a status line.

Plain ANSI (home, clear, reverse video) rather than curses: the view only
redraws once per batch, needs no input, and must leave the terminal as it
found it however the command stops. Generic over a schema: the rows are
the newest record per ``schema.key``, newest first by ``schema.order``.
"""

from __future__ import annotations

import shutil
from collections.abc import Hashable, Sequence
from typing import Generic, TextIO, TypeVar

from podsight.outputs.stream import write_all
from podsight.schema import Field, Schema

R = TypeVar("R")

HOME_CLEAR = "\x1b[H\x1b[2J"
REVERSE, RESET = "\x1b[7m", "\x1b[0m"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
KEEP = 4096  # records kept for the view; older ones fall off


class LiveOutput(Generic[R]):
    """Keeps the latest records and redraws ``title``, a header and as many rows as fit."""

    def __init__(self, schema: Schema[R], fields: Sequence[Field[R]], stream: TextIO,
                 title: str) -> None:
        self.fields = list(fields)
        self.stream = stream
        self.title = title
        self._key = schema.key or id
        self._order = schema.order
        self._latest: dict[Hashable, R] = {}
        self._started = False

    def write(self, records: Sequence[R]) -> None:
        for r in records:
            self._latest[self._key(r)] = r
        if len(self._latest) > KEEP:
            rows = self._rows()[: KEEP // 2]
            self._latest = {self._key(r): r for r in rows}

    def _rows(self) -> list[R]:
        rows = list(self._latest.values())
        if self._order is not None:
            rows.sort(key=self._order, reverse=True)
        else:
            rows.reverse()
        return rows

    def _line(self, cells: Sequence[str]) -> str:
        parts = [text.rjust(f.width) if f.right else text.ljust(f.width)
                 for f, text in zip(self.fields, cells, strict=True)]
        return " ".join(parts).rstrip()

    def draw(self, status: str) -> None:
        cols, lines = shutil.get_terminal_size((120, 30))
        room = max(lines - 4, 1)
        rows = self._rows()
        out = [HOME_CLEAR if self._started else HIDE_CURSOR + HOME_CLEAR]
        self._started = True
        out.append(f"{self.title}  {status}"[:cols] + "\n")
        out.append(REVERSE + self._line([f.header for f in self.fields])[:cols].ljust(cols)
                   + RESET + "\n")
        for row in rows[:room]:
            out.append(self._line([f.text(row) for f in self.fields])[:cols] + "\n")
        if len(rows) > room:
            out.append(f"... {len(rows) - room} more (a larger terminal shows more)\n")
        write_all(self.stream, "".join(out))

    def close(self) -> None:
        if self._started:
            write_all(self.stream, SHOW_CURSOR)
            self._started = False
