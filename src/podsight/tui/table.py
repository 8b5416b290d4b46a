"""A table widget that costs one string per row: what a live view redrawn twice a second
at 10k records/s can afford.

textual's DataTable renders every cell through Rich on every change (about
2 ms per row here); this widget is given its rows as cells and column widths,
joins each row into one line once, and paints a line as at most three
segments (before the cursor cell, the cell, after it). It has what the view
needs: a header, a cell cursor moved with the arrows, Enter or a click on
the cursor's cell to select it, a click on a header to sort by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.strip import Strip
from textual.widget import Widget

from podsight.tui.model import clip

HEADER = Style(bold=True, reverse=True)
CURSOR = Style(reverse=True)
CURSOR_FOCUSED = Style(reverse=True, bold=True, color="yellow")
ZEBRA = Style(bgcolor="grey11")


class LiteTable(Widget, can_focus=True):
    """Rows of text cells under a header; a cell cursor; selection by Enter or click."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1, 0)", show=False),
        Binding("down", "move(1, 0)", show=False),
        Binding("left", "move(0, -1)", show=False),
        Binding("right", "move(0, 1)", show=False),
        Binding("enter", "select", show=False),
    ]

    class CellSelected(Message):
        def __init__(self, row: int, column: int) -> None:
            super().__init__()
            self.row, self.column = row, column

    class CellHighlighted(Message):
        def __init__(self, row: int, column: int) -> None:
            super().__init__()
            self.row, self.column = row, column

    class HeaderSelected(Message):
        def __init__(self, column: int) -> None:
            super().__init__()
            self.column = column

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.header = ""
        self.lines: list[str] = []
        self.bounds: list[tuple[int, int]] = []  # (start, end) of each column in a line
        self.cursor_row = 0
        self.cursor_column = 0
        self._top = 0

    @property
    def row_count(self) -> int:
        return len(self.lines)

    def set_rows(self, headers: Sequence[str], cells: Sequence[Sequence[str]],
                 widths: Sequence[int], right: Sequence[bool]) -> None:
        """Show ``cells`` under ``headers`` in columns of ``widths`` (two spaces apart)."""
        bounds = []
        at = 1
        for w in widths:
            bounds.append((at, at + w))
            at += w + 2
        self.bounds = bounds

        def line(values: Sequence[str]) -> str:
            parts = []
            for i, w in enumerate(widths):
                text = clip(values[i], w)
                parts.append(text.rjust(w) if right[i] else text.ljust(w))
            return " " + "  ".join(parts)

        self.header = line(headers)
        self.lines = [line(row) for row in cells]
        self.cursor_row = min(self.cursor_row, max(len(self.lines) - 1, 0))
        self.cursor_column = min(self.cursor_column, max(len(widths) - 1, 0))
        self.refresh()

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        if y == 0:
            return Strip([Segment(self.header[:width].ljust(width), HEADER)])
        visible = max(self.size.height - 1, 1)
        if self.cursor_row < self._top:
            self._top = self.cursor_row
        elif self.cursor_row >= self._top + visible:
            self._top = self.cursor_row - visible + 1
        index = self._top + y - 1
        if index >= len(self.lines):
            return Strip.blank(width)
        text = self.lines[index][:width].ljust(width)
        base = ZEBRA if index % 2 else Style()
        if index != self.cursor_row or not self.bounds:
            return Strip([Segment(text, base)])
        start, end = self.bounds[self.cursor_column]
        cursor = CURSOR_FOCUSED if self.has_focus else CURSOR
        return Strip([Segment(text[:start], base), Segment(text[start:end], cursor),
                      Segment(text[end:], base)])

    def action_move(self, rows: int, columns: int) -> None:
        if not self.lines:
            return
        self.cursor_row = max(0, min(self.cursor_row + rows, len(self.lines) - 1))
        self.cursor_column = max(0, min(self.cursor_column + columns, len(self.bounds) - 1))
        self.post_message(self.CellHighlighted(self.cursor_row, self.cursor_column))
        self.refresh()

    def action_select(self) -> None:
        if self.lines:
            self.post_message(self.CellSelected(self.cursor_row, self.cursor_column))

    def _column_at(self, x: int) -> int | None:
        for i, (start, end) in enumerate(self.bounds):
            if start <= x < end + 2:
                return i
        return None

    def on_click(self, event: events.Click) -> None:
        column = self._column_at(event.x)
        if column is None:
            return
        if event.y == 0:
            self.post_message(self.HeaderSelected(column))
            return
        row = self._top + event.y - 1
        if row >= len(self.lines):
            return
        if (row, column) == (self.cursor_row, self.cursor_column):
            self.post_message(self.CellSelected(row, column))
        else:
            self.cursor_row, self.cursor_column = row, column
            self.post_message(self.CellHighlighted(row, column))
            self.refresh()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()
