"""The JSON lines of ``trace tcpconnect``, ``flows`` and bare records, read fast.

Why a second reader: a tcpconnect JSON line is ~850 bytes of which a check
needs a tenth (addresses, ports, the protocol or outcome, the time, and of
each end its kind, namespace, name, node, labels and workload). orjson turns
the whole line into dicts (~2.5 us); msgspec decodes it into the
:class:`Record` below, skipping every other field and keeping each end's
labels and workload as raw JSON text (~1.3 us), and a pod's hint is then
found by comparing that text with the last one seen for the pod, so labels
are parsed only when they change.

Lines are read in blocks of whole lines (UTF-8 checked a block at a time,
which is free for ASCII). The generic reader (``Reader._line``, orjson into
dicts) stays the reference: any line this one does not accept exactly as it
is (a decoding or type error, a bad address or port, a missing field, an
unusual shape) is read again by it, which yields the same connection or
raises the same one-line error. So the output is the generic reader's, line
for line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import BinaryIO

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType

from podsight.analysis.policy.records import (
    _ADDRS,
    PROTOCOLS,
    Connection,
    Hint,
    NeedsWholeInput,
    Reader,
    _addr,
    pod_hint,
)
from podsight.errors import UserError

#: Bytes read at a time: 64 KiB (~77 tcpconnect lines), so the records a block decodes are
#: still in the CPU cache when they are judged (256 KiB: check --jobs 1 6.7-8.1 s per 1M
#: records against 6.3-7.7 s; 32 KiB as 64).
BLOCK = 1 << 16

_NULL = Raw(b"null")


class Who(Struct, gc=False):
    """A record's ``src``/``dst`` object: the fields identity reads, the rest skipped."""

    kind: str = ""
    namespace: str = ""
    pod: str = ""
    service: str = ""
    node: str = ""
    labels: Raw = _NULL  # the JSON text: compared, parsed only when it changes
    workload: Raw = _NULL


class Record(Struct, gc=False):
    """The fields of a tcpconnect, flows or bare record a check or advise reads."""

    saddr: str
    daddr: str
    sport: int
    dport: int
    src: Who | None = None
    dst: Who | None = None
    proto: str | UnsetType = UNSET
    result: str | UnsetType = UNSET
    time: str | UnsetType = UNSET
    ip: int | UnsetType = UNSET
    start: str | UnsetType = UNSET  # flows
    end: str | UnsetType = UNSET
    tcp_flags: list[str] | None = None


_decode = msgspec.json.Decoder(Record).decode


class _Pods:
    """Pod name -> (its identity, its hint): the last identity seen under that name, as
    :func:`~podsight.analysis.policy.records.hint_from_json` keeps it (a pod's records
    repeat it). A record's :class:`Who` is compared with the one held as a whole, in C;
    labels are parsed only when they change."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[Who, Hint]] = {}

    def hint(self, who: Who) -> Hint | None:
        kind = who.kind
        if kind == "pod":
            held = self.held.get(who.pod)
            if held is not None and held[0] == who:
                return held[1]
            labels = msgspec.json.decode(who.labels)
            workload = msgspec.json.decode(who.workload)
            hint = pod_hint(who.namespace, who.pod, who.node, labels, workload)
            if len(self.held) > 1 << 16:
                self.held.clear()
            self.held[who.pod] = (own(who), hint)
            return hint
        if kind == "service":
            return Hint("service", who.namespace, who.service)
        if kind == "node":
            return Hint("node", name=who.node)
        return None


def own(who: Who) -> Who:
    """``who`` with its raw labels and workload copied out of the decoded text: a ``Raw``
    refers to the whole buffer it was decoded from (a block, 256 KiB), and an identity
    held for later records must not keep every block it was first seen in."""
    labels, workload = who.labels, who.workload
    return msgspec.structs.replace(
        who, labels=labels if labels is _NULL else Raw(bytes(labels)),
        workload=workload if workload is _NULL else Raw(bytes(workload)))


def blocks(f: BinaryIO, start: int, end: int | None) -> Iterator[tuple[bytes, int, bool]]:
    """The lines of ``f`` from offset ``start`` (a line start) to ``end`` (None: the end of
    the file), a block of whole lines per :data:`BLOCK` bytes read: the lines' text joined
    by their line ends (without the last one), how many lines it holds, and whether its
    bytes are all ASCII (then they are UTF-8; otherwise the lines say).

    Why not a list of lines: most blocks are decoded whole (the lines as one JSON array,
    :func:`read`), and splitting each block into ~300 bytes objects only to join them
    again cost as much as decoding; a block is split only when a line must be read alone.
    The line cut by a block's end is carried to the next.
    """
    f.seek(start)
    left = None if end is None else end - start
    carry = b""
    while True:
        size = BLOCK if left is None else min(BLOCK, left)
        data = f.read(size) if size > 0 else b""
        if left is not None:
            left -= len(data)
        if not data:
            if carry:
                yield carry, 1, carry.isascii()
            return
        cut = data.rfind(b"\n")
        if cut < 0:  # no line ends in this block: all of it belongs to the carried line
            carry += data
            continue
        text = carry + data[:cut] if carry else data[:cut]
        carry = data[cut + 1:]  # what follows the last line end: the start of a line
        yield text, text.count(b"\n") + 1, text.isascii()


class Block:
    """A block of JSON lines decoded at once (``read(..., batch=True)``): ``records[i]`` is
    line ``i`` of ``lines``, decoded but not yet checked. :meth:`connection` is what
    :func:`read` makes of line ``i`` (the reference for every record a consumer does not
    take as it is, with the same errors and line numbers); a consumer that takes records
    itself reads their ends through :attr:`hint` as :func:`read` does."""

    __slots__ = ("_convert", "_lines", "_slow", "_text", "hint", "records", "slow")

    def __init__(self, records: list[Record], text: bytes,
                 convert: Callable[[Record], Connection | None],
                 slow: Callable[[bytes, int], Connection | None],
                 hint: Callable[[Who], Hint | None]) -> None:
        self.records = records
        self._text = text
        self._lines: list[bytes] | None = None
        self.hint = hint
        self._convert = convert
        self._slow = slow
        self.slow = 0  # lines read by the generic reader (which counts its own)

    def connection(self, i: int) -> Connection | None:
        """Line ``i``'s connection (None: a blank line, a merged flow, a skipped protocol),
        as :func:`read` makes it."""
        try:
            return self._convert(self.records[i])
        except NeedsWholeInput:
            raise
        except Exception:  # the generic reader says what it is, or reads it
            self.slow += 1
            return self._slow(self.lines[i], i)

    @property
    def lines(self) -> list[bytes]:
        """The block's lines (split when one is first read alone: most blocks never are)."""
        if self._lines is None:
            self._lines = self._text.split(b"\n")
        return self._lines


#: A block's lines as one JSON array (its line ends made commas): one call into msgspec per
#: block instead of one per line. Lines joined by commas cannot decode into as many records
#: unless each line is one JSON value (an empty or doubled line is a syntax error or a
#: count that differs).
_decode_list = msgspec.json.Decoder(list[Record]).decode


def read(reader: Reader, f: BinaryIO, name: str, start: int = 0, end: int | None = None,
         flows: bool = True, batch: bool = False) -> Iterator[Connection | Block]:
    """The connections of the JSON lines of ``f`` in [start, end) (flows: merged by the
    reader, at the end; ``flows`` False: a flow record raises ``NeedsWholeInput``).
    ``batch``: UTF-8 blocks whose every line decodes come out as one :class:`Block`."""
    stats = reader.stats
    merge = reader.flow_merger.add
    slow_line = reader.line
    pods = _Pods()
    hint, held_pods = pods.hint, pods.held
    addrs = _ADDRS
    protocols = PROTOCOLS
    decode = _decode
    first: int | None = 1 if start == 0 else None  # the number of the first line, if asked
    n = 0  # lines read (of this part)
    base = 0  # of them, before the current block
    slow_lines = 0  # of them, read by the generic reader (which counts its own)
    at = start  # the offset of the block's first line

    def convert(rec: Record) -> Connection | None:
        """A decoded record's connection; any exception: the generic reader decides."""
        sa, da, sp, dp = rec.saddr, rec.daddr, rec.sport, rec.dport
        saddr = addrs.get(sa)
        if saddr is None:
            saddr = _addr(sa)
        daddr = addrs.get(da)
        if daddr is None:
            daddr = _addr(da)
        if not 0 <= sp <= 65535 or not 0 <= dp <= 65535:
            raise ValueError
        # a pod's hint: the one held for its name while its identity is the same
        # (compared as Structs, in C), else made and held
        w = rec.src
        held = None if w is None else held_pods.get(w.pod)
        src = held[1] if held is not None and held[0] == w else \
            None if w is None else hint(w)
        w = rec.dst
        held = None if w is None else held_pods.get(w.pod)
        dst = held[1] if held is not None and held[0] == w else \
            None if w is None else hint(w)
        proto = rec.proto
        if proto is UNSET:  # trace tcpconnect
            result = rec.result
            when = rec.time
            if result is UNSET:
                raise ValueError
            if when is UNSET:
                when = ""
            return Connection("tcp", saddr, sp, daddr, dp, src, dst, when, when, 1, result)
        if proto not in protocols:
            proto = proto.lower()
        if rec.start is not UNSET:  # flows
            if not flows:
                raise NeedsWholeInput(name)
            if proto not in protocols:
                stats.skip(proto)
                return None
            end_ = rec.end
            merge(proto, saddr, sp, daddr, dp, src, dst, rec.start,
                  "" if end_ is UNSET else end_, rec.tcp_flags or ())
            return None
        six = ":" in saddr
        version = rec.ip
        if proto not in protocols or six != (":" in daddr) or \
                (version is not UNSET and version != (6 if six else 4)):
            raise ValueError
        when = rec.time
        if when is UNSET:
            when = ""
        return Connection(proto, saddr, sp, daddr, dp, src, dst, when, when)

    def slow(line: bytes, index: int) -> Connection | None:
        """Line ``index`` (from 0) of the current block, by the generic reader."""
        nonlocal first
        if first is None:
            first = 1 + _newlines_before(f, start)
        return slow_line(line, name, first + base + index, flows)

    try:
        for text, count, ascii in blocks(f, start, end):
            base = n
            lines: list[bytes] | None = None
            bad = -1  # the index of the first line that is not UTF-8
            if not ascii:
                lines = text.split(b"\n")
                bad = next((i for i, line in enumerate(lines) if not _utf8(line)), -1)
            if batch and bad < 0:  # (a block of UTF-8 text: ASCII, or every line checked)
                try:
                    records = _decode_list(b"".join((b"[", text.replace(b"\n", b","), b"]")))
                except Exception:  # some line is odd: each is read alone, below
                    records = None
                if records is not None and len(records) == count:
                    block = Block(records, text, convert, slow, hint)
                    try:
                        yield block
                    finally:
                        n += count
                        slow_lines += block.slow
                    at += len(text) + 1
                    continue
            if lines is None:
                lines = text.split(b"\n")
            if bad >= 0:
                at += sum(map(len, lines[:bad])) + bad
                try:
                    lines[bad].decode("utf-8")
                except UnicodeDecodeError as exc:
                    at += exc.start
                del lines[bad:]
            # One line at a time (a block with an odd line, or not UTF-8): each decoded alone
            # and made a connection by :func:`convert`, as a decoded block's records are.
            for i, line in enumerate(lines):
                n += 1
                try:
                    conn = convert(decode(line))
                except NeedsWholeInput:
                    raise
                except Exception:  # the generic reader says what it is, or reads it
                    slow_lines += 1
                    conn = slow(line, i)
                if conn is not None:
                    yield conn
            if bad >= 0:
                raise UserError(f"--from {name}: not UTF-8 text (byte {at}); give JSON lines "
                                "or a SQLite file")
            at += len(text) + 1
    finally:  # counted once, not per record; also when the reader stops early
        stats.records += n - slow_lines


def _utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _newlines_before(f: BinaryIO, offset: int) -> int:
    """How many lines start before ``offset`` (the line number of a part's first line):
    counted only when a message needs it (the file position is kept)."""
    here = f.tell()
    count, done = 0, 0
    f.seek(0)
    while done < offset:
        data = f.read(min(1 << 24, offset - done))
        if not data:
            break
        count += data.count(b"\n")
        done += len(data)
    f.seek(here)
    return count
