"""docs/policy.md is the contract of ``policy check -o json`` and ``lab probe -o json``:
every key the commands print is documented there, and nothing that they never print."""

from __future__ import annotations

import json
import re
from pathlib import Path

from policy_cases import CLUSTER, LAB, WORLDS, address, np, sel

from podsight.analysis.policy import Checker, Connection
from podsight.analysis.policy.documents import Document
from podsight.analysis.policy.policies import collect
from podsight.analysis.policy.report import JsonReport
from podsight.analysis.policy.world import from_documents

DOC = (Path(__file__).resolve().parent.parent / "docs" / "policy.md").read_text()


def documented(section: str) -> set[str]:
    """The keys in the first column of the first table after ``section``."""
    lines = DOC.split(section, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    keys: set[str] = set()
    for row in table[2:]:
        keys |= set(re.findall(r"`([a-z_]+)`", row.split("|")[1]))
    return keys


def rows(world_name: str, policies: list, conns: list[Connection]) -> list[dict]:
    import io

    world = from_documents([Document("w", o) for o in WORLDS[world_name]["items"]], "w")
    checker = Checker(collect([Document("p", p) for p in policies]).policies, world)
    out = io.StringIO()
    report = JsonReport(out)
    for c in conns:
        v = checker.check(c)
        report.write(c, v.src, v.dst, v)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_check_json_keys_are_documented():
    both = np("default", "p", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                               "ingress": [{}], "egress": [{}]})
    web = np("default", "w", {"podSelector": sel(app="web"), "ingress": [{}]})
    printed = rows("LAB", [both], [
        Connection("tcp", address(LAB, "default/client", 4), 1, address(LAB, "default/server", 4),
                   80, first="2026-01-01T00:00:00.000000000Z", result="ok")])
    printed += rows("CLUSTER", [web], [
        Connection("tcp", address(CLUSTER, "default/client", 4), 1, "10.96.0.10", 80)])
    keys = {k for r in printed for k in r}
    sides = {k for r in printed for side in ("egress", "ingress") if side in r
             for k in r[side]}
    assert keys == documented("`-o json` prints exactly one object")
    assert sides == documented("`egress` and `ingress` are present")


def test_probe_json_keys_are_documented():
    from podsight.lab.probe import Probe, Result

    keys = set(Result(Probe("a/b", "c/d", "10.0.0.1", 80, "tcp"), True, "ok").json())
    assert keys == documented("`lab probe -o json` prints")
