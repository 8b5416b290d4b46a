"""A live table on a terminal: the latest rows, redrawn in place, with a status line.

Plain ANSI (home, clear, reverse video) rather than curses: the view only
redraws once per interval, needs no input, and must leave the terminal as
it found it however the command stops.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import Any, TextIO

from podsight.events import Field
from podsight.outputs.stream import write_all

HOME_CLEAR = "\x1b[H\x1b[2J"
REVERSE, RESET = "\x1b[7m", "\x1b[0m"
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


class LiveTable:
    """Redraws ``title``, a header and as many rows as fit, newest first."""

    def __init__(self, fields: Sequence[Field[Any]], stream: TextIO, title: str) -> None:
        self.fields = list(fields)
        self.stream = stream
        self.title = title
        self._started = False

    def _line(self, cells: Sequence[str]) -> str:
        parts = [text.rjust(f.width) if f.right else text.ljust(f.width)
                 for f, text in zip(self.fields, cells, strict=True)]
        return " ".join(parts).rstrip()

    def draw(self, rows: Sequence[Any], status: str) -> None:
        cols, lines = shutil.get_terminal_size((120, 30))
        room = max(lines - 4, 1)
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
