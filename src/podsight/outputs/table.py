"""Columns a person can read at a glance, one line per event (the BCC style)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from podsight.outputs.stream import write_all
from podsight.schema import Field


class TableWriter:
    """Writes a header once, then one padded line per row; never truncates a value."""

    def __init__(self, fields: Sequence[Field[Any]], stream: TextIO, header: bool = True) -> None:
        self.fields = list(fields)
        self.stream = stream
        self._header_done = not header

    def _line(self, cells: Iterable[tuple[Field[Any], str]]) -> str:
        parts = []
        for f, text in cells:
            parts.append(text.rjust(f.width) if f.right else text.ljust(f.width))
        return " ".join(parts).rstrip()

    def header(self) -> None:
        if not self._header_done:
            self._header_done = True
            write_all(self.stream, self._line((f, f.header) for f in self.fields) + "\n")

    def write(self, rows: Sequence[Any]) -> None:
        self.header()
        if not rows:
            return
        fields = self.fields
        lines = [self._line((f, f.text(row)) for f in fields) for row in rows]
        write_all(self.stream, "\n".join(lines) + "\n")
