"""``policy check`` on a JSON lines file (decoded a block at a time, judged without a
Connection per record, -o json composed from pieces) says exactly what the reference path
says: the same text read from stdin (orjson line by line, one connection at a time), and,
for -o json, each line rendered whole from the worded verdict (``verdict_json``).

Records are written by the tcpconnect gadget's own schema and outputs, then mixed with
bare records and edited the ways files get edited (odd records in the middle of blocks that
otherwise decode). No root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from policy_cases import namespace, objects, pod
from policy_records import connect, pod_ep, write_json

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
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
     "metadata": {"name": "my-out", "namespace": "default"},
     "spec": {"podSelector": {}, "policyTypes": ["Egress"],
              "egress": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]},
                         {"to": [{"namespaceSelector": {"matchLabels": {"team": "shop"}}}]}]}},
]
MY = pod_ep("10.244.0.2", "default", "mypod", {"run": "mypod"})
MY_NEW = pod_ep("10.244.0.2", "default", "mypod", {"run": "mypod", "v": "2"})  # relabelled
WEB = pod_ep("10.244.0.3", "shop", "web-a", {"app": "web"})
DB = pod_ep("10.244.0.4", "shop", "db-a", {"app": "db"})
SVC = Endpoint.for_service("10.96.0.10", "shop", "web")


def tcpconnect_lines(tmp_path: Path) -> list[str]:
    out = []
    for i in range(40):  # the same identities again and again, other ports and times
        base, at = 40000 + 20 * i, i * 1_000_000_000
        src = MY if i % 7 else MY_NEW
        out += [
            connect(src, WEB, "10.244.0.2", base, "10.244.0.3", 8080, at=at),
            connect(src, WEB, "10.244.0.2", base + 1, "10.244.0.3", 9090, at=at + 1),
            connect(src, DB, "10.244.0.2", base + 2, "10.244.0.4", 5432, at=at + 2,
                    result="refused"),
            connect(WEB, DB, "10.244.0.3", base + 3, "10.244.0.4", 5432, at=at + 3),
            connect(src, SVC, "10.244.0.2", base + 4, "10.96.0.10", 80, at=at + 4),
            connect(src, None, "10.244.0.2", base + 5, f"203.0.113.{i + 1}", 443, at=at + 5),
            connect(DB, None, "10.244.0.4", base + 6, "198.51.100.7", 80, at=at + 6),
            connect(src, src, "10.244.0.2", base + 7, "10.244.0.2", 80, at=at + 7),
            connect(None, None, "198.51.100.1", base + 8, "198.51.100.2", 80, at=at + 8),
        ]
    return write_json(tmp_path / "t.json", "tcpconnect", out).read_text().splitlines()


def bare(**fields: Any) -> str:
    record = {"ip": 4, "proto": "tcp", "saddr": "10.244.0.2", "sport": 1,
              "daddr": "10.244.0.3", "dport": 8080, **fields}
    return json.dumps(record)


ODD = [  # each read the reference way, in its place
    bare(),
    bare(proto="UDP", dport=5353),  # upper case: the reader lowers it
    bare(proto="sctp", daddr="10.244.0.4", dport=5432),
    bare(ip=6, saddr="2001:DB8::1", daddr="2001:db8:0::2"),  # printed otherwise: rewritten
    bare(ip=6, saddr="2001:db8::1", daddr="2001:db8::2"),
    bare(time="2026-01-01T00:00:00Z\u2028"),  # a character JSON output keeps as it is
    bare(time='a "quoted" \\ time'),
    bare(sport=70000, dport=1),  # out of range: an error
]


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "objects.yaml").write_text(yaml.safe_dump(WORLD))
    (tmp_path / "policies.yaml").write_text(yaml.safe_dump_all(POLICIES))
    return {"objects": tmp_path / "objects.yaml", "policies": tmp_path / "policies.yaml"}


def check(setup: dict[str, Path], source: str, *extra: str, stdin: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podsight.cli.main", "policy", "check", "--policies",
         str(setup["policies"]), "--objects", str(setup["objects"]), "--from", source, *extra],
        input=stdin, capture_output=True, text=True, timeout=120,
        env={**os.environ, "KUBECONFIG": ""})


def same_as_stdin(setup: dict[str, Path], path: Path, *extra: str
                  ) -> subprocess.CompletedProcess[str]:
    got = check(setup, str(path), *extra)
    want = check(setup, "-", *extra, stdin=path.read_text())
    assert (got.returncode, got.stdout) == (want.returncode, want.stdout)
    assert got.stderr.replace(str(path), "<stdin>") == want.stderr
    return got


@pytest.mark.parametrize("output", ["columns", "json"])
@pytest.mark.parametrize("jobs", ["1", "2"])
def test_mixed_file_as_stdin(setup: dict[str, Path], tmp_path: Path, output: str, jobs: str):
    lines = tcpconnect_lines(tmp_path)
    mixed = lines[:100] + ODD[:-1] + lines[100:] + ODD[:3]  # odd ones inside blocks
    path = tmp_path / "mixed.json"
    path.write_text("\n".join(mixed) + "\n")
    got = same_as_stdin(setup, path, "-o", output, "--jobs", jobs)
    assert got.returncode == 1 and got.stdout  # denied ones: rows compared, not just empty
    if output == "json":
        assert got.stdout.count("\n") == len(mixed)  # one object per connection


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_an_error_inside_a_block(setup: dict[str, Path], tmp_path: Path, jobs: str):
    lines = tcpconnect_lines(tmp_path)
    path = tmp_path / "bad.json"
    path.write_text("\n".join([*lines[:200], ODD[-1], *lines[200:]]) + "\n")
    got = same_as_stdin(setup, path, "-o", "json", "--jobs", jobs)
    assert got.returncode == 2
    assert f"{path}:201:" in got.stderr
    assert got.stdout.count("\n") == 200  # every line before it, complete


def test_json_lines_are_the_verdicts_rendered_whole(setup: dict[str, Path], tmp_path: Path):
    """The composed lines against the worded verdict rendered as one object each."""
    from podsight.analysis.policy import Checker, Reader, load
    from podsight.analysis.policy.documents import documents
    from podsight.analysis.policy.report import verdict_json
    from podsight.analysis.policy.world import from_documents

    path = tmp_path / "t.json"
    path.write_text("\n".join(tcpconnect_lines(tmp_path) + ODD[:-1]) + "\n")
    world = from_documents(documents(str(setup["objects"]), "--objects"), "objects")
    checker = Checker(load(str(setup["policies"])).policies, world)
    want = []
    for conn in Reader([str(path)]):
        v = checker.check(conn)
        obj: dict[str, Any] = {"saddr": conn.saddr, "sport": conn.sport, "daddr": conn.daddr,
                               "dport": conn.dport, "proto": conn.proto}
        if conn.first:
            obj["time"] = conn.first
        if conn.result:
            obj["result"] = conn.result
        obj.update(src=v.src.notation, dst=v.dst.notation, **verdict_json(v))
        want.append(json.dumps(obj, separators=(",", ":"), ensure_ascii=False))
    from podsight.analysis.policy.jsonlines import Block

    assert any(isinstance(x, Block) for x in Reader([str(path)]).items())  # the block path
    got = check(setup, str(path), "-o", "json")
    assert got.stdout.split("\n") == [*want, ""]  # (U+2028 in a time is no line end)
    assert {"allowed", "denied"} <= {json.loads(line)["verdict"] for line in want}


# -- advise network-policy: blocks counted by BlockAdvisor, the rest by Advisor.add ---------

def advise(setup: dict[str, Path], source: str, stdin: str | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podsight.cli.main", "advise", "network-policy", "--objects",
         str(setup["objects"]), "--from", source],
        input=stdin, capture_output=True, text=True, timeout=120,
        env={**os.environ, "KUBECONFIG": ""})


def advised_both_ways(setup: dict[str, Path], path: Path) -> tuple[Any, Any]:
    """In one process: (policies, warnings, connections, records) counted a connection at a
    time (``add_all``, the reference) and a block at a time (``add_items``), or the error
    each raised."""
    from podsight.analysis.policy import Advisor, Reader, render
    from podsight.analysis.policy.documents import documents
    from podsight.analysis.policy.world import from_documents

    world = from_documents(documents(str(setup["objects"]), "--objects"), "objects")

    def run(blocks: bool) -> Any:
        advisor, reader = Advisor(world), Reader([str(path)])
        try:
            if blocks:
                advisor.add_items(reader.items())
            else:
                advisor.add_all(reader)
            return (render.documents(advisor.policies()), advisor.warnings,
                    advisor.connections, reader.stats.records)
        except Exception as exc:  # compared: the same error either way
            return type(exc).__name__, str(exc)

    return run(False), run(True)


def test_advise_counts_blocks_as_it_counts_connections(setup: dict[str, Path],
                                                       tmp_path: Path):
    from podsight.analysis.policy import Reader
    from podsight.analysis.policy.jsonlines import Block

    lines = tcpconnect_lines(tmp_path)
    # odd records inside blocks, a loopback one and a pod's connection to itself (the
    # advisor's way), a record whose time sorts before every other (first seen moves)
    early = json.loads(lines[5])
    early["time"] = "2000-01-01T00:00:00Z"
    loop = bare(saddr="127.0.0.1", daddr="127.0.0.1")
    mixed = lines[:100] + ODD[:-1] + [loop, json.dumps(early)] + lines[100:] + ODD[:3]
    path = tmp_path / "mixed.json"
    path.write_text("\n".join(mixed) + "\n")
    assert any(isinstance(x, Block) for x in Reader([str(path)]).items())  # the block path
    one, blocks = advised_both_ways(setup, path)
    assert blocks == one
    assert one[2] == len(mixed) and "2000-01-01T00:00:00Z" in one[0]
    got = advise(setup, str(path))
    want = advise(setup, "-", stdin=path.read_text())  # line by line
    assert (got.returncode, got.stdout) == (want.returncode, want.stdout) == (0, one[0])
    assert got.stderr == want.stderr


def test_advise_stops_at_an_error_inside_a_block(setup: dict[str, Path], tmp_path: Path):
    lines = tcpconnect_lines(tmp_path)
    path = tmp_path / "bad.json"
    path.write_text("\n".join([*lines[:200], ODD[-1], *lines[200:]]) + "\n")
    one, blocks = advised_both_ways(setup, path)
    assert blocks == one == ("UserError", f"{path}:201: 70000 is not a port (0-65535)")
    got = advise(setup, str(path))
    want = advise(setup, "-", stdin=path.read_text())
    assert got.returncode == want.returncode == 2
    assert got.stderr.replace(str(path), "<stdin>") == want.stderr
    assert f"{path}:201:" in got.stderr


def test_utf8_blocks_are_blocks_too(setup: dict[str, Path], tmp_path: Path):
    """A block with non-ASCII text (here a process name) is read as a block when every line
    is UTF-8, with the outputs of the line-by-line reading (stdin)."""
    from podsight.analysis.policy import Reader
    from podsight.analysis.policy.jsonlines import Block

    lines = [line.replace('"comm":"', '"comm":"caf\u00e9-') if i % 3 == 0 else line
             for i, line in enumerate(tcpconnect_lines(tmp_path))]
    assert "\u00e9" in lines[0]
    path = tmp_path / "utf8.json"
    path.write_text("\n".join(lines + ODD[:-1]) + "\n", encoding="utf-8")
    assert any(isinstance(x, Block) for x in Reader([str(path)]).items())
    for jobs in ("1", "2"):
        same_as_stdin(setup, path, "-o", "json", "--jobs", jobs)
    one, blocks = advised_both_ways(setup, path)
    assert blocks == one and one[2] == len(lines) + len(ODD) - 1
