"""``podsight graph``: the traffic graph once, as JSON, Graphviz DOT or Mermaid, from a live
run (``--timeout``) or from what ``trace``/``flows`` recorded (``--from`` JSON or SQLite).

Recorded files are read through the adapters gadgets declare
(``GadgetSpec.extra["graph_recorded"]``: one JSON object or SQLite row to an observation,
or None when it is not theirs); SQLite tables are named after their gadget.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections.abc import Callable, Iterator
from typing import Any

from podsight.cli import args as A
from podsight.cli.identity import add_identity_flags
from podsight.errors import UserError


def register(groups: Any) -> None:
    from podsight.cli.serve import add_graph_flags

    p = groups.add_parser(
        "graph", help="the traffic graph once, as JSON, DOT or Mermaid",
        description="Aggregate TCP connections per (source workload, destination, port) "
                    "from a live run of --timeout seconds, or from the JSON or SQLite that "
                    "'podsight trace tcplife' wrote (--from), and print the graph once.")
    p.add_argument("--from", dest="source", metavar="FILE",
                   help="read recorded records (JSON lines or SQLite) instead of tracing")
    p.add_argument("-o", "--output", choices=("json", "dot", "mermaid"), default="json",
                   help="json (the /api/graph.json shape, default), dot or mermaid")
    p.add_argument("--stats-type", choices=("connection", "bytes", "duration"),
                   default="connection", help="what edge labels say (default connection)")
    p.add_argument("--max-time", "--timeout", dest="max_time", type=lambda v: A.seconds(v),
                   metavar="SECONDS", help="trace this long, then print the graph")
    add_graph_flags(p)
    add_identity_flags(p)
    p.set_defaults(func=run)


def _recorded_adapters() -> list[Callable[[dict[str, Any]], Any]]:
    from podsight.cli.serve import _load
    from podsight.gadgets import specs

    return [_load(s.extra["graph_recorded"]) for s in specs() if "graph_recorded" in s.extra]


def _rows(path: str) -> Iterator[dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise UserError(f"--from {path}: {exc.strerror}") from None
    if head.startswith(b"SQLite format 3"):
        from podsight.gadgets import specs

        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        db.row_factory = sqlite3.Row
        try:
            tables = {r[0] for r in db.execute("select name from sqlite_master where "
                                               "type = 'table'")}
            for spec in specs():
                if spec.name in tables and "graph_recorded" in spec.extra:
                    for row in db.execute(f'select * from "{spec.name}"'):
                        yield dict(row)
        except sqlite3.DatabaseError as exc:
            raise UserError(f"--from {path}: {exc}") from None
        finally:
            db.close()
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise UserError(f"--from {path}: line {n} is not JSON") from None
            if isinstance(obj, dict):
                yield obj


def run(ns: argparse.Namespace) -> int:
    from podsight.analysis.graph import Graph, Query, data

    graph = Graph(persistent_ns=ns.persistent, aggregate_cidr=ns.aggregate_cidr,
                  aggregate_cidr6=ns.aggregate_cidr6)
    if ns.source is not None:
        adapters = _recorded_adapters()
        seen = 0
        for row in _rows(ns.source):
            for adapt in adapters:
                o = adapt(row)
                if o is not None:  # one observation, or a list (a flow record: several)
                    graph.add(o if isinstance(o, list) else [o])
                    seen += 1
                    break
        if not seen:
            raise UserError(f"--from {ns.source}: no connection or flow records in it (write "
                            "them with 'podsight trace tcplife -o json' or '--sqlite')")
    else:
        if ns.max_time is None:
            raise UserError("give --timeout SECONDS (trace that long) or --from FILE")
        from podsight.cli.serve import trace_into

        graph = trace_into(ns, graph)
    out = data(graph.snapshot(), Query(stats=ns.stats_type))
    sys.stdout.write(render(out, ns.output))
    sys.stdout.flush()
    return 0


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(graph: dict[str, list[dict[str, Any]]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(graph, indent=1) + "\n"
    if fmt == "dot":
        lines = ["digraph podsight {", "  rankdir=LR;", "  node [shape=box];"]
        for n in graph["nodes"]:
            label = _quote(n["title"])[:-1] + "\\n" + _quote(n["subTitle"])[1:]
            lines.append(f"  {_quote(n['id'])} [label={label}];")
        for e in graph["edges"]:
            color = ' color="red"' if e["detail__failed"] else ""
            label = f":{e['detail__port']} {e['mainStat']}"
            lines.append(f"  {_quote(e['source'])} -> {_quote(e['target'])} "
                         f"[label={_quote(label)}{color}];")
        return "\n".join([*lines, "}"]) + "\n"
    ids = {n["id"]: f"n{i}" for i, n in enumerate(graph["nodes"])}
    lines = ["graph LR"]
    for n in graph["nodes"]:
        title = n["title"].replace('"', "'")
        sub = n["subTitle"].replace('"', "'")
        lines.append(f'  {ids[n["id"]]}["{title}<br/>{sub}"]')
    for e in graph["edges"]:
        label = f":{e['detail__port']} {e['mainStat']}".replace('"', "'").replace("|", "/")
        lines.append(f'  {ids[e["source"]]} -->|"{label}"| {ids[e["target"]]}')
    return "\n".join(lines) + "\n"
