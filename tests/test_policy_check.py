"""``podsight policy check`` end to end on recorded files: every input format, the JSON
contract, the table, exit statuses, --diff, and refusing to guess (no root)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from policy_cases import CLUSTER, LAB, np, sel
from policy_records import (
    ACK,
    SYN,
    SYN_ACK,
    connect,
    flow,
    pod_ep,
    write_json,
    write_sqlite,
)

from podsight.identity.endpoint import Endpoint

CLIENT = ("10.244.0.10", "default", "client", {"app": "client", "role": "frontend"})
SERVER = ("10.244.0.11", "default", "server", {"app": "server"})
EXT = "203.0.113.10"


def podsight(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "podsight.cli.main", *argv], input=stdin,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KUBECONFIG": ""})


def ep(who: tuple[str, str, str, dict[str, str]]):
    return pod_ep(who[0], who[1], who[2], who[3])


def write_policies(d: Path, *policies: dict) -> Path:
    d.mkdir(exist_ok=True)
    for p in policies:
        (d / f"{p['metadata']['name']}.yaml").write_text(yaml.safe_dump(p))
    return d


SERVER_80_FROM_CLIENT = np("default", "server-in", {
    "podSelector": sel(app="server"), "policyTypes": ["Ingress"],
    "ingress": [{"from": [{"podSelector": sel(app="client")}], "ports": [{"port": 80}]}]})
CLIENT_OUT = np("default", "client-out", {
    "podSelector": sel(app="client"), "policyTypes": ["Egress"],
    "egress": [{"to": [{"podSelector": sel(app="server")}]},
               {"to": [{"ipBlock": {"cidr": f"{EXT}/32"}}], "ports": [{"port": 443}]}]})


@pytest.fixture
def tcpconnect(tmp_path: Path) -> list:
    return [
        connect(ep(CLIENT), ep(SERVER), CLIENT[0], 5001, SERVER[0], 80),
        connect(ep(CLIENT), ep(SERVER), CLIENT[0], 5002, SERVER[0], 9090),
        connect(ep(CLIENT), None, CLIENT[0], 5003, EXT, 443),
        connect(ep(CLIENT), None, CLIENT[0], 0, EXT, 80, result="timeout"),
        connect(ep(CLIENT), ep(SERVER), CLIENT[0], 5005, SERVER[0], 80, at=5),
    ]


@pytest.mark.parametrize("fmt", ["json", "sqlite"])
def test_tcpconnect_records_json_contract(tmp_path: Path, tcpconnect, fmt):
    src = (write_json(tmp_path / "t.json", "tcpconnect", tcpconnect) if fmt == "json"
           else write_sqlite(tmp_path / "t.db", "tcpconnect", tcpconnect))
    pol = write_policies(tmp_path / "pol", SERVER_80_FROM_CLIENT, CLIENT_OUT)
    # SQLite stores no labels: who is who comes from the objects then
    extra = ["--objects", str(_objects(tmp_path))] if fmt == "sqlite" else []
    proc = podsight("policy", "check", "--policies", str(pol), "--from", str(src), "-o", "json",
                    *extra)
    assert proc.returncode == 1, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == len(tcpconnect)  # exactly one object per input connection
    assert [r["verdict"] for r in rows] == ["allowed", "denied", "allowed", "denied", "allowed"]
    for key in ("saddr", "sport", "daddr", "dport", "proto", "verdict", "reason", "src", "dst"):
        assert all(key in r for r in rows), key
    first, second, _, fourth, _ = rows
    assert first["src"] == "p/default/client" and first["dst"] == "p/default/server"
    assert first["egress"] == {"pod": "default/client", "policies": ["default/client-out"],
                               "allowed_by": ["default/client-out"], "verdict": "allowed",
                               "reason": "egress allowed by default/client-out"}
    assert first["ingress"]["allowed_by"] == ["default/server-in"]
    assert second["ingress"]["verdict"] == "denied" and second["ingress"]["allowed_by"] == []
    assert second["egress"]["verdict"] == "allowed"
    assert fourth["dst"] == f"r/{EXT}" and "ingress" not in fourth
    assert fourth["result"] == "timeout" and fourth["sport"] == 0
    assert "2 denied" in proc.stderr and "5 connections checked" in proc.stderr

    table = podsight("policy", "check", "--policies", str(pol), "--from", str(src), *extra)
    assert table.returncode == 1
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["SRC", "DST", "PROTO", "REASON"]
    assert len(lines) == 3  # the denied ones only
    assert lines[1].startswith("p/default/client:5002") and "ingress to default/server" in lines[1]
    assert "p/default/client:0" in lines[2] and f"r/{EXT}:80" in lines[2]


def _objects(tmp_path: Path) -> Path:
    path = tmp_path / "objects.yaml"
    path.write_text(yaml.safe_dump(LAB))
    return path


def test_everything_allowed_is_exit_0(tmp_path: Path, tcpconnect):
    src = write_json(tmp_path / "t.json", "tcpconnect", tcpconnect)
    pol = write_policies(tmp_path / "pol")  # an empty directory: no policies
    proc = podsight("policy", "check", "--policies", str(pol), "--from", str(src))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "0 denied" in proc.stderr and "0 policies" in proc.stderr


@pytest.mark.parametrize("fmt", ["json", "sqlite"])
def test_flows_records_become_one_connection_each_client_first(tmp_path: Path, fmt):
    c, s = ep(CLIENT), ep(SERVER)
    records = [
        # a TCP flow: the SYN tells the client, whatever the record order
        flow(s, c, SERVER[0], 80, CLIENT[0], 41000, flags=SYN_ACK),
        flow(c, s, CLIENT[0], 41000, SERVER[0], 80, flags=SYN),
        flow(c, s, CLIENT[0], 41000, SERVER[0], 80, flags=ACK, at=1_000_000_000),
        # a UDP flow, no SYN: the server is the side whose port is a container port
        flow(s, c, SERVER[0], 53, CLIENT[0], 60000, proto=17),
        flow(c, s, CLIENT[0], 60000, SERVER[0], 53, proto=17),
        # TCP seen mid-connection: the higher port is the client's (ephemeral)
        flow(c, s, CLIENT[0], 9090, SERVER[0], 45000, flags=ACK),
        # ICMP: not a NetworkPolicy protocol, skipped and said
        flow(c, s, CLIENT[0], 0, SERVER[0], 0, proto=1),
    ]
    src = (write_json(tmp_path / "f.json", "flows", records) if fmt == "json"
           else write_sqlite(tmp_path / "f.db", "flows", records))
    pol = write_policies(tmp_path / "pol", SERVER_80_FROM_CLIENT)
    proc = podsight("policy", "check", "--policies", str(pol), "--from", str(src), "-o", "json",
                    "--objects", str(_objects(tmp_path)))
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    got = sorted((r["saddr"], r["sport"], r["daddr"], r["dport"], r["proto"], r["verdict"])
                 for r in rows)
    assert got == sorted([
        (CLIENT[0], 41000, SERVER[0], 80, "tcp", "allowed"),
        (CLIENT[0], 60000, SERVER[0], 53, "udp", "denied"),
        (SERVER[0], 45000, CLIENT[0], 9090, "tcp", "allowed"),
    ]), proc.stderr
    assert "records skipped: 1 icmp" in proc.stderr
    assert proc.returncode == 1


def test_bare_records_ipv6_udp_and_sctp(tmp_path: Path):
    records = [
        {"ip": 6, "proto": "tcp", "saddr": "fd00:244::a", "sport": 1, "daddr": "fd00:244::b",
         "dport": 80},
        {"ip": 4, "proto": "udp", "saddr": CLIENT[0], "sport": 1, "daddr": SERVER[0],
         "dport": 80},
        {"ip": 4, "proto": "sctp", "saddr": CLIENT[0], "sport": 1, "daddr": SERVER[0],
         "dport": 80},
        {"proto": "TCP", "saddr": SERVER[0], "sport": 1, "daddr": SERVER[0], "dport": 80},
    ]
    src = tmp_path / "bare.json"
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    pol = write_policies(tmp_path / "pol", SERVER_80_FROM_CLIENT)
    proc = podsight("policy", "check", "--policies", str(pol), "--from", str(src), "-o", "json",
                    "--objects", str(_objects(tmp_path)))
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["verdict"] for r in rows] == ["allowed", "denied", "denied", "allowed"]
    assert rows[0]["src"] == "p/default/client" and rows[0]["daddr"] == "fd00:244::b"
    assert rows[3]["reason"].startswith("loopback")


def test_diff_prints_what_changes_verdict(tmp_path: Path, tcpconnect):
    src = write_json(tmp_path / "t.json", "tcpconnect", tcpconnect)
    old = write_policies(tmp_path / "old", SERVER_80_FROM_CLIENT)
    new = write_policies(tmp_path / "new", SERVER_80_FROM_CLIENT, CLIENT_OUT)
    proc = podsight("policy", "check", "--policies", str(new), "--from", str(src),
                    "--diff", str(old), "-o", "json")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    # client-out denies the connect to EXT:80 that nothing denied before
    assert [(r["daddr"], r["dport"], r["before"]["verdict"], r["after"]["verdict"])
            for r in rows] == [(EXT, 80, "allowed", "denied")]
    assert proc.returncode == 1 and "1 change verdict" in proc.stderr
    same = podsight("policy", "check", "--policies", str(old), "--from", str(src),
                    "--diff", str(old))
    assert same.returncode == 0 and same.stdout == ""
    table = podsight("policy", "check", "--policies", str(new), "--from", str(src),
                     "--diff", str(old))
    assert table.stdout.splitlines()[0].split() == ["SRC", "DST", "PROTO", "BEFORE", "AFTER",
                                                    "REASON"]


def test_policy_files_lists_and_other_kinds(tmp_path: Path, tcpconnect):
    src = write_json(tmp_path / "t.json", "tcpconnect", tcpconnect)
    listing = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList",
               "items": [SERVER_80_FROM_CLIENT, CLIENT_OUT]}
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "list.json").write_text(json.dumps(listing))
    (d / "deploy.yml").write_text(yaml.safe_dump_all([{"apiVersion": "apps/v1",
                                                       "kind": "Deployment",
                                                       "metadata": {"name": "x"}}, None]))
    (d / "notes.txt").write_text("not a manifest")
    (d / "sub").mkdir()
    (d / "sub" / "deny.yaml").write_text("this: [is not read")
    proc = podsight("policy", "check", "--policies", str(d), "--from", str(src), "-o", "json")
    assert proc.returncode == 1, proc.stderr
    assert "skipped 1 Deployment (not NetworkPolicies)" in proc.stderr
    assert "(2 policies;" in proc.stderr


def test_unknowns_are_said_not_guessed(tmp_path: Path):
    c = pod_ep(*CLIENT)
    named = np("default", "named", {"podSelector": sel(app="server"),
                                     "ingress": [{"ports": [{"port": "http"}]}]})
    by_team = np("default", "team", {"podSelector": sel(app="server"), "ingress": [
        {"from": [{"namespaceSelector": sel(team="a")}]}]})
    web_svc = Endpoint.for_service("10.96.0.10", "default", "web")
    to_service = connect(c, web_svc, CLIENT[0], 1, "10.96.0.10", 80)
    to_server = connect(c, pod_ep(*SERVER), CLIENT[0], 1, SERVER[0], 80)
    for policy, record, words in (
            (named, to_server, "container ports of pod default/server are not known"),
            (by_team, to_server, "no Namespace objects were given"),
            (named, to_service, "Service default/web (10.96.0.10:80): its backends")):
        src = write_json(tmp_path / "r.json", "tcpconnect", [record])
        pol = write_policies(tmp_path / policy["metadata"]["name"], policy)
        proc = podsight("policy", "check", "--policies", str(pol), "--from", str(src))
        assert proc.returncode == 2, proc.stderr
        assert words in proc.stderr and "--objects" in proc.stderr
    # with the objects, each is judged
    objects = tmp_path / "cluster.yaml"
    objects.write_text(yaml.safe_dump(CLUSTER))
    service = connect(c, web_svc, CLIENT[0], 1, "10.96.0.10", 80)
    src = write_json(tmp_path / "s.json", "tcpconnect", [service])
    pol = write_policies(tmp_path / "web", np("default", "web", {
        "podSelector": sel(app="web"), "ingress": [{"ports": [{"port": "http"}]}]}))
    proc = podsight("policy", "check", "--policies", str(pol), "--from", str(src),
                    "--objects", str(objects), "-o", "json")
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert row["verdict"] == "allowed" and row["dst"] == "s/default/web"
    assert row["service"] == "default/web" and row["backend_port"] == 8080
    assert proc.returncode == 0, proc.stderr


def test_stdin_and_several_files(tmp_path: Path, tcpconnect):
    src = write_json(tmp_path / "t.json", "tcpconnect", tcpconnect)
    pol = write_policies(tmp_path / "pol", SERVER_80_FROM_CLIENT)
    proc = podsight("policy", "check", "--policies", str(pol), "--from", str(src), "--from", "-",
                    "-o", "json", stdin=src.read_text())
    assert len(proc.stdout.splitlines()) == 2 * len(tcpconnect)
