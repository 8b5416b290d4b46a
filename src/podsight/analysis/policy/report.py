"""What ``policy check`` prints: a table of denied connections, or one JSON object each.

The JSON keys are a contract (docs/policy.md). Everything after the
connection's own addresses and ports depends only on (client, server, port,
protocol), so that part is rendered once per verdict and reused: a million
connections among a few thousand pod pairs cost a string join each.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from podsight.analysis.policy.checker import (
    ALLOWED,
    DENIED,
    Decision,
    Judged,
    Side,
    Verdict,
    _side,
)
from podsight.analysis.policy.ends import End
from podsight.analysis.policy.model import EGRESS, INGRESS
from podsight.analysis.policy.records import Connection

COLUMNS = (("SRC", 30), ("DST", 30), ("PROTO", 5))


try:  # five times faster on the verdicts' objects; the same compact UTF-8 JSON
    from orjson import dumps as _orjson_dumps

    def _dumps(value: Any) -> str:
        return _orjson_dumps(value).decode()
except ImportError:  # pragma: no cover - orjson is a dependency, but optional here
    def _dumps(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

#: Verdict.reason when neither end is a pod, escaped for JSON (it needs no escaping)
_NO_POD_END = "no pod end: NetworkPolicy does not apply"

#: A direction's judgement for one pod, rendered: (the judgement, held so its id stays its
#: own; its reason, escaped; its JSON object; denied?; the pod's "src"/"dst" member)
_Rendered = tuple[object, str, str, bool, str]

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
    """One JSON object per connection (``-o json``).

    A line is the connection's own fields, then a tail that depends only on the decision,
    the two ends, the port and the protocol. Tails are composed from pieces rendered once:
    each end's ``"src"``/``"dst"`` member, and each direction's judgement for its pod (for
    a denied one, also for the peer, port and protocol its reason names), with the reason
    joined from the directions' own, already escaped (JSON escapes character by character,
    so the escaped parts joined are the joined text escaped). The same bytes as rendering
    :func:`verdict_json` for every connection; a million connections among a few hundred
    thousand pod pairs then cost a few dict hits and one string each.
    """

    def __init__(self, out: TextIO) -> None:
        self.out = out
        # (ids) -> the objects (held, so the ids stay theirs) and the rendered tail: Service
        # and loopback verdicts, rendered whole
        self._tails: dict[tuple[int, int, int, int, str], tuple[object, End, End, str]] = {}
        self._srcs: dict[End, str] = {}  # end -> its member ("src"), rendered
        self._dsts: dict[End, str] = {}
        # (id(judged), subject[, peer, port, protocol]) -> (judged, escaped reason, JSON,
        # denied, the subject's member): one dict per direction (egress: the client's)
        self._egress: dict[tuple[object, ...], _Rendered] = {}
        self._ingress: dict[tuple[object, ...], _Rendered] = {}

    def write(self, conn: Connection, src: End, dst: End, verdict: Verdict) -> None:
        head = (f'{{"saddr":"{conn.saddr}","sport":{conn.sport},"daddr":"{conn.daddr}",'
                f'"dport":{conn.dport},"proto":"{conn.proto}"')
        if conn.first:
            head += self.time_json(conn.first)
        if conn.result:
            head += self.result_json(conn.result)
        self.out.write(head + self.tail(verdict.decision, src, dst, conn.dport, conn.proto))

    def pieces(self) -> tuple[dict[tuple[object, ...], _Rendered],
                              dict[tuple[object, ...], _Rendered]]:
        """The rendered judgements, egress and ingress, as :meth:`tail` keeps them: a hit on
        ``(id(judged), end)`` is an allowed judgement of that end's pod (the dicts stay
        these, also when emptied). For a caller composing :meth:`tail`'s common case
        inline (:class:`~podsight.analysis.policy.blockjudge.BlockJudge`)."""
        return self._egress, self._ingress

    @staticmethod
    def time_json(when: str) -> str:
        """The ``"time"`` member (after a comma): the text as it is when JSON would not
        escape any of it (orjson escapes only quotes, backslashes and control
        characters, none of which is printable)."""
        if when.isprintable() and '"' not in when and "\\" not in when:
            return ',"time":"' + when + '"'
        return ',"time":' + _dumps(when)

    @staticmethod
    def result_json(result: str) -> str:
        return ',"result":' + _dumps(result)

    def tail(self, decision: Decision, src: End, dst: End, port: int, proto: str) -> str:
        """Everything after the connection's own fields, and the line's end."""
        if decision.backend is not None or decision.loopback:
            return self._whole(decision, src, dst, port, proto)
        judged = decision.egress
        egress = None
        if judged is not None and src.pod is not None:
            key: tuple[object, ...] = (id(judged), src) if judged.verdict == ALLOWED \
                else (id(judged), src, dst, port, proto)
            egress = self._egress.get(key)
            if egress is None:
                egress = self._side(self._egress, key, EGRESS, judged, src, dst, port, proto)
            s = egress[4]
        else:
            s = self._srcs.get(src) or self._note(self._srcs, src, ',"src":')
        judged = decision.ingress
        ingress = None
        if judged is not None and dst.pod is not None:
            key = (id(judged), dst) if judged.verdict == ALLOWED \
                else (id(judged), dst, src, port, proto)
            ingress = self._ingress.get(key)
            if ingress is None:
                ingress = self._side(self._ingress, key, INGRESS, judged, dst, src, port,
                                     proto)
            d = ingress[4]
        else:
            d = self._dsts.get(dst) or self._note(self._dsts, dst, ',"dst":')
        verdict = decision.verdict
        if egress is not None and ingress is not None:
            if verdict == ALLOWED:
                reason = egress[1] + "; " + ingress[1]
            else:
                reason = "; ".join(side[1] for side in (egress, ingress) if side[3])
            return (f'{s}{d},"verdict":"{verdict}","reason":"{reason}","egress":{egress[2]},'
                    f'"ingress":{ingress[2]}}}\n')
        if egress is not None:
            return f'{s}{d},"verdict":"{verdict}","reason":"{egress[1]}","egress":{egress[2]}}}\n'
        if ingress is not None:
            return (f'{s}{d},"verdict":"{verdict}","reason":"{ingress[1]}",'
                    f'"ingress":{ingress[2]}}}\n')
        return f'{s}{d},"verdict":"{verdict}","reason":"{_NO_POD_END}"}}\n'

    @staticmethod
    def _note(cache: dict[End, str], end: End, name: str) -> str:
        if len(cache) > TAILS:
            cache.clear()
        text = cache[end] = name + _dumps(end.notation)
        return text

    @staticmethod
    def _side(cache: dict[tuple[object, ...], _Rendered], key: tuple[object, ...],
              direction: str, judged: Judged, subject: End, peer: End, port: int,
              proto: str) -> _Rendered:
        side = _side(direction, judged, subject, peer, port, proto)
        assert side is not None
        if len(cache) > TAILS:
            cache.clear()
        name = ',"src":' if direction == EGRESS else ',"dst":'
        got = cache[key] = (judged, _dumps(side.reason)[1:-1], _dumps(side_json(side)),
                            side.verdict == DENIED, name + _dumps(subject.notation))
        return got

    def _whole(self, decision: Decision, src: End, dst: End, port: int, proto: str) -> str:
        """A Service's or loopback verdict's tail, rendered from the worded verdict."""
        key = (id(decision), id(src), id(dst), port, proto)
        held = self._tails.get(key)
        if held is not None:
            return held[3]
        verdict = Verdict(decision, src, dst, port, proto)
        tail = (f',"src":{_dumps(src.notation)},"dst":{_dumps(dst.notation)},'
                + _dumps(verdict_json(verdict))[1:] + "\n")
        if len(self._tails) > TAILS:
            self._tails.clear()
        self._tails[key] = (decision, src, dst, tail)
        return tail

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
