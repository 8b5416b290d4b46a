"""``advise network-policy``'s hot loop over a block of decoded JSON lines.

Why: advise counts each connection on its route, the (client class, server
class, port, protocol) it belongs to, and on the benchmark's million
tcpconnect JSON lines there are ~43,000 routes: nearly every record only adds
one to a route's count and moves its first or last time. Decoding each line
alone, making a :class:`~podsight.analysis.policy.records.Connection` and
handing it through the reader's generator and :meth:`Advisor.add` cost ~14 us
a record, most of it not the tally. Here a block's records are taken as they
come out of msgspec (one call per block, as ``policy check`` reads them): each
end is one dict hit on the record's address text plus one comparison (in C) of
its identity with the one held for that address, then one dict hit on the
route.

Only a record whose ends are already classed and whose route already exists is
counted here, and only the two common shapes (a trace tcpconnect record, a bare
record, with known addresses and ports in range). Every other record (the first
of a route, a new end, loopback or a pod talking to itself, a flow, an odd
field, an error) goes through
:meth:`~podsight.analysis.policy.jsonlines.Block.connection` and
:meth:`Advisor.add`, the reader's and the advisor's own path, in its place: the
ends registered, the routes found, the journal and the errors are theirs, in
the same order, so the policies are the same byte for byte.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from msgspec import UNSET

from podsight.analysis.policy.ends import End
from podsight.analysis.policy.jsonlines import Block, Who, own
from podsight.analysis.policy.records import _ADDRS, PROTOCOLS, Rows, _addr, hint_from_columns

if TYPE_CHECKING:
    from podsight.analysis.policy.advisor import Advisor

#: Held per address text: the identity the record gave, the end, the address as
#: normalised, the end's pod's name (or None), and whether the end can take part in a
#: route without the advisor's checks (not loopback).
Held = tuple[Who | None, End, str, str | None, bool]
#: The same for a SQLite row's end, held under its address with its identity columns.
RowHeld = tuple[tuple[Any, ...], End, str, str | None, bool]


class BlockAdvisor:
    """Counts blocks into one advisor (its memo of ends lives as long as the advisor)."""

    LIMIT = 1 << 16  # addresses held: a bound on memory, not a hit rate

    def __init__(self, advisor: Advisor) -> None:
        self.advisor = advisor
        self._held: dict[str, Held] = {}
        self._held_rows: dict[str, RowHeld] = {}

    def _end(self, addr: str, who: Who | None, block: Block) -> Held:
        """The end of ``addr`` as this record names it, as :meth:`Advisor.add` finds it
        (raises on a bad address: the record then goes the reader's way)."""
        text = _ADDRS.get(addr)
        if text is None:
            text = _addr(addr)
        end = self.advisor.ends(text, None if who is None else block.hint(who))
        held: Held = (None if who is None else own(who), end, text,
                      end.pod.ref if end.pod is not None else None, end.kind != "loopback")
        if len(self._held) > self.LIMIT:
            self._held.clear()
        self._held[addr] = held
        return held

    def _row_end(self, addr: Any, ident: tuple[Any, ...]) -> RowHeld:
        """The end of ``addr`` as a SQLite row names it (``ident``: its kind, namespace,
        name, workload and node columns); raises on an address not written as the reader
        writes it (the row then goes the reader's way)."""
        text = _ADDRS.get(addr)
        if text is None:
            text = _addr(addr)
        if text != addr:
            raise ValueError(addr)
        end = self.advisor.ends(text, hint_from_columns(*ident))
        held: RowHeld = (ident, end, text, end.pod.ref if end.pod is not None else None,
                         end.kind != "loopback")
        if len(self._held_rows) > self.LIMIT:
            self._held_rows.clear()
        self._held_rows[addr] = held
        return held

    def run_rows(self, rows: Rows) -> None:
        """Count every connection of a batch of trace tcpconnect SQLite rows
        (``records.ROW_COLUMNS``), as :meth:`run` counts a block's."""
        advisor = self.advisor
        routes = advisor._routes
        add = advisor.add
        held_ends = self._held_rows
        end_of = self._row_end
        n = 0
        try:
            for i, row in enumerate(rows.records):
                sp, dp = row[2], row[4]
                route = None
                if sp.__class__ is int and dp.__class__ is int and 0 <= sp <= 65535 \
                        and 0 <= dp <= 65535:
                    try:
                        ident = row[6:11]
                        s = held_ends.get(row[1])
                        if s is None or s[0] != ident:
                            s = end_of(row[1], ident)
                        ident = row[11:16]
                        d = held_ends.get(row[3])
                        if d is None or d[0] != ident:
                            d = end_of(row[3], ident)
                    except Exception:
                        pass
                    else:  # Advisor.add's own tests, in its order (as in run)
                        sc, dc = s[1].cls, d[1].cls
                        if sc >= 0 and dc >= 0 and s[4] and d[4] and s[2] != d[2] and \
                                (s[3] is None or s[3] != d[3]):
                            route = routes.get((sc, dc, dp, "tcp"))
                if route is None:  # the reader's and the advisor's way, in its place
                    add(rows.connection(i))
                    continue
                n += 1
                route.count += 1
                when = row[0]
                if when:
                    if not route.first or when < route.first:
                        route.first = when
                    if when > route.last:
                        route.last = when
        finally:  # what was counted counts, also when a row stops the advice
            advisor.connections += n

    def run(self, block: Block) -> None:
        """Count every connection of ``block`` into the advisor."""
        advisor = self.advisor
        routes = advisor._routes  # this loop is the advisor's own, moved out
        add = advisor.add
        held_ends = self._held
        end_of = self._end
        n = 0  # connections counted here (the advisor counts its own)
        try:
            for i, rec in enumerate(block.records):
                proto = rec.proto
                bare = False
                if proto is UNSET:  # trace tcpconnect
                    proto = "tcp" if rec.result is not UNSET else ""
                elif proto in PROTOCOLS and rec.start is UNSET:
                    bare = True
                else:  # a flow, or a protocol to read the reader's way
                    proto = ""
                dp = rec.dport
                route = None
                if proto and 0 <= rec.sport <= 65535 and 0 <= dp <= 65535:
                    try:
                        w = rec.src
                        s = held_ends.get(rec.saddr)
                        if s is None or s[0] != w:
                            s = end_of(rec.saddr, w, block)
                        w = rec.dst
                        d = held_ends.get(rec.daddr)
                        if d is None or d[0] != w:
                            d = end_of(rec.daddr, w, block)
                        if bare:
                            six = ":" in s[2]
                            version = rec.ip
                            if six != (":" in d[2]) or \
                                    (version is not UNSET and version != (6 if six else 4)):
                                raise ValueError
                    except Exception:
                        proto = ""
                    else:
                        # Advisor.add's own tests, in its order: an end that is not classed
                        # yet, loopback, one address, one pod: the advisor's way
                        sc, dc = s[1].cls, d[1].cls
                        if sc >= 0 and dc >= 0 and s[4] and d[4] and s[2] != d[2] and \
                                (s[3] is None or s[3] != d[3]):
                            route = routes.get((sc, dc, dp, proto))
                if route is None:  # the reader's and the advisor's way, in its place
                    conn = block.connection(i)
                    if conn is not None:
                        add(conn)
                    continue
                n += 1
                route.count += 1
                when = rec.time
                if when is not UNSET and when:
                    if not route.first or when < route.first:
                        route.first = when
                    if when > route.last:
                        route.last = when
        finally:  # what was counted counts, also when a record stops the advice
            advisor.connections += n
