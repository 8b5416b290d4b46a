"""What ``policy check`` prints: a table of denied connections, or one JSON object each.

The JSON keys are a contract (docs/policy.md). Everything after the
connection's own addresses and ports depends only on (client, server, port,
protocol), so that part is rendered once per verdict and reused: a million
connections among a few thousand pod pairs cost a string join each.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from podsight.analysis.policy.checker import Side, Verdict
from podsight.analysis.policy.ends import End
from podsight.analysis.policy.records import Connection

COLUMNS = (("SRC", 30), ("DST", 30), ("PROTO", 5))


try:  # five times faster on the verdicts' objects; the same compact UTF-8 JSON
    from orjson import dumps as _orjson_dumps

    def _dumps(value: Any) -> str:
        return _orjson_dumps(value).decode()
except ImportError:  # pragma: no cover - orjson is a dependency, but optional here
    def _dumps(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

#: Rendered tails kept: they are per (client, server) pair, so a big capture mostly misses;
#: a bound on memory (a tail is ~0.5 KB), not a hit rate.
TAILS = 1 << 15


def side_json(side: Side | None) -> dict[str, Any] | None:
    if side is None:
        return None
    return {"pod": side.pod, "policies": list(side.policies), "allowed_by": list(side.allowed_by),
            "verdict": side.verdict, "reason": side.reason}


def verdict_json(v: Verdict) -> dict[str, Any]:
    out: dict[str, Any] = {"verdict": v.verdict, "reason": v.reason}
    if v.service:
        out["service"] = v.service
        out["backend"] = v.backend
        out["backend_port"] = v.backend_port
    for name, side in (("egress", v.egress), ("ingress", v.ingress)):
        if side is not None:
            out[name] = side_json(side)
    return out


class JsonReport:
    """One JSON object per connection (``-o json``)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        # (ids) -> the objects (held, so the ids stay theirs) and the rendered tail
        self._tails: dict[tuple[int, int, int, int, str], tuple[object, End, End, str]] = {}

    def write(self, conn: Connection, src: End, dst: End, verdict: Verdict) -> None:
        key = (id(verdict.decision), id(src), id(dst), conn.dport, conn.proto)
        held = self._tails.get(key)
        if held is not None:
            tail = held[3]
        else:
            tail = (f',"src":{_dumps(src.notation)},"dst":{_dumps(dst.notation)},'
                    + _dumps(verdict_json(verdict))[1:])
            if len(self._tails) > TAILS:
                self._tails.clear()
            self._tails[key] = (verdict.decision, src, dst, tail)
        head = (f'{{"saddr":"{conn.saddr}","sport":{conn.sport},"daddr":"{conn.daddr}",'
                f'"dport":{conn.dport},"proto":"{conn.proto}"')
        if conn.first:
            head += f',"time":{_dumps(conn.first)}'
        if conn.result:
            head += f',"result":{_dumps(conn.result)}'
        self.out.write(head + tail + "\n")

    def write_diff(self, conn: Connection, src: End, dst: End, before: Verdict,
                   after: Verdict) -> None:
        obj: dict[str, Any] = {"saddr": conn.saddr, "sport": conn.sport, "daddr": conn.daddr,
                               "dport": conn.dport, "proto": conn.proto}
        if conn.first:
            obj["time"] = conn.first
        obj.update(src=src.notation, dst=dst.notation, before=verdict_json(before),
                   after=verdict_json(after))
        self.out.write(_dumps(obj) + "\n")


class TableReport:
    """The denied connections (or, with ``--diff``, the changed ones), with the reason."""

    def __init__(self, out: TextIO, diff: bool = False, header: bool = True) -> None:
        """``header`` False: rows only (a part of a check on several CPUs; the whole
        writes :attr:`header_text` once)."""
        self.out = out
        self.diff = diff
        self.rows = 0
        extra = "BEFORE   AFTER    " if diff else ""
        head = "".join(name.ljust(width + 1) for name, width in COLUMNS)
        self.header_text = head + extra + "REASON\n"
        self._header = header

    def _row(self, conn: Connection, src: End, dst: End, middle: str, reason: str) -> None:
        if not self.rows and self._header:
            self.out.write(self.header_text)
        self.rows += 1
        cells = (f"{src.notation}:{conn.sport}", f"{dst.notation}:{conn.dport}", conn.proto)
        # a space after every cell, also one longer than its column (long pod names)
        text = "".join(c.ljust(w) + " " for c, (_, w) in zip(cells, COLUMNS, strict=True))
        self.out.write(f"{text}{middle}{reason}\n")

    def write(self, conn: Connection, src: End, dst: End, verdict: Verdict) -> None:
        if not verdict.allowed:
            reason = verdict.reason
            if verdict.service:
                reason += f" (via Service {verdict.service} to {verdict.backend}:" \
                          f"{verdict.backend_port})"
            self._row(conn, src, dst, "", reason)

    def write_diff(self, conn: Connection, src: End, dst: End, before: Verdict,
                   after: Verdict) -> None:
        self._row(conn, src, dst, f"{before.verdict:<8} {after.verdict:<8} ", after.reason)
