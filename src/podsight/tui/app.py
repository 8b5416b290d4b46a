"""The live view: a textual app over a :class:`podsight.outputs.live.LiveFeed`.

The run writes into the feed from its own thread; this app, in the main thread,
redraws from a snapshot every :data:`REFRESH` seconds and at once after every
key, so the screen never slows the files down and a key is answered between
two snapshots. Keys (netobserv's where it has them):

====================  ==============================================================
up / down             more / fewer rows (the table focused: move the cursor)
left / right          previous / next view: standard, drops, DNS, RTT, TLS, all
page up / page down   identity columns: none, IP and port, pod, workload, node, all
typing, Enter         a filter: keyword or regex, ``Field:value``, ``!`` negates
Backspace (empty)     removes the last filter
Tab, Enter on a cell  focus the table; Enter adds that cell's ``Field:value`` filter
Esc                   back to the filter line
ctrl+p                pause / resume the screen (the files never pause)
ctrl+s / ctrl+r       sort by the next column / reverse (a header click sorts by it)
ctrl+t / ctrl+k       rate mode (per key, per second, like top) / its next key
ctrl+d                the detail pane of the selected row
ctrl+c / ctrl+q       stop: the run finishes its files, then the view closes
====================  ==============================================================
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.drivers.linux_driver import LinuxDriver
from textual.message import Message
from textual.widgets import Input, Static

from podsight.errors import UserError
from podsight.outputs.live import LiveFeed, Row
from podsight.runtime import StopFlag
from podsight.tui.model import (
    Col,
    Filter,
    Layout,
    RateKey,
    detail_lines,
    fit,
    parse_filter,
    rate_keys,
    rate_rows,
    si,
    sort_key,
)
from podsight.tui.table import LiteTable

REFRESH = 0.5  # seconds between redraws from the feed
ROWS = 50  # rows shown at first
ROW_STEPS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500, 1000, 2000, 4000)


class StdoutDriver(LinuxDriver):
    """textual draws on stderr; podsight's view is its stdout (what ``isatty`` checked)."""

    def __init__(self, app: App[Any], **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._file = sys.__stdout__


class FilterInput(Input):
    """The filter line; Backspace on an empty line removes the last filter."""

    class RemoveLast(Message):
        pass

    def action_delete_left(self) -> None:
        if not self.value:
            self.post_message(self.RemoveLast())
            return
        super().action_delete_left()


class LiveApp(App[None]):
    """The live view of one run."""

    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #title { height: 1; background: $primary-background; }
    #table { height: 1fr; }
    #detail { height: 45%; border-top: solid $primary; display: none; }
    #detail.shown { display: block; }
    #filters { height: 1; color: $warning; }
    #filter { height: 1; border: none; padding: 0 1; }
    #status { height: 1; background: $primary-background; }
    #keys { height: 1; color: $text-muted; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+c,ctrl+q", "quit", "stop", priority=True),
        Binding("up", "rows(1)", "more rows", show=False),
        Binding("down", "rows(-1)", "fewer rows", show=False),
        Binding("left", "view(-1)", "previous view", show=False, priority=True),
        Binding("right", "view(1)", "next view", show=False, priority=True),
        Binding("pageup", "identity(-1)", "identity columns", show=False, priority=True),
        Binding("pagedown", "identity(1)", "identity columns", show=False, priority=True),
        Binding("ctrl+p", "pause", "pause", priority=True),
        Binding("ctrl+s", "sort", "sort", priority=True),
        Binding("ctrl+r", "reverse", "reverse", priority=True),
        Binding("ctrl+t", "rate", "rate mode", priority=True),
        Binding("ctrl+k", "rate_key", "rate key", priority=True),
        Binding("ctrl+d", "detail", "detail", priority=True),
        Binding("escape", "focus_filter", "filter line", show=False),
    ]

    def __init__(self, feed: LiveFeed, stop: StopFlag, *, refresh: float = REFRESH) -> None:
        super().__init__()
        self.feed = feed
        self.stop_flag = stop
        self.refresh_every = refresh
        self.layout: Layout | None = None
        self.view_index = 0
        self.identity_index = 0
        self.count = ROWS
        self.filters: list[Filter] = []
        self.filter_gen = 0
        self.paused = False
        self.sort_col: int | None = None  # None: newest first
        self.sort_reverse = False
        self.rate_mode = False
        self.rate_index = 0
        self.detail_shown = False
        self.hidden_columns = 0  # columns that did not fit the terminal
        self.stopping = False
        self.message = ""
        # What the table shows now (for the detail pane, cell filters and tests).
        self.columns: list[Col] = []
        self.headers: list[str] = []
        self.cells: list[list[str]] = []
        self.shown_rows: list[Row] = []
        self.rate_keys_now: list[tuple[str, ...]] = []
        self.matching = 0
        self.kept = 0
        self._frozen: list[Row] = []
        self._rate_cache: tuple[dict[Any, list[float]], float] | None = None
        self._keys: list[RateKey] = []
        self._all_cols: list[Col] = []

    # -- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static("", id="title")
        yield LiteTable(id="table")
        with VerticalScroll(id="detail"):
            yield Static("", id="detail-text")
        yield Static("", id="filters")
        yield FilterInput(placeholder="filter: keyword or regex, Field:value, !negates; "
                          "Enter adds, Backspace on empty removes", id="filter")
        yield Static("", id="status")
        yield Static(Text("up/down rows  left/right view  pgup/pgdn identity  ^p pause  ^s sort  "
                     "^r reverse  ^t rate  ^k key  ^d detail  tab table  ^c stop"), id="keys")

    def on_mount(self) -> None:
        self.query_one("#filter", FilterInput).focus()
        self.set_interval(self.refresh_every, self._tick)
        self.set_interval(0.1, self._watch)
        self._setup()
        self.redraw()

    def _setup(self) -> bool:
        feed = self.feed
        if self.layout is None and feed.ready.is_set() and feed.schema is not None:
            self.layout = Layout(feed.schema, feed.fields)
            ids = self.layout.identity_sets
            self.identity_index = ids.index("pod") if "pod" in ids else 0
            self._keys = rate_keys(self.layout)
            self._all_cols = self.layout.all_columns()
        return self.layout is not None

    @property
    def view(self) -> str:
        return self.layout.views[self.view_index] if self.layout else "standard"

    @property
    def identity(self) -> str:
        return self.layout.identity_sets[self.identity_index] if self.layout else "none"

    @property
    def rate_key(self) -> RateKey | None:
        return self._keys[self.rate_index] if self._keys else None

    # -- the clock --------------------------------------------------------------------------

    def _tick(self) -> None:
        if not self.paused:
            self._rate_cache = None
            self.redraw()

    def _watch(self) -> None:
        if self.feed.done.is_set():
            self.exit()
        elif not self.feed.ready.is_set() or self.stopping:
            self.redraw_status()

    # -- drawing ----------------------------------------------------------------------------

    def redraw(self) -> None:
        if not self._setup():
            self.redraw_status()
            return
        if self.rate_mode:
            self._build_rates()
        else:
            self._build_rows()
        self._fill_table()
        self.redraw_status()
        if self.detail_shown:
            self._show_detail()

    def _haystack(self, row: Row) -> Callable[[], str]:
        def hay() -> str:
            if row.hay is None:
                parts = []
                for col in self._all_cols:
                    parts.append(self._cell(col, row.record))
                row.hay = "\t".join(parts)
            return row.hay
        return hay

    def _ok(self, row: Row) -> bool:
        if not self.filters:
            return True
        if row.ok_gen != self.filter_gen:
            row.ok_gen = self.filter_gen
            hay = self._haystack(row)
            row.ok = all(f.match(row.record, hay) for f in self.filters)
        return row.ok

    def _build_rows(self) -> None:
        assert self.layout is not None
        rows = self._frozen if self.paused else self.feed.snapshot()
        if not self.paused:
            self._frozen = rows
        self.kept = len(rows)
        matching = [r for r in rows if self._ok(r)] if self.filters else rows
        self.matching = len(matching)
        cols = self.layout.columns(self.view, self.identity)
        if self.sort_col is not None and self.sort_col >= len(cols):
            self.sort_col = None
        if self.sort_col is None:
            ordered = matching[::-1] if not self.sort_reverse else matching
            shown = ordered[: self.count]
        else:
            key = sort_key(cols[self.sort_col])
            # Numbers biggest first, text A to Z, like top; reverse flips it.
            numeric = cols[self.sort_col].value is not None
            shown = sorted(matching, key=lambda r: key(r.record),
                           reverse=numeric != self.sort_reverse)[: self.count]
        self.columns = cols
        self.headers = [c.header for c in cols]
        self.shown_rows = shown
        self.rate_keys_now = []
        self.cells = [[self._cell(c, r.record) for c in cols] for r in shown]

    @staticmethod
    def _cell(col: Col, record: Any) -> str:
        try:
            return col.text(record)
        except (AttributeError, TypeError, ValueError):
            return ""

    def _build_rates(self) -> None:
        assert self.layout is not None and self.feed.schema is not None
        key = self.rate_key
        assert key is not None
        if self._rate_cache is None:
            self._rate_cache = self.feed.rates()
        sums, span = self._rate_cache
        totals = [f for f in self.feed.schema.fields if f.total is not None]
        headers, rows, numbers = rate_rows(sums, span, key, totals, self.feed.noun)
        nkey = len(key.headers)
        picked = []
        for cells, nums in zip(rows, numbers, strict=True):
            if all(self._rate_ok(f, headers, cells) for f in self.filters):
                picked.append((cells, nums))
        self.kept = len(rows)
        self.matching = len(picked)
        col = self.sort_col if self.sort_col is not None and self.sort_col < len(headers) \
            else None
        if col is None or col >= nkey:
            i = (col - nkey) if col is not None else (1 if totals else 0)
            picked.sort(key=lambda p: p[1][i], reverse=not self.sort_reverse)
        else:
            picked.sort(key=lambda p: p[0][col].lower(), reverse=self.sort_reverse)
        picked = picked[: self.count]
        self.columns = []
        self.headers = headers
        self.cells = [cells for cells, _ in picked]
        self.rate_keys_now = [tuple(cells[:nkey]) for cells, _ in picked]
        self.shown_rows = []

    @staticmethod
    def _rate_ok(f: Filter, headers: list[str], cells: list[str]) -> bool:
        if f.col is not None and f.col.header in headers:
            hit = f.pattern.search(cells[headers.index(f.col.header)]) is not None
        else:
            hit = any(f.pattern.search(c) for c in cells)
        return hit != f.negate

    def _fill_table(self) -> None:
        table = self.query_one("#table", LiteTable)
        width = max(self.size.width - 1, 20)
        widths, fits = fit(self.headers, self.cells, width)
        right = [c.right for c in self.columns] if self.columns else \
            [i >= len(self.rate_key.headers) if self.rate_key else False
             for i in range(len(self.headers))]
        table.set_rows(self.headers[:fits], self.cells, widths[:fits], right[:fits])
        self.hidden_columns = len(self.headers) - fits

    def redraw_status(self) -> None:
        feed = self.feed
        # Text, not markup: filters and names may hold brackets.
        self.query_one("#title", Static).update(Text(self._title()))
        self.query_one("#filters", Static).update(Text(
            ("filters: " + "  ".join(f"[{f.text}]" for f in self.filters)) if self.filters
            else (self.message or "no filter: everything is shown")))
        self.query_one("#status", Static).update(Text(self._status(feed)))

    def _title(self) -> str:
        if self.layout is None:
            return f" {self.feed.title}: starting"
        parts = [f" {self.feed.title}", f"view: {self._view_label()}",
                 f"ids: {self._identity_label()}", f"rows: {self.count}"]
        if self.hidden_columns:
            parts.append(f"+{self.hidden_columns} columns")
        if self.paused:
            parts.append("PAUSED")
        if self.rate_mode and self.rate_key is not None:
            parts.append(f"rate by {self.rate_key.label} (10 s)")
        if self.sort_col is not None and self.sort_col < len(self.headers):
            parts.append(f"sort: {self.headers[self.sort_col]}"
                         + (" reversed" if self.sort_reverse else ""))
        elif not self.rate_mode:
            parts.append("newest first" if not self.sort_reverse else "oldest first")
        return "  ".join(parts)

    def _view_label(self) -> str:
        from podsight.tui.model import VIEW_LABELS
        return VIEW_LABELS.get(self.view, self.view)

    def _identity_label(self) -> str:
        from podsight.tui.model import IDENTITY_LABELS
        return IDENTITY_LABELS.get(self.identity, self.identity)

    def _status(self, feed: LiveFeed) -> str:
        parts = [f" {si(feed.rate())} {feed.noun}/s", f"{feed.records} written"]
        tally = feed.tally
        if tally is not None:
            lost = tally.lost
            causes = "; ".join(f"{loss.cause.split(' (')[0]} {loss.count}"
                               for loss in tally.losses.values() if loss.count)
            parts.append(f"lost {lost}" + (f" ({causes})" if causes else ""))
        parts.append(f"shown {len(self.cells)} of {self.matching}"
                     + (f", {self.kept - self.matching} filtered out" if self.filters else ""))
        if feed.sampling > 1.5:
            parts.append(f"screen samples 1 in {feed.sampling:.0f}")
        for name, size in feed.files:
            try:
                parts.append(f"{name} {_size(size())}")
            except (OSError, ValueError):
                parts.append(name)
        if self.stopping:
            parts.append("stopping: finishing the files")
        elif feed.log.lines:
            parts.append(feed.log.lines[-1].removeprefix("podsight: "))
        return " | ".join(parts)

    def _show_detail(self) -> None:
        text = self.query_one("#detail-text", Static)
        row = self.query_one("#table", LiteTable).cursor_row
        if self.rate_mode:
            if 0 <= row < len(self.cells):
                lines = [f"{h}: {c}" for h, c in zip(self.headers, self.cells[row],
                                                     strict=False)]
            else:
                lines = ["no row selected"]
        elif 0 <= row < len(self.shown_rows) and self.layout is not None:
            lines = detail_lines(self.shown_rows[row].record, self.layout)
        else:
            lines = ["no row selected"]
        text.update(Text("\n".join(lines)))

    # -- actions ------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # With the table focused, its own left/right move its cursor.
        return not (action == "view" and self.focused is self.query_one("#table"))

    def action_quit(self) -> None:  # type: ignore[override]
        if self.stopping:
            self.exit()  # a second Ctrl-C: close the view now; the run still ends cleanly
            return
        self.stopping = True
        self.stop_flag.set()
        self.redraw_status()

    def action_rows(self, direction: int) -> None:
        steps = ROW_STEPS
        if direction > 0:
            self.count = next((s for s in steps if s > self.count), steps[-1])
        else:
            self.count = next((s for s in reversed(steps) if s < self.count), steps[0])
        self.redraw()

    def action_view(self, direction: int) -> None:
        if self.layout is not None:
            self.view_index = (self.view_index + direction) % len(self.layout.views)
            self.sort_col = None
        self.redraw()

    def action_identity(self, direction: int) -> None:
        if self.layout is not None:
            n = len(self.layout.identity_sets)
            self.identity_index = (self.identity_index + direction) % n
            self.sort_col = None
        self.redraw()

    def action_pause(self) -> None:
        self.paused = not self.paused
        self._rate_cache = None
        self.redraw()

    def action_sort(self) -> None:
        n = len(self.headers)
        if self.sort_col is None:
            self.sort_col = 0 if n else None
        else:
            self.sort_col = self.sort_col + 1 if self.sort_col + 1 < n else None
        self.redraw()

    def action_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self.redraw()

    def action_rate(self) -> None:
        self.rate_mode = not self.rate_mode
        self.sort_col = None
        self._rate_cache = None
        self.redraw()

    def action_rate_key(self) -> None:
        if self._keys:
            self.rate_index = (self.rate_index + 1) % len(self._keys)
            if not self.rate_mode:
                self.rate_mode = True
                self._rate_cache = None
            self.sort_col = None
        self.redraw()

    def action_detail(self) -> None:
        self.detail_shown = not self.detail_shown
        self.query_one("#detail").set_class(self.detail_shown, "shown")
        if self.detail_shown:
            self._show_detail()

    def action_focus_filter(self) -> None:
        self.query_one("#filter", FilterInput).focus()

    # -- filters ------------------------------------------------------------------------------

    def add_filter(self, text: str, *, exact: bool = False) -> None:
        if self.layout is None:
            return
        try:
            f = parse_filter(text, self.layout, exact=exact)
        except UserError as exc:
            self.message = str(exc)
        else:
            self.filters.append(f)
            self.filter_gen += 1
            self.message = ""
        self.redraw()

    @on(Input.Submitted, "#filter")
    def _submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        event.input.value = ""
        if text:
            self.add_filter(text)

    @on(FilterInput.RemoveLast)
    def _remove_last(self) -> None:
        if self.filters:
            self.filters.pop()
            self.filter_gen += 1
            self.redraw()

    @on(LiteTable.CellSelected)
    def _cell_selected(self, event: LiteTable.CellSelected) -> None:
        row, col = event.row, event.column
        if not (0 <= row < len(self.cells)) or col >= len(self.headers):
            return
        if self.rate_mode:
            self.add_filter(self.cells[row][col], exact=True)
        elif row < len(self.shown_rows) and col < len(self.columns):
            c = self.columns[col]
            value = self._cell(c, self.shown_rows[row].record)
            self.add_filter(f"{c.name}:{value}", exact=True)

    @on(LiteTable.HeaderSelected)
    def _header_selected(self, event: LiteTable.HeaderSelected) -> None:
        if self.sort_col == event.column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_col, self.sort_reverse = event.column, False
        self.redraw()

    @on(LiteTable.CellHighlighted)
    def _highlighted(self) -> None:
        if self.detail_shown:
            self._show_detail()


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"
