"""``policy check``'s hot loop over a block of decoded JSON lines, without a Connection each.

Why: on the benchmark's tcpconnect JSON lines (1M records, 5,000 pods), making
a :class:`~podsight.analysis.policy.records.Connection` per record, handing it
through the reader's generator and the checker's methods, then wording a
:class:`~podsight.analysis.policy.checker.Verdict` per record cost more than
decoding the line. Here a block's records are taken as they come out of
msgspec: each end is one dict hit on the record's address text plus one
comparison of its identity (a Struct, in C) with the one held for that
address; the decision is one dict hit on the classes, the port and the
protocol; a JSON line is the record's own fields and pieces rendered once per
end and per direction's judgement (:meth:`JsonReport.tail`).

Only the two common shapes are taken here: a trace tcpconnect record and a bare
record, with known addresses and ports in range. Every other record (a flow, an
odd field, a bad address, an error) goes through
:meth:`~podsight.analysis.policy.jsonlines.Block.connection`, the reader's own
path, and is judged as any connection is, in its place: the output, the counts
and the errors are those of the generic loop, byte for byte.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from msgspec import UNSET

from podsight.analysis.policy.checker import ALLOWED, Checker, Verdict
from podsight.analysis.policy.ends import End
from podsight.analysis.policy.jsonlines import Block, Who, own
from podsight.analysis.policy.records import (
    _ADDRS,
    PROTOCOLS,
    Connection,
    Hint,
    Rows,
    _addr,
    hint_from_columns,
)

#: Held per address text: the identity the record gave, the end, the address as printed,
#: the end's class, its pod's name (or None) and whether the class decides alone (not a
#: Service, not loopback), and the record's hint.
Held = tuple[Who | None, End, str, int, str | None, bool, Hint | None]
#: The same for a SQLite row's end, held under its address with its identity columns.
RowHeld = tuple[tuple[Any, ...], End, str, int, str | None, bool, Hint | None]


class BlockJudge:
    """Judges blocks for one check (its memo of ends lives as long as the check)."""

    LIMIT = 1 << 16  # addresses held: a bound on memory, not a hit rate

    def __init__(self, checker: Checker, report: Any, every: bool,
                 generic: Callable[[Connection], bool]) -> None:
        """``every``: every connection goes to the report (``-o json``: ``report.tail``
        renders one), else only the denied ones (``report.write``). ``generic(conn)``
        judges and writes one connection the generic way (True: denied)."""
        self.checker = checker
        self.report = report
        self.every = every
        self.generic = generic
        self._held: dict[str, Held] = {}
        self._held_rows: dict[str, RowHeld] = {}
        self._results: dict[str, str] = {}

    def _end(self, addr: str, who: Who | None, block: Block) -> Held:
        """The end of ``addr`` as this record names it (raises on a bad address or odd
        identity: the record then goes the reader's way)."""
        text = _ADDRS.get(addr)
        if text is None:
            text = _addr(addr)
        hint = None if who is None else block.hint(who)
        checker = self.checker
        end = checker.ends(text, hint)
        plain = end.kind != "service" and end.kind != "loopback"
        held: Held = (None if who is None else own(who), end, text, checker.class_of(end),
                      end.pod.ref if end.pod is not None else None, plain, hint)
        if len(self._held) > self.LIMIT:
            self._held.clear()
        self._held[addr] = held
        return held

    def _row_end(self, addr: Any, ident: tuple[Any, ...]) -> RowHeld:
        """The end of ``addr`` as a SQLite row names it (``ident``: its kind, namespace,
        name, workload and node columns); raises on an address that is not written as
        the reader writes it (the row then goes the reader's way)."""
        text = _ADDRS.get(addr)
        if text is None:
            text = _addr(addr)
        if text != addr:  # printed as the row has it: the reader's way
            raise ValueError(addr)
        hint = hint_from_columns(*ident)
        checker = self.checker
        end = checker.ends(text, hint)
        plain = end.kind != "service" and end.kind != "loopback"
        held: RowHeld = (ident, end, text, checker.class_of(end),
                         end.pod.ref if end.pod is not None else None, plain, hint)
        if len(self._held_rows) > self.LIMIT:
            self._held_rows.clear()
        self._held_rows[addr] = held
        return held

    def run_rows(self, rows: Rows) -> tuple[int, int]:
        """Judge a batch of trace tcpconnect SQLite rows (``records.ROW_COLUMNS``) as
        :meth:`run` judges a block: an end is one dict hit on the row's address and one
        comparison of its five identity columns with those held; the decision one dict hit.
        With ``-o json``, and for any row whose ports or addresses are not as the gadget
        writes them, each row's connection is judged the generic way, in its place."""
        n = denied = 0
        generic = self.generic
        if self.every:
            for conn in rows.connections():
                n += 1
                denied += generic(conn)
            return n, denied
        held_ends = self._held_rows
        decisions = self.checker.decisions
        decide = self.checker.decide
        end_of = self._row_end
        write = self.report.write
        for i, row in enumerate(rows.records):
            sp, dp = row[2], row[4]
            s = d = None
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
                    s = None
            n += 1
            if s is None or d is None:  # the reader's way, in its place
                denied += generic(rows.connection(i))
                continue
            src, dst = s[1], d[1]
            if s[5] and d[5] and s[2] != d[2] and (s[4] is None or s[4] != d[4]):
                decision = decisions.get((s[3], d[3], dp, "tcp"))
                if decision is None:
                    decision = decide(src, dst, dp, "tcp")
            else:
                decision = decide(src, dst, dp, "tcp")
            if decision.verdict != ALLOWED:
                denied += 1
                when = row[0] or ""
                write(Connection("tcp", s[2], sp, d[2], dp, s[6], d[6], when, when, 1,
                                 row[5] or ""), src, dst, Verdict(decision, src, dst, dp, "tcp"))
        return n, denied

    def run(self, block: Block) -> tuple[int, int]:
        """Judge ``block``; (connections judged, denied)."""
        held_ends = self._held
        decisions = self.checker.decisions
        decide = self.checker.decide
        every = self.every
        tail = self.report.tail if every else None
        out: list[str] = []
        n = denied = 0
        end_of = self._end
        results = self._results
        time_json = self.report.time_json if every else None
        # the pieces of -o json's common tail (both ends pods, allowed both ways), read here
        # as JsonReport.tail reads them (a hit: rendered for an allowed judgement)
        egress_pieces, ingress_pieces = self.report.pieces() if every else ({}, {})
        try:
            for i, rec in enumerate(block.records):
                proto = rec.proto
                bare = False
                s = d = None
                result = ""
                if proto is UNSET:  # trace tcpconnect
                    proto = "tcp"
                    got = rec.result
                    if got is UNSET:
                        proto = ""  # the reader's way
                    else:
                        result = got
                elif proto in PROTOCOLS and rec.start is UNSET:
                    bare = True
                else:  # a flow, or a protocol to read the reader's way
                    proto = ""
                sp, dp = rec.sport, rec.dport
                if proto and 0 <= sp <= 65535 and 0 <= dp <= 65535:
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
                if not proto or s is None or d is None:  # the reader's way, in its place
                    if out:
                        self.report.out.write("".join(out))
                        out.clear()
                    conn = block.connection(i)
                    if conn is not None:
                        n += 1
                        denied += self.generic(conn)
                    continue
                n += 1
                src, dst = s[1], d[1]
                if s[5] and d[5] and s[2] != d[2] and (s[4] is None or s[4] != d[4]):
                    decision = decisions.get((s[3], d[3], dp, proto))
                    if decision is None:
                        decision = decide(src, dst, dp, proto)
                else:
                    decision = decide(src, dst, dp, proto)
                allowed = decision.verdict == ALLOWED
                if not allowed:
                    denied += 1
                when = rec.time
                if when is UNSET:
                    when = ""
                if not every:
                    if not allowed:
                        self.report.write(
                            Connection(proto, s[2], sp, d[2], dp, s[6], d[6], when, when, 1,
                                       result),
                            src, dst, Verdict(decision, src, dst, dp, proto))
                    continue
                assert tail is not None
                r = ""
                if result:
                    rj = results.get(result)
                    if rj is None:
                        if len(results) > 64:  # a handful of outcomes, unless a file lies
                            results.clear()
                        rj = results[result] = self.report.result_json(result)
                    r = rj
                if when and when.isprintable() and '"' not in when and "\\" not in when:
                    # JsonReport.time_json's text as it is, in one string with the rest
                    head = (f'{{"saddr":"{s[2]}","sport":{sp},"daddr":"{d[2]}","dport":{dp},'
                            f'"proto":"{proto}","time":"{when}"{r}')
                else:
                    head = (f'{{"saddr":"{s[2]}","sport":{sp},"daddr":"{d[2]}","dport":{dp},'
                            f'"proto":"{proto}"')
                    if when:
                        assert time_json is not None
                        head += time_json(when)
                    head += r
                if allowed and decision.backend is None and not decision.loopback:
                    e = egress_pieces.get((id(decision.egress), src))
                    g = ingress_pieces.get((id(decision.ingress), dst))
                    if e is not None and g is not None:  # JsonReport.tail's first case, inline
                        out.append(f'{head}{e[4]}{g[4]},"verdict":"{ALLOWED}","reason":"'
                                   f'{e[1]}; {g[1]}","egress":{e[2]},"ingress":{g[2]}}}\n')
                        continue
                out.append(head + tail(decision, src, dst, dp, proto))
        finally:  # what was judged is written, also when a record stops the check
            if out:
                self.report.out.write("".join(out))
        return n, denied
