"""NetworkPolicies against a real kube-apiserver (1.20, tests/k8s): the oracle for what is
a valid policy, for the API server's defaulting, and the source of who is who for
``policy check --kubeconfig`` and of the cluster's policies for ``--diff cluster``.

kubectl talks to it (``apply --dry-run=server``): the server validates and defaults, and
kubectl refuses unknown fields and duplicate keys first, as it does by default. The 1.20
server predates ``endPort``: policies using it are left out of the oracle's cases.
"""

# ruff: noqa: F401, F811  (pytest fixtures are imported, then named as parameters)

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from policy_bad import BAD
from policy_cases import CASES, np, sel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from k8s.fixtures import Cluster, core, kube, make_namespace  # fixtures: kube, core

from podsight.analysis.policy.documents import Document
from podsight.analysis.policy.policies import parse

NAMESPACES = ("prod", "dev", "other", "kube-system", "shop")


def kubectl(cluster: Cluster, *args: str, stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    tool = cluster.env.get("KUBECTL") or shutil.which("kubectl")
    assert tool, "kubectl is needed (it is the oracle here)"
    return subprocess.run([tool, "--kubeconfig", cluster.kubeconfig, *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def dry_run(cluster: Cluster, text: str, namespace: str = "default"
            ) -> subprocess.CompletedProcess[str]:
    return kubectl(cluster, "apply", "--dry-run=server", "-n", namespace, "-o", "json", "-f",
                   "-", stdin=text)


@pytest.fixture(scope="module")
def cluster(kube: Cluster, core: Any) -> Cluster:
    existing = {n.metadata.name for n in core.list_namespace().items}
    for name in NAMESPACES:
        if name not in existing:
            core.create_namespace({"metadata": {"name": name}})
    return kube


def podsight(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "podsight.cli.main", *argv], input=stdin,
                          capture_output=True, text=True, timeout=120)


ORACLE = [b for b in BAD if b[3]]


@pytest.mark.parametrize(("case", "text", "message", "oracle"), ORACLE,
                         ids=[b[0] for b in ORACLE])
def test_the_api_server_rejects_what_podsight_rejects(cluster: Cluster, case, text, message,
                                                      oracle):
    proc = dry_run(cluster, text)
    assert proc.returncode != 0, f"{case}: kubectl accepted it:\n{proc.stdout}"


def good_policies() -> list[dict[str, Any]]:
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for case in CASES:
        for p in case.policies:
            if "endPort" in json.dumps(p):
                continue  # the 1.20 server predates endPort
            seen[(p["metadata"]["namespace"], p["metadata"]["name"] + "-" + case.id)] = {
                **p, "metadata": {**p["metadata"],
                                  "name": f"{p['metadata']['name']}-{case.id}"[:63]}}
    return list(seen.values())


def test_the_api_server_accepts_and_defaults_as_podsight_reads(cluster: Cluster):
    """Every policy of the semantics table (and the defaulting cases) is valid, and the
    object the server returns, defaulted, means what podsight read from the original."""
    policies = [
        *good_policies(),
        np("default", "egress-empty", {"podSelector": {}, "egress": []}),
        np("default", "egress-rule", {"podSelector": {}, "egress": [{}]}),
        np("default", "ports-no-protocol", {"podSelector": {}, "ingress": [{"ports": [
            {"port": 80}]}]}),
    ]
    assert len(policies) >= 40
    for policy in policies:
        ns = policy["metadata"]["namespace"]
        proc = dry_run(cluster, yaml.safe_dump(policy), ns)
        assert proc.returncode == 0, f"{policy['metadata']['name']}: {proc.stderr}"
        served = json.loads(proc.stdout)
        ours = parse(Document("mine", policy))
        theirs = parse(Document("server", {k: served[k] for k in
                                           ("apiVersion", "kind", "metadata", "spec")}))
        assert (ours.types, ours.ingress, ours.egress, ours.pod_selector) == \
            (theirs.types, theirs.ingress, theirs.egress, theirs.pod_selector), \
            policy["metadata"]["name"]
    defaults = {p["metadata"]["name"]: p for p in policies}
    for name, types in (("egress-empty", ["Ingress"]), ("egress-rule", ["Ingress", "Egress"])):
        proc = dry_run(cluster, yaml.safe_dump(defaults[name]))
        assert json.loads(proc.stdout)["spec"]["policyTypes"] == types


def test_advised_policies_are_accepted_unchanged(cluster: Cluster, tmp_path: Path):
    from policy_records import write_json
    from test_policy_advise import WORLD, seed_records

    src = write_json(tmp_path / "t.json", "tcpconnect", seed_records())
    objects = tmp_path / "objects.yaml"
    objects.write_text(yaml.safe_dump(WORLD))
    proc = podsight("advise", "network-policy", "--from", str(src), "--objects", str(objects))
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert len(docs) == 3
    for doc in docs:
        applied = dry_run(cluster, yaml.safe_dump(doc), doc["metadata"]["namespace"])
        assert applied.returncode == 0, applied.stderr
        served = json.loads(applied.stdout)
        # nothing dropped, nothing added (the server leaves out empty lists: same meaning)
        assert served["spec"] == {k: v for k, v in doc["spec"].items() if v != []}


def _pod(core: Any, ns: str, name: str, ip: str, labels: dict[str, str],
         ports: list[dict[str, Any]]) -> None:
    core.create_namespaced_pod(ns, {
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "x.invalid/a",
                                                       "ports": ports}]}})
    core.patch_namespaced_pod_status(name, ns, {"status": {
        "phase": "Running", "hostIP": "10.250.0.1", "podIP": ip, "podIPs": [{"ip": ip}]}})


def test_check_with_kubeconfig_reads_pods_and_namespaces(cluster: Cluster, core: Any,
                                                         tmp_path: Path):
    front = make_namespace(core, {"team": "front"})
    back = make_namespace(core, {"team": "back"})
    _pod(core, front, "client", "10.251.0.10", {"app": "client"}, [])
    _pod(core, back, "server", "10.251.0.11", {"app": "server"},
         [{"name": "metrics", "containerPort": 9090}])
    policy = np(back, "server-in", {
        "podSelector": sel(app="server"), "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"namespaceSelector": sel(team="front")}],
                     "ports": [{"port": "metrics"}]}]})
    pol = tmp_path / "pol"
    pol.mkdir()
    (pol / "p.yaml").write_text(yaml.safe_dump(policy))
    records = "".join(json.dumps({"ip": 4, "proto": "tcp", "saddr": "10.251.0.10",
                                  "sport": 1, "daddr": "10.251.0.11", "dport": port}) + "\n"
                      for port in (9090, 80))
    proc = podsight("policy", "check", "--policies", str(pol), "--from", "-", "--kubeconfig",
                    cluster.kubeconfig, "-o", "json", stdin=records)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["src"], r["dst"], r["dport"], r["verdict"]) for r in rows] == [
        (f"p/{front}/client", f"p/{back}/server", 9090, "allowed"),
        (f"p/{front}/client", f"p/{back}/server", 80, "denied")], proc.stderr
    assert proc.returncode == 1 and "the Kubernetes API" in proc.stderr

    # --diff cluster: the cluster has the policy; without it (an empty directory) port 80
    # would be allowed again
    kubectl(cluster, "apply", "-n", back, "-f", "-", stdin=yaml.safe_dump(policy))
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = podsight("policy", "check", "--policies", str(empty), "--from", "-", "--kubeconfig",
                    cluster.kubeconfig, "--diff", "cluster", "-o", "json", stdin=records)
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["dport"], r["before"]["verdict"], r["after"]["verdict"]) for r in rows] == [
        (80, "denied", "allowed")], proc.stderr
    assert proc.returncode == 1


def test_check_against_a_dead_api_server_is_one_line(cluster: Cluster, tmp_path: Path):
    config = cluster.kubeconfig_for(tmp_path / "dead.kubeconfig",
                                    server="https://127.0.0.1:1")
    pol = tmp_path / "pol"
    pol.mkdir()
    proc = podsight("policy", "check", "--policies", str(pol), "--from", "-", "--kubeconfig",
                    config, stdin="")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode in (1, 2) and len(lines) == 1, proc.stderr
    assert "cannot reach the Kubernetes API" in lines[0]


def test_check_with_a_token_rbac_forbids_is_one_line(cluster: Cluster, tmp_path: Path):
    config = cluster.kubeconfig_for(tmp_path / "bad.kubeconfig", token="not-a-token")
    pol = tmp_path / "pol"
    pol.mkdir()
    proc = podsight("policy", "check", "--policies", str(pol), "--from", "-", "--kubeconfig",
                    config, stdin="")
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "401" in lines[0], proc.stderr
    assert os.path.exists(config)


def test_kubectl_get_output_is_what_objects_and_policies_read(cluster: Cluster, core: Any,
                                                             tmp_path: Path):
    """What kubectl itself prints (``get namespaces,pods,services -A -o yaml`` and ``get
    networkpolicies -A -o yaml``), offline, gives the verdicts the live API gives: named
    ports, namespace labels and a Service's target port included."""
    front = make_namespace(core, {"team": "front"})
    back = make_namespace(core, {"team": "back"})
    _pod(core, front, "client", "10.252.0.10", {"app": "client"}, [])
    _pod(core, back, "server", "10.252.0.11", {"app": "server"},
         [{"name": "http", "containerPort": 8080}])
    core.create_namespaced_service(back, {
        "metadata": {"name": "server"},
        "spec": {"selector": {"app": "server"},
                 "ports": [{"port": 80, "targetPort": "http", "protocol": "TCP"}]}})
    svc_ip = core.read_namespaced_service("server", back).spec.cluster_ip
    assert svc_ip
    policy = np(back, "server-in", {
        "podSelector": sel(app="server"), "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"namespaceSelector": sel(team="front")}],
                     "ports": [{"port": "http"}]}]})
    applied = kubectl(cluster, "apply", "-n", back, "-f", "-", stdin=yaml.safe_dump(policy))
    assert applied.returncode == 0, applied.stderr
    records = "".join(json.dumps({"ip": 4, "proto": "tcp", "saddr": "10.252.0.10",
                                  "sport": 1, "daddr": daddr, "dport": port}) + "\n"
                      for daddr, port in (("10.252.0.11", 8080), ("10.252.0.11", 9090),
                                          (svc_ip, 80)))
    objects, policies = tmp_path / "objects.yaml", tmp_path / "policies.yaml"
    for path, what in ((objects, "namespaces,pods,services"), (policies, "networkpolicies")):
        got = kubectl(cluster, "get", what, "-A", "-o", "yaml")
        assert got.returncode == 0, got.stderr
        path.write_text(got.stdout)

    def verdicts(*argv: str) -> list[tuple[str, str, int, str]]:
        proc = podsight("policy", "check", "--from", "-", "-o", "json", *argv, stdin=records)
        assert proc.returncode == 1, proc.stderr
        return [(r["src"], r["dst"], r["dport"], r["verdict"])
                for r in map(json.loads, proc.stdout.splitlines())]

    offline = verdicts("--policies", str(policies), "--objects", str(objects))
    assert offline == [(f"p/{front}/client", f"p/{back}/server", 8080, "allowed"),
                       (f"p/{front}/client", f"p/{back}/server", 9090, "denied"),
                       (f"p/{front}/client", f"s/{back}/server", 80, "allowed")]
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    (live_dir / "p.yaml").write_text(yaml.safe_dump(policy))
    assert verdicts("--policies", str(live_dir), "--kubeconfig", cluster.kubeconfig) == offline
