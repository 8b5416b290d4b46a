"""Observed connections from what podsight records: ``--from FILE`` and live runs.

Accepted, told apart per file (SQLite by its header) and per JSON line:

- ``trace tcpconnect``: JSON lines or its SQLite file; one record is one
  connect attempt (whatever its outcome), one connection;
- ``flows``: JSON lines or its SQLite file; one record is one direction of
  a flow over one interval, so records are merged into connections: both
  directions and every interval of one 5-tuple are one connection, whose
  client is the side that sent the SYN (TCP), else the side whose port is
  not a known server port (a container port of the pod at that address, a
  Service port), else the side with the higher port (an ephemeral one);
- bare records: ``{"ip": 4, "proto": "tcp"|"udp"|"sctp", "saddr": ..., "sport":
  ..., "daddr": ..., "dport": ...}``.

Records carry identity (``src``/``dst`` objects in JSON; ``*_kind``,
``*_namespace``, ``*_name`` columns in SQLite, which store no labels): it is
kept as a :class:`Hint`. NetworkPolicy covers TCP, UDP and SCTP only: other
protocols (ICMP flows) are counted as skipped, never silently dropped.
"""

from __future__ import annotations

import ipaddress
import os
import sqlite3
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TextIO

from podsight.errors import UserError

if TYPE_CHECKING:
    from podsight.analysis.policy.jsonlines import Block

PROTOCOLS = ("tcp", "udp", "sctp")

_loads: Callable[[str | bytes], Any]
try:  # three times faster on the gadgets' JSON lines; the standard library otherwise
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - orjson is a dependency, but optional here
    from json import loads as _loads
SQLITE_MAGIC = b"SQLite format 3\x00"


class Hint(NamedTuple):
    """What a record says about one end. ``labels`` None: the record does not say (SQLite).

    A tuple (labels as a tuple of pairs): hashed and compared in C, once per record end.
    """

    kind: str  # pod | service | node | raw
    namespace: str = ""
    name: str = ""
    labels: tuple[tuple[str, str], ...] | None = None
    node: str = ""
    workload_kind: str = ""
    workload_name: str = ""


@dataclass(slots=True)
class Connection:
    """One observed connection, client first. ``first``/``last``: RFC 3339 UTC, or ""."""

    proto: str
    saddr: str
    sport: int
    daddr: str
    dport: int
    src: Hint | None = None
    dst: Hint | None = None
    first: str = ""
    last: str = ""
    count: int = 1
    result: str = ""  # tcpconnect's outcome


@dataclass
class ReadStats:
    """How many records were read, and what was not a connection (said, not dropped)."""

    records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # protocol -> records
    flows_merged: int = 0  # flow records folded into a connection seen before

    def skip(self, proto: str) -> None:
        self.skipped[proto] = self.skipped.get(proto, 0) + 1

    def skipped_text(self) -> str:
        return ", ".join(f"{n} {p}" for p, n in sorted(self.skipped.items()))


_POD_HINTS: dict[tuple[str, str, str], tuple[Any, Any, Hint]] = {}


def hint_from_json(obj: Any) -> Hint | None:
    """The ``src``/``dst`` object of a tcpconnect or flows JSON record.

    A pod's hint is kept by (namespace, name, node) with the labels it was made from, and
    reused while a record brings the same labels: records of one pod repeat them.
    """
    if obj.__class__ is not dict:
        return None
    kind = obj.get("kind")
    if kind == "pod":
        return pod_hint(obj.get("namespace", ""), obj.get("pod", ""), obj.get("node", ""),
                        obj.get("labels"), obj.get("workload"))
    if kind == "service":
        return Hint("service", obj.get("namespace", ""), obj.get("service", ""))
    if kind == "node":
        return Hint("node", name=obj.get("node", ""))
    return None


def pod_hint(namespace: str, pod: str, node: str, labels: Any, workload: Any) -> Hint:
    """A pod's hint from its record's fields (``labels``, ``workload``: the JSON objects,
    or None), the one made before while the same pod brings the same labels and workload
    (the workload is compared too: a hint held from another file must not lend its own)."""
    key = (namespace, pod, node)
    held = _POD_HINTS.get(key)
    if held is not None and held[0] == labels and held[1] == workload:
        return held[2]
    hint = Hint("pod", namespace, pod, tuple(labels.items()) if labels else (), node,
                (workload or {}).get("kind", ""), (workload or {}).get("name", ""))
    if len(_POD_HINTS) > 1 << 16:
        _POD_HINTS.clear()
    _POD_HINTS[key] = (labels, workload, hint)
    return hint


def hint_from_columns(kind: str | None, namespace: str | None, name: str | None,
                      workload: str | None, node: str | None) -> Hint | None:
    """A SQLite row's ``*_kind``, ``*_namespace``, ``*_name``, ``*_workload``, ``*_node``."""
    if kind == "pod":
        wkind, _, wname = (workload or "").partition("/")
        return Hint("pod", namespace or "", name or "", None, node or "", wkind, wname)
    if kind == "service":
        return Hint("service", namespace or "", name or "")
    if kind == "node":
        return Hint("node", name=name or "")
    return None


#: The columns of a trace tcpconnect SQLite row that a check or advise reads, in order.
ROW_COLUMNS = ("time", "saddr", "sport", "daddr", "dport", "result",
               "src_kind", "src_namespace", "src_name", "src_workload", "src_node",
               "dst_kind", "dst_namespace", "dst_name", "dst_workload", "dst_node")
#: Rows fetched at a time in batches (:class:`Rows`): sqlite3 builds them in C.
ROWS = 256


class Rows:
    """A batch of trace tcpconnect SQLite rows (``Reader.items()``): ``records[i]`` is a
    row of :data:`ROW_COLUMNS`, :meth:`connection` what the reader makes of it.

    Why: as with :class:`~podsight.analysis.policy.jsonlines.Block`, ``policy check``
    judges the common rows as they come out of sqlite3
    (:meth:`~podsight.analysis.policy.blockjudge.BlockJudge.run_rows`), without a
    :class:`Connection` handed through a generator per row; every other consumer takes
    the connections as before."""

    __slots__ = ("_convert", "records")

    def __init__(self, records: list[tuple[Any, ...]],
                 convert: Callable[[tuple[Any, ...]], Connection]) -> None:
        self.records = records
        self._convert = convert

    def connection(self, i: int) -> Connection:
        """Row ``i``'s connection, as the reader makes it."""
        return self._convert(self.records[i])

    def connections(self) -> Iterator[Connection]:
        """The rows' connections, in order."""
        return map(self._convert, self.records)


# -- reading ------------------------------------------------------------------------------------

class Reader:
    """Connections from one or more files, in order; flows are merged and come last."""

    def __init__(self, paths: Iterable[str], server_port: Callable[[str, int, str], bool]
                 | None = None, stdin: TextIO | None = None) -> None:
        self.paths = list(paths)
        self.stats = ReadStats()
        self.server_port = server_port
        self.flow_merger = FlowMerger(server_port)
        self._stdin = stdin or sys.stdin

    def __iter__(self) -> Iterator[Connection]:
        for path in self.paths:
            yield from self._one(path, False)
        yield from self.flow_merger.connections()
        self.stats.flows_merged = self.flow_merger.merged

    def items(self) -> Iterator[Connection | Block | Rows]:
        """The connections, except that JSON lines files come a
        :class:`~podsight.analysis.policy.jsonlines.Block` of decoded records at a time
        where their lines decode: ``policy check`` judges those without making a
        :class:`Connection` each."""
        for path in self.paths:
            yield from self._one(path, True)
        yield from self.flow_merger.connections()
        self.stats.flows_merged = self.flow_merger.merged

    def _one(self, path: str, batch: bool) -> Iterator[Any]:
        if path == "-":
            yield from self._json_lines(self._stdin, "<stdin>")
            return
        p = Path(path)
        try:
            with p.open("rb") as f:
                head = f.read(16)
        except FileNotFoundError:
            raise UserError(f"--from {path}: no such file") from None
        except IsADirectoryError:
            raise UserError(f"--from {path}: is a directory (give a file)") from None
        except OSError as exc:
            raise UserError(f"--from {path}: {exc.strerror or exc}") from None
        if head == SQLITE_MAGIC:
            yield from self._sqlite(path, batch=batch)
            return
        from podsight.analysis.policy import jsonlines

        with p.open("rb") as f:
            yield from jsonlines.read(self, f, path, batch=batch)

    # JSON lines --------------------------------------------------------------------------

    def _json_lines(self, f: Iterable[str], name: str) -> Iterator[Connection]:
        """One connection per line of text (stdin); files are read by
        :mod:`~podsight.analysis.policy.jsonlines`, which hands this reader the lines it
        does not read itself (:meth:`line`)."""
        line = self.line
        for n, text in enumerate(f, 1):
            conn = line(text, name, n)
            if conn is not None:
                yield conn

    def line(self, line: str | bytes, name: str, n: int, flows: bool = True
             ) -> Connection | None:
        """The connection of one JSON line (line ``n`` of ``name``), or None (a blank line;
        a flow record, merged; a protocol NetworkPolicy does not cover, counted). The
        reference reading of a line, orjson into dicts: every odd record and every error
        message goes through here. ``flows`` False: a flow record raises
        :class:`NeedsWholeInput` (flows are merged across the whole input)."""
        stats = self.stats
        try:
            rec = _loads(line)
        except ValueError:
            if not line.strip():
                return None
            stats.records += 1
            raise UserError(f"{name}:{n}: not a JSON object (podsight reads the JSON lines of "
                            "trace tcpconnect and flows, their SQLite files, or bare "
                            "records)") from None
        stats.records += 1
        if rec.__class__ is not dict:
            raise UserError(f"{name}:{n}: not a JSON object")
        try:
            sa, da, sp, dp = rec["saddr"], rec["daddr"], rec["sport"], rec["dport"]
            saddr = _addr(sa)
            daddr = _addr(da)
            if sp.__class__ is not int or dp.__class__ is not int \
                    or not 0 <= sp <= 65535 or not 0 <= dp <= 65535:
                _port(sp)
                _port(dp)
            s_obj, d_obj = rec.get("src"), rec.get("dst")
            src = None if s_obj is None else hint_from_json(s_obj)
            dst = None if d_obj is None else hint_from_json(d_obj)
            proto = rec.get("proto")
            if proto is None and "result" in rec:  # trace tcpconnect
                when = rec.get("time", "")
                return Connection("tcp", saddr, sp, daddr, dp, src, dst, when, when, 1,
                                  str(rec["result"]))
            if proto not in PROTOCOLS:
                if not isinstance(proto, str):
                    raise UserError(f"{name}:{n}: no \"proto\" (a bare record needs ip, "
                                    "proto, saddr, sport, daddr, dport)")
                proto = proto.lower()
            if "start" in rec:  # flows
                if not flows:
                    raise NeedsWholeInput(name)
                if proto not in PROTOCOLS:
                    stats.skip(proto)
                    return None
                self.flow_merger.add(proto, saddr, sp, daddr, dp, src, dst,
                                     str(rec.get("start", "")), str(rec.get("end", "")),
                                     rec.get("tcp_flags") or ())
                return None
            if proto not in PROTOCOLS:
                raise UserError(f"{name}:{n}: proto {proto!r}: NetworkPolicy covers tcp, udp "
                                "and sctp")
            six = ":" in saddr
            if six != (":" in daddr):
                raise UserError(f"{name}:{n}: saddr {saddr} and daddr {daddr} are not of one "
                                "IP version")
            version = rec.get("ip")
            if version is not None and version != (6 if six else 4):
                raise UserError(f"{name}:{n}: \"ip\": {version!r} but saddr {saddr} is "
                                f"IPv{6 if six else 4}")
            when = rec.get("time", "")
            return Connection(proto, saddr, sp, daddr, dp, src, dst, when, when)
        except KeyError as exc:
            raise UserError(f"{name}:{n}: no {exc.args[0]!r} (a record needs saddr, sport, "
                            "daddr, dport and, unless it is from trace tcpconnect, proto)"
                            ) from None
        except _BadValue as exc:
            raise UserError(f"{name}:{n}: {exc}") from None

    # one part of the input (policy check on several CPUs) --------------------------------

    def chunk(self, part: Chunk) -> Iterator[Connection]:
        """The connections of one part of a file: lines [start, end) of JSON lines (by
        byte offset, on line starts) or rows with ids in [start, end] of a trace tcpconnect
        SQLite file. Flow records raise :class:`NeedsWholeInput`."""
        return self._chunk(part, False)

    def chunk_items(self, part: Chunk) -> Iterator[Connection | Block | Rows]:
        """:meth:`chunk`, in blocks where it can (as :meth:`items`)."""
        return self._chunk(part, True)

    def _chunk(self, part: Chunk, batch: bool) -> Iterator[Any]:
        if part.sqlite:
            yield from self._sqlite(part.path, (part.start, part.end), batch)
            return
        from podsight.analysis.policy import jsonlines

        with open(part.path, "rb") as f:
            yield from jsonlines.read(self, f, part.path, part.start, part.end, flows=False,
                                      batch=batch)

    # SQLite -------------------------------------------------------------------------------

    def _sqlite(self, path: str, ids: tuple[int, int] | None = None, batch: bool = False
                ) -> Iterator[Connection | Rows]:
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise UserError(f"--from {path}: cannot open ({exc})") from None
        try:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE "
                                               "type='table'")}
            if "tcpconnect" in tables:
                yield from self._sqlite_tcpconnect(db, ids, batch)
            elif ids is not None:
                raise NeedsWholeInput(path)
            elif "flows" in tables:
                yield from self._sqlite_flows(db)
            else:
                raise UserError(f"--from {path}: a SQLite file without a tcpconnect or flows "
                                "table (written by podsight trace tcpconnect --sqlite or "
                                "podsight flows --sqlite)")
        except sqlite3.Error as exc:
            raise UserError(f"--from {path}: {exc}") from None
        finally:
            db.close()

    def _sqlite_tcpconnect(self, db: sqlite3.Connection, ids: tuple[int, int] | None = None,
                           batch: bool = False) -> Iterator[Connection | Rows]:
        where = " WHERE id BETWEEN ? AND ?" if ids is not None else ""
        rows = db.execute(
            f"SELECT {', '.join(ROW_COLUMNS)} FROM tcpconnect{where} ORDER BY id", ids or ())
        stats = self.stats
        # name column -> the other four and their hint: the last identity of that name. One
        # string hashed and four compared per end, instead of a 5-tuple sliced, hashed and
        # compared: a quarter of the reading after sqlite3's own fetching. A name with
        # another identity is hinted again (hint_from_columns is pure: the same hint).
        memo: dict[Any, tuple[Any, Any, Any, Any, Hint | None]] = {}
        hint = hint_from_columns

        def convert(row: tuple[Any, ...]) -> Connection:
            (when, saddr, sport, daddr, dport, result, s_kind, s_ns, s_name, s_wl, s_node,
             d_kind, d_ns, d_name, d_wl, d_node) = row
            held = memo.get(s_name)
            if held is not None and held[0] == s_kind and held[1] == s_ns \
                    and held[2] == s_wl and held[3] == s_node:
                src = held[4]
            else:
                src = hint(s_kind, s_ns, s_name, s_wl, s_node)
                memo[s_name] = (s_kind, s_ns, s_wl, s_node, src)
            held = memo.get(d_name)
            if held is not None and held[0] == d_kind and held[1] == d_ns \
                    and held[2] == d_wl and held[3] == d_node:
                dst = held[4]
            else:
                dst = hint(d_kind, d_ns, d_name, d_wl, d_node)
                memo[d_name] = (d_kind, d_ns, d_wl, d_node, dst)
            when = when or ""
            return Connection("tcp", saddr, sport, daddr, dport, src, dst, when, when, 1,
                              result or "")

        if batch:
            while got := rows.fetchmany(ROWS):
                stats.records += len(got)
                yield Rows(got, convert)
            return
        n = 0
        for row in rows:
            n += 1
            yield convert(row)
            if not n & 0xFFFF:
                stats.records += 0x10000
        stats.records += n & 0xFFFF

    def _sqlite_flows(self, db: sqlite3.Connection) -> Iterator[Connection]:
        rows = db.execute(
            "SELECT start, end, proto, saddr, sport, daddr, dport, tcp_flags, src_kind,"
            " src_namespace, src_name, src_workload, src_node, dst_kind, dst_namespace,"
            " dst_name, dst_workload, dst_node FROM flows ORDER BY id")
        stats = self.stats
        memo: dict[tuple[Any, ...], Hint | None] = {}
        for row in rows:
            stats.records += 1
            proto = str(row[2]).lower()
            if proto not in PROTOCOLS:
                stats.skip(proto)
                continue
            flags = [f for f in (row[7] or "").split(",") if f]
            self.flow_merger.add(proto, row[3], row[4], row[5], row[6], _memo_hint(memo, row[8:13]),
                            _memo_hint(memo, row[13:18]), row[0] or "", row[1] or "", flags)
        yield from ()  # a generator like the others: flows come out of the merger at the end


def _memo_hint(memo: dict[tuple[Any, ...], Hint | None], cols: tuple[Any, ...]) -> Hint | None:
    hint = memo.get(cols, memo)  # the memo itself: not seen yet
    if hint is memo:
        hint = hint_from_columns(*cols)
        memo[cols] = hint
    return hint  # type: ignore[return-value]


class _BadValue(ValueError):
    pass


class NeedsWholeInput(Exception):
    """A part of the input cannot be read alone (flow records are merged across all)."""


@dataclass(frozen=True)
class Chunk:
    """A part of one ``--from`` file: JSON lines by byte range [start, end) on line starts,
    or trace tcpconnect SQLite rows by id range [start, end]."""

    path: str
    start: int
    end: int
    sqlite: bool = False


def split(path: str, parts: int) -> list[Chunk] | None:
    """``path`` in up to ``parts`` chunks, or None when it cannot be split (not a regular
    file, a flows SQLite file, unreadable: the whole-input reader says what is wrong)."""
    import stat

    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            return None
        with open(path, "rb") as f:
            if f.read(16) == SQLITE_MAGIC:
                return _split_sqlite(path, parts)
            size = info.st_size
            starts = [0]
            for k in range(1, parts):
                f.seek(max(size * k // parts - 1, starts[-1]))
                f.readline()  # to the start of the next line
                at = f.tell()
                if starts[-1] < at < size:
                    starts.append(at)
    except (OSError, sqlite3.Error):
        return None
    ends = [*starts[1:], size]
    return [Chunk(path, a, b) for a, b in zip(starts, ends, strict=True)]


def _split_sqlite(path: str, parts: int) -> list[Chunk] | None:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE "
                                           "type='table'")}
        if "tcpconnect" not in tables:
            return None
        low, high = db.execute("SELECT min(id), max(id) FROM tcpconnect").fetchone()
    finally:
        db.close()
    if low is None:
        return [Chunk(path, 0, -1, sqlite=True)]
    step = max(1, -(-(high - low + 1) // parts))
    return [Chunk(path, a, min(a + step - 1, high), sqlite=True)
            for a in range(low, high + 1, step)]


_ADDRS: dict[str, str] = {}


def _addr(value: Any) -> str:
    """An address as the kernel side prints it; cached (addresses repeat)."""
    if isinstance(value, str):
        known = _ADDRS.get(value)
        if known is not None:
            return known
        try:
            text = str(ipaddress.ip_address(value))
        except ValueError:
            raise _BadValue(f"{value!r} is not an IP address") from None
        if len(_ADDRS) > 1 << 16:
            _ADDRS.clear()
        _ADDRS[value] = text
        return text
    raise _BadValue(f"{value!r} is not an IP address")


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise _BadValue(f"{value!r} is not a port (0-65535)")
    return value


# -- flows: records to connections ---------------------------------------------------------------

Side = tuple[str, int]  # (address, port)


class _Flow:
    __slots__ = ("first", "hints", "last", "proto", "sides", "syn")

    def __init__(self, proto: str, a: Side, b: Side) -> None:
        self.proto = proto
        self.sides: list[tuple[Side, Side]] = [(a, b)]  # orientations seen, first first
        self.syn: Side | None = None  # the side that sent a SYN without ACK
        self.first = ""
        self.last = ""
        self.hints: dict[Side, Hint | None] = {}


class FlowMerger:
    """flows records -> one connection per 5-tuple, client first (see the module doc)."""

    def __init__(self, server_port: Callable[[str, int, str], bool] | None = None) -> None:
        self._flows: dict[tuple[str, Side, Side], _Flow] = {}
        self._server_port = server_port or (lambda addr, port, proto: False)
        self.merged = 0

    def add(self, proto: str, saddr: str, sport: int, daddr: str, dport: int,
            src: Hint | None, dst: Hint | None, start: str, end: str,
            flags: Iterable[str]) -> None:
        a, b = (saddr, sport), (daddr, dport)
        key = (proto, a, b) if a <= b else (proto, b, a)
        flow = self._flows.get(key)
        if flow is None:
            flow = self._flows[key] = _Flow(proto, a, b)
        else:
            self.merged += 1
            if (a, b) not in flow.sides:
                flow.sides.append((a, b))
        flags = list(flags)
        if "SYN" in flags and "SYN_ACK" not in flags:
            flow.syn = a
        elif "SYN_ACK" in flags and flow.syn is None:
            flow.syn = b
        if start and (not flow.first or start < flow.first):
            flow.first = start
        if end and end > flow.last:
            flow.last = end
        if src is not None:
            flow.hints.setdefault(a, src)
        if dst is not None:
            flow.hints.setdefault(b, dst)

    def connections(self) -> Iterator[Connection]:
        for flow in self._flows.values():
            client, server = self._orient(flow)
            yield Connection(flow.proto, client[0], client[1], server[0], server[1],
                             flow.hints.get(client), flow.hints.get(server), flow.first,
                             flow.last or flow.first, 1)
        self._flows.clear()

    def _orient(self, flow: _Flow) -> tuple[Side, Side]:
        a, b = flow.sides[0]
        if flow.syn is not None:
            return (a, b) if flow.syn == a else (b, a)
        a_serves = self._server_port(a[0], a[1], flow.proto)
        b_serves = self._server_port(b[0], b[1], flow.proto)
        if a_serves != b_serves:
            return (b, a) if a_serves else (a, b)
        if a[1] != b[1]:
            return (a, b) if a[1] > b[1] else (b, a)
        return (a, b)
