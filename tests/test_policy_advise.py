"""``podsight advise network-policy`` from recorded connections (no root): what it writes,
the comments that justify each rule, host-network and node peers, DNS, Services, and the
round trip: the policies it writes allow everything it observed and nothing else."""

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
from policy_records import SYN, SYN_ACK, connect, flow, pod_ep, write_json, write_sqlite

from podsight.identity.endpoint import Endpoint

NODE_IP, OTHER_NODE = "10.244.0.1", "10.10.0.2"
WORLD = objects(
    namespace("default", {}), namespace("shop", {"team": "shop"}), namespace("kube-system", {}),
    pod("default", "mypod", 2, {"run": "mypod"}, []),
    {**pod("shop", "web-5d8f-aaaa", 3, {"app": "web", "pod-template-hash": "5d8f"},
           [("http", 8080, "TCP")]),
     "metadata": {"name": "web-5d8f-aaaa", "namespace": "shop",
                  "labels": {"app": "web", "pod-template-hash": "5d8f"},
                  "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5d8f",
                                       "controller": True}]}},
    {**pod("shop", "web-5d8f-bbbb", 4, {"app": "web", "pod-template-hash": "5d8f",
                                        "canary": "yes"}, [("http", 8080, "TCP")]),
     "metadata": {"name": "web-5d8f-bbbb", "namespace": "shop",
                  "labels": {"app": "web", "pod-template-hash": "5d8f", "canary": "yes"},
                  "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5d8f",
                                       "controller": True}]}},
    pod("kube-system", "coredns", 6, {"k8s-app": "kube-dns"},
        [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")]),
    pod("kube-system", "agent", 0, {"app": "agent"}, [], node="node-b", host_ip=OTHER_NODE,
        host_network=True, ip=OTHER_NODE),
    pod("default", "bare", 7, {}, []),
    {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
     "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"},
              "ports": [{"port": 80, "targetPort": "http", "protocol": "TCP"}]}},
    {"apiVersion": "v1", "kind": "Service",
     "metadata": {"name": "kube-dns", "namespace": "kube-system"},
     "spec": {"clusterIP": "10.96.0.53", "selector": {"k8s-app": "kube-dns"},
              "ports": [{"name": "dns", "port": 53, "targetPort": 53, "protocol": "UDP"},
                        {"name": "dns-tcp", "port": 53, "targetPort": 53, "protocol": "TCP"}]}},
)
MY = pod_ep("10.244.0.2", "default", "mypod", {"run": "mypod"})
WEB_A = pod_ep("10.244.0.3", "shop", "web-5d8f-aaaa", {"app": "web", "pod-template-hash": "5d8f"},
               workload=("Deployment", "web"))
WEB_B = pod_ep("10.244.0.4", "shop", "web-5d8f-bbbb",
               {"app": "web", "pod-template-hash": "5d8f", "canary": "yes"},
               workload=("Deployment", "web"))
WEB_SVC = Endpoint.for_service("10.96.0.10", "shop", "web")
DNS_SVC = Endpoint.for_service("10.96.0.53", "kube-system", "kube-dns")


def podsight(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "podsight.cli.main", *argv], input=stdin,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KUBECONFIG": ""})


@pytest.fixture
def world(tmp_path: Path) -> Path:
    path = tmp_path / "objects.yaml"
    path.write_text(yaml.safe_dump(WORLD))
    return path


def seed_records() -> list[Any]:
    return [
        connect(MY, None, "10.244.0.2", 40000, "203.0.113.10", 80),
        connect(MY, None, "10.244.0.2", 40001, "203.0.113.10", 443, at=2_000_000_000),
        connect(MY, None, "10.244.0.2", 40002, "203.0.113.10", 443, at=3_000_000_000),
        connect(MY, WEB_SVC, "10.244.0.2", 40003, "10.96.0.10", 80),
        connect(MY, WEB_A, "10.244.0.2", 40004, "10.244.0.3", 8080),
        connect(WEB_B, WEB_A, "10.244.0.4", 40005, "10.244.0.3", 8080),
        connect(MY, DNS_SVC, "10.244.0.2", 40006, "10.96.0.53", 53),
        connect(MY, None, "10.244.0.2", 40007, "2001:db8::7", 443),
        connect(MY, MY, "10.244.0.2", 40008, "10.244.0.2", 80),  # loopback: nothing to allow
    ]


def advise(*argv: str) -> tuple[list[dict[str, Any]], str, subprocess.CompletedProcess[str]]:
    proc = podsight("advise", "network-policy", *argv)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return docs, proc.stdout, proc


def by_name(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{d['metadata']['namespace']}/{d['metadata']['name']}": d for d in docs}


def test_one_policy_per_workload_with_commented_rules(tmp_path: Path, world: Path):
    src = write_json(tmp_path / "t.json", "tcpconnect", seed_records())
    docs, text, proc = advise("--from", str(src), "--objects", str(world))
    policies = by_name(docs)
    assert set(policies) == {"default/mypod-network", "shop/web-network",
                             "kube-system/coredns-network"}
    web = policies["shop/web-network"]["spec"]
    # generated labels left out; only what both pods share
    assert web["podSelector"] == {"matchLabels": {"app": "web"}}
    assert web["policyTypes"] == ["Ingress", "Egress"]
    my = policies["default/mypod-network"]["spec"]
    assert my["ingress"] == []
    egress = my["egress"]
    # DNS first: to kube-dns in kube-system, UDP and TCP 53
    assert egress[0] == {"to": [{"podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                                 "namespaceSelector": {"matchLabels": {
                                     "kubernetes.io/metadata.name": "kube-system"}}}],
                         "ports": [{"protocol": "TCP", "port": 53},
                                   {"protocol": "UDP", "port": 53}]}
    # the Service: its pods' selector and the target port (by name, resolved per pod)
    # and the same pods seen directly: one rule, both ports
    assert {"to": [{"podSelector": {"matchLabels": {"app": "web"}},
                    "namespaceSelector": {"matchLabels": {
                        "kubernetes.io/metadata.name": "shop"}}}],
            "ports": [{"protocol": "TCP", "port": 8080},
                      {"protocol": "TCP", "port": "http"}]} in egress
    blocks = {r["to"][0]["ipBlock"]["cidr"]: r["ports"] for r in egress if
              "ipBlock" in r["to"][0]}
    assert blocks == {"203.0.113.10/32": [{"protocol": "TCP", "port": 80},
                                          {"protocol": "TCP", "port": 443}],
                      "2001:db8::7/128": [{"protocol": "TCP", "port": 443}]}
    # the web pods' ingress: from mypod and from web itself, on 8080
    froms = [r["from"][0]["podSelector"]["matchLabels"] for r in web["ingress"]]
    assert froms == [{"run": "mypod"}, {"app": "web"}]
    # from mypod: directly on 8080, and through the Service on its target port, by name
    assert [r["ports"] for r in web["ingress"]] == [
        [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": "http"}],
        [{"protocol": "TCP", "port": 8080}]]
    # comments: count, first and last seen, above the rule they justify
    lines = text.splitlines()
    i = lines.index("  - to:", lines.index("  # to r/203.0.113.10:443/TCP: 2 connections, first "
                                           + _time(1) + ", last " + _time(2)) + 1)
    assert lines[i + 2] == "        cidr: 203.0.113.10/32"
    assert "podsight: 3 policies from 9 connections (9 records)" in proc.stderr


def _time(n: int) -> str:
    from policy_records import CLOCK, T0

    at = {1: 2_000_000_000, 2: 3_000_000_000}[n]
    return CLOCK.rfc3339(CLOCK.wall_ns(T0 + at))


def test_round_trip_allows_what_was_observed(tmp_path: Path, world: Path):
    """The advised policies, checked against the same records: nothing denied; and a
    connection that was never observed is denied."""
    src = write_json(tmp_path / "t.json", "tcpconnect", seed_records())
    out = tmp_path / "policies"
    proc = podsight("advise", "network-policy", "--from", str(src), "--objects", str(world),
                    "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "default.mypod-network.yaml", "kube-system.coredns-network.yaml",
        "shop.web-network.yaml"]
    check = podsight("policy", "check", "--policies", str(out), "--from", str(src),
                     "--objects", str(world))
    assert check.returncode == 0, check.stdout + check.stderr
    unseen = write_json(tmp_path / "u.json", "tcpconnect", [
        connect(MY, None, "10.244.0.2", 1, "203.0.113.99", 80),
        connect(MY, None, "10.244.0.2", 1, "203.0.113.10", 8443),
        connect(WEB_A, MY, "10.244.0.3", 1, "10.244.0.2", 80)])
    check = podsight("policy", "check", "--policies", str(out), "--from", str(unseen),
                     "--objects", str(world), "-o", "json")
    assert check.returncode == 1
    assert [json.loads(r)["verdict"] for r in check.stdout.splitlines()] == ["denied"] * 3
    again = podsight("advise", "network-policy", "--from", str(src), "--objects", str(world),
                     "--output-dir", str(out), "--overwrite")
    assert again.returncode == 0 and not list(out.glob(".*"))


def test_host_network_and_node_peers(tmp_path: Path, world: Path):
    agent = Endpoint(kind="pod", addr=OTHER_NODE, namespace="kube-system", name="agent",
                     labels={"app": "agent"})
    node = Endpoint.for_node(NODE_IP, "lab-node")
    records = [
        connect(agent, WEB_A, OTHER_NODE, 1, "10.244.0.3", 8080),  # a host-network pod
        connect(node, WEB_A, NODE_IP, 1, "10.244.0.3", 8080),  # the node itself
        connect(MY, Endpoint.for_node(OTHER_NODE, "node-b"), "10.244.0.2", 1, OTHER_NODE,
                10250),
    ]
    src = write_json(tmp_path / "t.json", "tcpconnect", records)
    docs, text, proc = advise("--from", str(src), "--objects", str(world))
    policies = by_name(docs)
    assert "kube-system/agent-network" not in policies
    assert "kube-system/agent uses the host network" in proc.stderr
    web_in = policies["shop/web-network"]["spec"]["ingress"]
    assert [r["from"] for r in web_in] == [[{"ipBlock": {"cidr": f"{OTHER_NODE}/32"}}],
                                           [{"ipBlock": {"cidr": f"{NODE_IP}/32"}}]]
    assert "# 10.244.0.1 is node lab-node" in text
    assert "# kube-system/agent runs in the host network of node node-b (10.10.0.2)" in text
    my_out = policies["default/mypod-network"]["spec"]["egress"]
    assert my_out == [{"to": [{"ipBlock": {"cidr": f"{OTHER_NODE}/32"}}],
                       "ports": [{"protocol": "TCP", "port": 10250}]}]


def test_flows_udp_sctp_and_aggregation(tmp_path: Path, world: Path):
    records = [
        flow(MY, None, "10.244.0.2", 50000, "198.51.100.7", 53, proto=17),
        flow(None, MY, "198.51.100.7", 53, "10.244.0.2", 50000, proto=17),
        flow(MY, None, "10.244.0.2", 50001, "198.51.100.9", 5000, proto=132),
        flow(MY, WEB_A, "10.244.0.2", 50002, "10.244.0.3", 8080, flags=SYN),
        flow(WEB_A, MY, "10.244.0.3", 8080, "10.244.0.2", 50002, flags=SYN_ACK),
    ]
    src = write_json(tmp_path / "f.json", "flows", records)
    docs, _, _ = advise("--from", str(src), "--objects", str(world), "--aggregate-cidr", "24",
                        "-n", "default")
    (my,) = docs
    assert my["metadata"]["name"] == "mypod-network"
    blocks = [r for r in my["spec"]["egress"] if "ipBlock" in r["to"][0]]
    assert blocks == [{"to": [{"ipBlock": {"cidr": "198.51.100.0/24"}}],
                       "ports": [{"protocol": "SCTP", "port": 5000},
                                 {"protocol": "UDP", "port": 53}]}]


def test_pods_without_labels_are_skipped_with_a_warning(tmp_path: Path, world: Path):
    bare = pod_ep("10.244.0.7", "default", "bare", {})
    src = write_json(tmp_path / "t.json", "tcpconnect",
                     [connect(bare, None, "10.244.0.7", 1, "203.0.113.10", 80)])
    docs, _, proc = advise("--from", str(src), "--objects", str(world))
    assert docs == []
    assert "would select every pod of namespace default; skipped" in proc.stderr


def test_sqlite_needs_the_objects_for_labels(tmp_path: Path, world: Path):
    src = write_sqlite(tmp_path / "t.db", "tcpconnect", seed_records())
    proc = podsight("advise", "network-policy", "--from", str(src))
    assert proc.returncode == 2 and "SQLite captures do not store them" in proc.stderr
    docs, _, _ = advise("--from", str(src), "--objects", str(world))
    assert len(docs) == 3


def test_no_connections_no_policies(tmp_path: Path):
    src = tmp_path / "empty.json"
    src.write_text("")
    proc = podsight("advise", "network-policy", "--from", str(src))
    assert proc.returncode == 0 and proc.stdout == ""
    assert "0 policies from 0 connections" in proc.stderr


def test_the_yaml_layout_round_trips_awkward_strings():
    """Strings YAML would read as something else (yes, on, null, 0x1A, 1e5, 12:30, ...) are
    quoted; the rest stay plain; every one reads back as itself."""
    from podsight.analysis.policy.render import emit

    values = ["yes", "no", "on", "Off", "null", "~", "true", "1", "0x1A", "1e5", "1_000",
              ".inf", "-", "a b", "a:b", "#x", "x#", "'q'", '"d"', "é", "2001:db8::1/128",
              "10.0.0.1/32", "", ":", "- x", "a\nb", "0777", "12:30", "Yes", "y", "=", "<<",
              "kubernetes.io/metadata.name"]
    doc = {"m": {v: v for v in values}, "l": values, "n": 5, "e": {}, "el": []}
    text = "\n".join(emit(doc)) + "\n"
    assert yaml.safe_load(text) == doc
    assert "  kubernetes.io/metadata.name: kubernetes.io/metadata.name" in text
    assert '  "yes": "yes"' in text


def test_every_rendered_policy_reads_back_as_its_body(tmp_path: Path, world: Path):
    """The renderer lays YAML out by hand (comments above rules); what it writes must read
    back as exactly the policy it was given."""
    from podsight.analysis.policy import Advisor, Reader, render
    from podsight.analysis.policy.documents import documents
    from podsight.analysis.policy.world import from_documents

    src = write_json(tmp_path / "t.json", "tcpconnect", seed_records())
    objects = from_documents(documents(str(world), "objects"), "objects")
    advisor = Advisor(objects, subjects=lambda pod: True, aggregate4=32, aggregate6=128)
    advisor.add_all(Reader([str(src)]))
    advices = advisor.policies()
    assert len(advices) == 3
    for advice in advices:
        assert yaml.safe_load(render.document(advice)) == advice.body()
