"""The speed work on ``policy check`` and ``advise network-policy`` changes no result.

The command lines (the collector settled before reading, the advisor's ends looked up
inline, checks split across CPUs) against the plain library path, one record at a time, on
mixed inputs: several identities, one identity on several ports and source ports, loopback
and a pod's other address, a Service, outside addresses; and a malformed line, which must
give the same one-line error and exit 2 whichever way the input is read.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from policy_cases import namespace, objects, pod
from policy_records import connect, pod_ep, write_json, write_sqlite

from podsight.identity.endpoint import Endpoint

WORLD = objects(
    namespace("default", {}), namespace("shop", {"team": "shop"}),
    pod("default", "mypod", 2, {"run": "mypod"}, []),
    pod("shop", "web-a", 3, {"app": "web"}, [("http", 8080, "TCP")]),
    pod("shop", "db-a", 4, {"app": "db"}, [("pg", 5432, "TCP")]),
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
     "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"},
              "ports": [{"port": 80, "targetPort": "http", "protocol": "TCP"}]}},
)
POLICIES = [
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
     "metadata": {"name": "web-in", "namespace": "shop"},
     "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
              "ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": "http"}]}]}},
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
     "metadata": {"name": "db-in", "namespace": "shop"},
     "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"],
              "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}},
]
MY = pod_ep("10.244.0.2", "default", "mypod", {"run": "mypod"})
MY_OTHER = pod_ep("10.244.0.92", "default", "mypod", {"run": "mypod", "new": "label"})
WEB = pod_ep("10.244.0.3", "shop", "web-a", {"app": "web"})
DB = pod_ep("10.244.0.4", "shop", "db-a", {"app": "db"})
SVC = Endpoint.for_service("10.96.0.10", "shop", "web")


def records() -> list[Any]:
    out = []
    for i in range(3):  # the same identities again, other source ports and times
        base = 40000 + 100 * i
        at = i * 1_000_000_000
        out += [
            connect(MY, WEB, "10.244.0.2", base, "10.244.0.3", 8080, at=at),
            connect(MY, WEB, "10.244.0.2", base + 1, "10.244.0.3", 9090, at=at + 1),
            connect(MY, WEB, "10.244.0.2", base + 2, "10.244.0.3", 80, at=at + 2,
                    result="refused"),
            connect(MY, DB, "10.244.0.2", base + 3, "10.244.0.4", 5432, at=at + 3),
            connect(WEB, DB, "10.244.0.3", base + 4, "10.244.0.4", 5432, at=at + 4),
            connect(WEB, DB, "10.244.0.3", base + 5, "10.244.0.4", 5433, at=at + 5),
            connect(MY, SVC, "10.244.0.2", base + 6, "10.96.0.10", 80, at=at + 6),
            connect(MY, None, "10.244.0.2", base + 7, f"203.0.113.{i + 1}", 443, at=at + 7),
            connect(DB, None, "10.244.0.4", base + 8, "198.51.100.7", 80, at=at + 8),
            connect(MY, MY, "10.244.0.2", base + 9, "10.244.0.2", 80, at=at + 9),
            connect(MY, MY_OTHER, "10.244.0.2", base + 10, "10.244.0.92", 80, at=at + 10),
        ]
    return out


def podsight(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "podsight.cli.main", *argv],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KUBECONFIG": ""})


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "objects.yaml").write_text(yaml.safe_dump(WORLD))
    (tmp_path / "policies.yaml").write_text(yaml.safe_dump_all(POLICIES))
    recs = records()
    return {"objects": tmp_path / "objects.yaml", "policies": tmp_path / "policies.yaml",
            "json": write_json(tmp_path / "t.json", "tcpconnect", recs),
            "sqlite": write_sqlite(tmp_path / "t.db", "tcpconnect", recs)}


def plain_check(files: dict[str, Path], source: Path, output: str) -> tuple[str, int]:
    """The library path, one record at a time: no collector settling, no split input."""
    from podsight.analysis.policy import Checker, Reader, load
    from podsight.analysis.policy.documents import documents
    from podsight.analysis.policy.report import JsonReport, TableReport
    from podsight.analysis.policy.world import from_documents

    world = from_documents(documents(str(files["objects"]), "--objects"), "objects")
    checker = Checker(load(str(files["policies"])).policies, world)
    out = io.StringIO()
    report: Any = JsonReport(out) if output == "json" else TableReport(out)
    denied = 0
    for conn in Reader([str(source)]):
        verdict = checker.check(conn)
        denied += not verdict.allowed
        report.write(conn, verdict.src, verdict.dst, verdict)
    return out.getvalue(), 1 if denied else 0


@pytest.mark.parametrize("kind", ["json", "sqlite"])
@pytest.mark.parametrize("output", ["columns", "json"])
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_check_matches_the_plain_path(files: dict[str, Path], kind: str, output: str,
                                      jobs: str):
    want, code = plain_check(files, files[kind], output)
    assert code == 1 and want  # something is denied: the rows are compared, not just empty
    proc = podsight("policy", "check", "--policies", str(files["policies"]), "--objects",
                    str(files["objects"]), "--from", str(files[kind]), "-o", output,
                    "--jobs", jobs)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == want


@pytest.mark.parametrize("output", ["columns", "json"])
@pytest.mark.parametrize("jobs", ["1", "2"])
def odd_sqlite(files: dict[str, Path], tmp_path: Path) -> Path:
    """The SQLite capture with odd rows mixed in: an address whose identity columns change
    from row to row (its workload and node; a node's name), ports that are NULL or text,
    an address written otherwise than the reader writes it, an end with no identity."""
    import shutil
    import sqlite3

    db = Path(shutil.copy(files["sqlite"], tmp_path / "odd.db"))
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE tcpconnect SET src_workload = 'Deployment/other', "
                     "src_node = 'node-b' WHERE id % 3 = 0 AND src_name = 'mypod'")
        conn.execute("UPDATE tcpconnect SET src_kind = 'node', src_name = 'node-b', "
                     "src_namespace = NULL WHERE id % 3 = 1 AND src_name = 'mypod'")
        conn.execute("UPDATE tcpconnect SET sport = NULL WHERE id = 4")
        conn.execute("UPDATE tcpconnect SET dport = '5432' WHERE id = 5")
        conn.execute("UPDATE tcpconnect SET daddr = '2001:DB8::7' WHERE id = 8")
        conn.execute("UPDATE tcpconnect SET src_kind = NULL, src_name = NULL WHERE id = 12")
        assert conn.execute("SELECT count(*) FROM tcpconnect").fetchone()[0] > 20
    return db


@pytest.mark.parametrize("output", ["columns", "json"])
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_odd_sqlite_rows_match_the_plain_path(files: dict[str, Path], tmp_path: Path,
                                              output: str, jobs: str):
    """Rows judged as they come out of sqlite3 (``BlockJudge.run_rows``) and rows that go
    the reader's way, mixed: the output is the plain path's, row for row."""
    db = odd_sqlite(files, tmp_path)
    want, code = plain_check(files, db, output)
    assert code == 1 and want
    proc = podsight("policy", "check", "--policies", str(files["policies"]), "--objects",
                    str(files["objects"]), "--from", str(db), "-o", output, "--jobs", jobs)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == want


def test_advise_on_odd_sqlite_rows_matches_the_plain_path(files: dict[str, Path],
                                                          tmp_path: Path):
    """Rows counted as they come out of sqlite3 (``BlockAdvisor.run_rows``) and rows the
    advisor takes one by one, mixed: the policies are the plain path's."""
    from podsight.analysis.policy import Advisor, Reader, render
    from podsight.analysis.policy.documents import documents
    from podsight.analysis.policy.world import from_documents

    db = odd_sqlite(files, tmp_path)
    world = from_documents(documents(str(files["objects"]), "--objects"), "objects")
    advisor = Advisor(world)
    for conn in Reader([str(db)]):
        advisor.add(conn)
    want = render.documents(advisor.policies())
    assert "node-b" in want  # the address's other identity made a rule of its own
    proc = podsight("advise", "network-policy", "--objects", str(files["objects"]), "--from",
                    str(db))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == want


@pytest.mark.parametrize("kind", ["json", "sqlite"])
def test_advise_matches_the_plain_path(files: dict[str, Path], kind: str):
    from podsight.analysis.policy import Advisor, Reader, render
    from podsight.analysis.policy.documents import documents
    from podsight.analysis.policy.world import from_documents

    world = from_documents(documents(str(files["objects"]), "--objects"), "objects")
    advisor = Advisor(world)
    for conn in Reader([str(files[kind])]):
        advisor.add(conn)
    want = render.documents(advisor.policies())
    proc = podsight("advise", "network-policy", "--objects", str(files["objects"]), "--from",
                    str(files[kind]))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == want
    n = len(records())
    assert proc.stderr.endswith(f"from {n} connections ({n} records)\n")
    # the pod's connections to itself (its own address, another address of it) allow nothing
    assert "10.244.0.92" not in proc.stdout and "p/default/mypod:80" not in proc.stdout


def test_a_malformed_line_is_the_same_one_line_error(files: dict[str, Path], tmp_path: Path):
    lines = files["json"].read_text().splitlines(keepends=True)
    bad = tmp_path / "bad.json"
    bad.write_text("".join(lines[:20]) + '{"saddr": "10.244.0.2",\n' + "".join(lines[20:]))
    want = (f"podsight: error: {bad}:21: not a JSON object (podsight reads the JSON lines of "
            "trace tcpconnect and flows, their SQLite files, or bare records)\n")
    check = ["policy", "check", "--policies", str(files["policies"]), "--objects",
             str(files["objects"]), "--from", str(bad)]
    for argv in ([*check, "--jobs", "1"], [*check, "--jobs", "2"],
                 ["advise", "network-policy", "--objects", str(files["objects"]), "--from",
                  str(bad)]):
        proc = podsight(*argv)
        assert proc.returncode == 2, argv
        assert proc.stderr == want, argv


def advise_both(path: Path, objects: Path | None, parts: int) -> tuple[Any, Any]:
    """Advise on one CPU and on ``parts`` parts read by forked workers: (policies text,
    connections, records), or the error each raised."""
    from podsight.analysis.policy import Advisor, Reader, World, render
    from podsight.analysis.policy.checkrun import advise_parallel, plan
    from podsight.analysis.policy.documents import documents
    from podsight.analysis.policy.world import from_documents

    world = from_documents(documents(str(objects), "--objects"), "objects") \
        if objects is not None else World(origin="the records")

    def run(parallel: bool) -> Any:
        advisor, reader = Advisor(world), Reader([str(path)])
        try:
            if parallel:
                chunks = plan([str(path)], parts)
                assert chunks is not None and len(chunks) == parts
                advisor = advise_parallel(chunks, 2, reader, lambda: Advisor(world),
                                          lambda: False)
                assert advisor is not None
            else:
                advisor.add_all(reader)
            return render.documents(advisor.policies()), advisor.connections, \
                reader.stats.records
        except Exception as exc:  # compared: the same error either way
            return type(exc).__name__, str(exc)

    return run(False), run(True)


@pytest.mark.parametrize("kind", ["json", "sqlite"])
@pytest.mark.parametrize("parts", [2, 3])
def test_advise_on_several_cpus_matches_one(files: dict[str, Path], kind: str, parts: int):
    one, several = advise_both(files[kind], files["objects"], parts)
    assert one[1] == len(records()) and "NetworkPolicy" in one[0]
    assert several == one


def test_advise_on_several_cpus_raises_what_one_raises(files: dict[str, Path],
                                                        tmp_path: Path):
    # no objects: SQLite stores no labels, so the first pod a policy needs stops advise
    one, several = advise_both(files["sqlite"], None, 2)
    assert one[0] == "Unknown"
    assert several == one
    # a malformed line in the second part: the first part is replayed, then its error
    lines = files["json"].read_text().splitlines(keepends=True)
    bad = tmp_path / "bad.json"
    bad.write_text("".join(lines[:-3]) + "{oops\n" + "".join(lines[-3:]))
    one, several = advise_both(bad, files["objects"], 2)
    assert one[0] == "UserError" and f"bad.json:{len(lines) - 2}: not a JSON object" in one[1]
    assert several == one
