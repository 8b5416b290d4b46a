"""The lab enforces NetworkPolicies as a CNI would, and agrees with the checker.

The lab is rebuilt from the semantics table's world (tests/policy_cases.py,
``lab up --topology``); for every case the lab can build, its policies are
applied (nftables), the connection is probed for real from the source pod's
network namespace, and ``podsight policy check`` judges the same connection
(as a bare record, with the lab's inventory as ``--objects``). The probe, the
checker and the documentation's verdict must all agree: allowed is a
completed handshake (or a UDP answer), denied is silence (a dropped packet),
never a refusal (every probed port has a server).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from policy_cases import CASES, EXTERNAL, LAB, NODE_IP, Case, address

from podsight.lab import Lab, enforce
from podsight.lab.probe import NODE, Probe, run
from podsight.lab.system import child_env
from podsight.lab.topologyfile import load

LAB_CASES = [c for c in CASES if c.world == "LAB" and c.lab]
NODE_PORT = 8081  # what "node" cases connect to: a listener of this test on the node
TIMEOUT = 1.0


def podsight(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "podsight.cli.main", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, env=child_env())


@pytest.fixture(scope="module")
def topo(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    path = tmp_path_factory.mktemp("topo") / "lab.yaml"
    path.write_text(yaml.safe_dump(LAB))
    lab.up(load(str(path)))
    assert lab.is_up(), lab.problems()
    listener = socket.create_server((NODE_IP, NODE_PORT))  # the node's own server
    try:
        yield lab
    finally:
        listener.close()
        enforce.delete_all(lab)
        lab.up()  # the default lab again, for the rest of the session


def apply_only(lab: Lab, policies: list[dict], where: Path) -> None:
    enforce.delete_all(lab)
    if policies:
        where.write_text(yaml.safe_dump_all(policies))
        enforce.apply(lab, str(where))


def probe_of(case: Case) -> Probe:
    src = NODE if case.src == "node" else case.src
    return Probe(src, case.dst, address(LAB, case.dst, case.family), case.port, case.proto)


@pytest.mark.parametrize("case", LAB_CASES, ids=[c.id for c in LAB_CASES])
def test_lab_probe_and_checker_agree_with_the_documentation(topo: Lab, case: Case, tmp_path):
    apply_only(topo, case.policies, tmp_path / "policies.yaml")
    probe = probe_of(case)
    (result,) = run(topo.pods, [probe], TIMEOUT)
    want = "ok" if case.expected == "allowed" else "timeout"
    assert result.result == want, f"{case.doc}: lab said {result.result}"

    saddr = NODE_IP if case.src == "node" else address(LAB, case.src, case.family)
    record = {"ip": case.family, "proto": case.proto, "saddr": saddr, "sport": 40000,
              "daddr": probe.addr, "dport": case.port}
    policies = tmp_path / "policies"
    policies.mkdir()
    if case.policies:
        (policies / "p.yaml").write_text(yaml.safe_dump_all(case.policies))
    proc = podsight("policy", "check", "--policies", str(policies), "--from", "-",
                    "--objects", str(topo.inventory_path), "-o", "json",
                    stdin=json.dumps(record) + "\n")
    assert proc.returncode == (0 if case.expected == "allowed" else 1), proc.stderr
    (line,) = proc.stdout.splitlines()
    assert json.loads(line)["verdict"] == case.expected


def test_every_probed_port_has_a_server(topo: Lab):
    """Without policies every case's connection completes: so a timeout above is a policy."""
    enforce.delete_all(topo)
    probes = [probe_of(c) for c in LAB_CASES if c.src != c.dst]
    results = run(topo.pods, probes, TIMEOUT)
    assert [r for r in results if r.result != "ok"] == []


def test_cli_apply_list_probe_delete(topo: Lab, tmp_path):
    enforce.delete_all(topo)
    case = next(c for c in CASES if c.id == "both-ends-allowed")
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump_all(case.policies))
    proc = podsight("lab", "policy", "apply", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "networkpolicy default/client-out applied (isolates default/client)" in proc.stdout
    proc = podsight("lab", "policy", "list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "TYPES", "ISOLATES"]
    assert any(line.split() == ["default", "server-in", "Ingress", "default/server"]
               for line in lines), proc.stdout

    proc = podsight("lab", "probe", "--ports", "80", "--protocols", "tcp", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    pods = [p.ref for p in topo.pods]
    assert len(rows) == len(pods) ** 2
    assert set(rows[0]) == {"from", "to", "addr", "port", "proto", "connected", "result"}
    got = {(r["from"], r["to"]): r["connected"] for r in rows}
    assert got[("default/client", "default/server")] is True
    # client may only reach server; server accepts only client (itself: loopback)
    assert got[("default/client", "dev/tester")] is False
    assert got[("dev/tester", "default/server")] is False
    assert got[("dev/tester", "default/client")] is True
    assert got[("default/server", "default/server")] is True

    proc = podsight("lab", "probe", "--ports", "80", "--protocols", "tcp")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("tcp/80:\nFROM \\ TO")

    proc = podsight("lab", "policy", "delete", "--all")
    assert proc.returncode == 0, proc.stderr
    assert "2 policies deleted" in proc.stderr
    assert not topo.files.policies.exists()
    (result,) = run(topo.pods, [Probe("dev/tester", "default/server",
                                      address(LAB, "default/server", 4), 80, "tcp")], TIMEOUT)
    assert result.connected


def test_apply_replaces_a_policy_of_the_same_name(topo: Lab, tmp_path):
    enforce.delete_all(topo)
    deny = next(c for c in CASES if c.id == "deny-ingress").policies
    apply_only(topo, deny, tmp_path / "a.yaml")
    allow = [{**deny[0], "spec": {"podSelector": {}, "ingress": [{}]}}]
    (tmp_path / "b.yaml").write_text(yaml.safe_dump_all(allow))
    enforce.apply(topo, str(tmp_path / "b.yaml"))
    assert [a.policy.ref for a in enforce.listing(topo)] == ["default/deny-ingress"]
    (result,) = run(topo.pods, [Probe("default/client", "default/server",
                                      address(LAB, "default/server", 4), 80, "tcp")], TIMEOUT)
    assert result.connected


def test_external_host_is_reached_through_egress_rules(topo: Lab, tmp_path):
    case = next(c for c in CASES if c.id == "egress-ipblock")
    apply_only(topo, case.policies, tmp_path / "p.yaml")
    results = run(topo.pods, [Probe("default/client", "ext", EXTERNAL, 80, "tcp"),
                              Probe("default/client", "ext", EXTERNAL, 443, "tcp"),
                              Probe("default/web", "ext", EXTERNAL, 443, "tcp")], TIMEOUT)
    assert [r.result for r in results] == ["ok", "timeout", "ok"]


def test_a_rebuild_removes_the_policies(topo: Lab, tmp_path):
    apply_only(topo, [next(c for c in CASES if c.id == "deny-ingress").policies[0]],
               tmp_path / "p.yaml")
    assert topo.files.policies.exists()
    topo.down()
    try:
        out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
        assert "podsight-lab-policy" not in out
        assert not topo.files.policies.exists()
    finally:
        topo.up(topo_topology(tmp_path))


def topo_topology(tmp_path: Path):
    path = tmp_path / "lab.yaml"
    path.write_text(yaml.safe_dump(LAB))
    return load(str(path))
