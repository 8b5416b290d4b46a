"""The NetworkPolicy semantics table: each case a policy set, a connection and the verdict
the Kubernetes documentation gives for it (concepts/services-networking/network-policies,
and the API reference for defaulting). Shared by the checker's tests (no root) and the
lab's, which enforce the same policies with nftables and probe the same connection.

Two worlds: ``LAB`` (pods the lab can build: labels, IPv4 and IPv6, container ports) and
``CLUSTER`` (what a netns lab cannot be: host-network pods, a second node, Services).
A connection end is a pod (``namespace/name``), ``node`` (the pods' own node), or an
address outside the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NODE_IP = "10.244.0.1"  # the lab node's address on the pod bridge (pods' hostIP)
NODE_IP6 = "fd00:244::1"
OTHER_NODE_IP = "10.10.0.2"
EXTERNAL = "203.0.113.10"  # the lab's external web server (TCP 80 and 443)


def pod(ns: str, name: str, index: int, labels: dict[str, str], ports: list[tuple[str, int, str]],
        *, node: str = "lab-node", host_ip: str = NODE_IP, host_network: bool = False,
        ip: str | None = None) -> dict[str, Any]:
    ips = [ip] if ip else [f"10.244.0.{index}", f"fd00:244::{index:x}"]
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "hostNetwork": host_network,
                 "containers": [{"name": "main", "image": "podsight-lab/server",
                                 "ports": [{"name": n, "containerPort": p, "protocol": proto}
                                           if n else {"containerPort": p, "protocol": proto}
                                           for n, p, proto in ports]}]},
        "status": {"phase": "Running", "hostIP": host_ip, "podIP": ips[0],
                   "podIPs": [{"ip": a} for a in ips]},
    }


def namespace(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels}}


def objects(*items: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": list(items)}


HTTP = ("http", 80, "TCP")
LAB = objects(
    namespace("default", {"team": "a"}),
    namespace("prod", {"env": "prod"}),
    namespace("dev", {"env": "dev"}),
    namespace("other", {}),
    pod("default", "client", 10, {"app": "client", "role": "frontend"}, [HTTP]),
    pod("default", "server", 11, {"app": "server"},
        [HTTP, ("metrics", 9090, "TCP"), ("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"),
         ("alt", 8080, "TCP")]),
    pod("default", "web", 12, {"app": "web", "version": "v1"}, [("http", 8080, "TCP")]),
    pod("prod", "db", 13, {"app": "db", "tier": "backend"}, [("db", 5432, "TCP")]),
    pod("dev", "tester", 14, {"app": "tester"}, [HTTP]),
    pod("dev", "client", 15, {"app": "client"}, [HTTP]),
    pod("other", "nolabel", 16, {}, [HTTP]),
)

CLUSTER = objects(
    namespace("default", {"team": "a"}),
    namespace("kube-system", {}),
    pod("default", "client", 10, {"app": "client"}, [HTTP]),
    pod("default", "server", 11, {"app": "server"}, [HTTP]),
    pod("default", "web-1", 12, {"app": "web"}, [("http", 8080, "TCP")]),
    pod("default", "web-2", 13, {"app": "web"}, [("http", 8080, "TCP")]),
    pod("kube-system", "agent-here", 0, {"app": "agent"}, [("api", 9100, "TCP")],
        host_network=True, ip=NODE_IP),
    pod("kube-system", "agent-there", 0, {"app": "agent"}, [("api", 9100, "TCP")],
        node="node-b", host_ip=OTHER_NODE_IP, host_network=True, ip=OTHER_NODE_IP),
    {"apiVersion": "v1", "kind": "Service",
     "metadata": {"name": "web", "namespace": "default"},
     "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"},
              "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}},
    {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b"},
     "status": {"addresses": [{"type": "InternalIP", "address": OTHER_NODE_IP}]}},
)


def np(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def sel(**labels: str) -> dict[str, Any]:
    return {"matchLabels": dict(labels)}


def nsl(name: str) -> dict[str, Any]:
    return {"matchLabels": {"kubernetes.io/metadata.name": name}}


DENY_INGRESS = np("default", "deny-ingress", {"podSelector": {}, "policyTypes": ["Ingress"]})
DENY_EGRESS = np("default", "deny-egress", {"podSelector": {}, "policyTypes": ["Egress"]})
DENY_ALL = np("default", "deny-all", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})


def to_server(*rules: dict[str, Any], name: str = "server-in") -> dict[str, Any]:
    return np("default", name, {"podSelector": sel(app="server"), "policyTypes": ["Ingress"],
                                "ingress": list(rules)})


def from_client(*rules: dict[str, Any], name: str = "client-out") -> dict[str, Any]:
    return np("default", name, {"podSelector": sel(app="client"), "policyTypes": ["Egress"],
                                "egress": list(rules)})


@dataclass(frozen=True)
class Case:
    id: str
    doc: str  # the rule of the documentation this case checks
    policies: list[dict[str, Any]]
    src: str
    dst: str
    port: int
    expected: str  # allowed | denied
    proto: str = "tcp"
    family: int = 4
    world: str = "LAB"
    reason: str = ""  # a word the reason must contain
    lab: bool = True  # the lab can enforce and probe it
    allowed_by: tuple[str, ...] | None = field(default=None)


A, D = "allowed", "denied"
CS, SV = "default/client", "default/server"

CASES: list[Case] = [
    Case("no-policy", "pods are non-isolated by default: they accept any traffic", [],
         CS, SV, 80, A, reason="not isolated"),
    Case("deny-ingress", "a policy selecting a pod isolates it for ingress",
         [DENY_INGRESS], CS, SV, 80, D),
    Case("deny-ingress-other-ns", "policies only select pods in their own namespace",
         [DENY_INGRESS], SV, "prod/db", 5432, A),
    Case("ingress-empty-list", "no policyTypes: Ingress is always set; ingress: [] allows "
         "nothing", [np("default", "p", {"podSelector": {}, "ingress": []})], CS, SV, 80, D),
    Case("allow-all-ingress", "an empty rule {} allows everything; policies are additive",
         [DENY_INGRESS, np("default", "all", {"podSelector": {}, "ingress": [{}]})],
         CS, SV, 80, A, allowed_by=("default/all",)),
    Case("from-empty-list", "a rule's from: [] (empty) matches every source",
         [to_server({"from": [], "ports": [{"port": 80}]})], "dev/tester", SV, 80, A),
    Case("ports-empty-list", "a rule's ports: [] (empty) matches every port",
         [to_server({"from": [{"podSelector": sel(app="client")}], "ports": []})],
         CS, SV, 9090, A),
    Case("pod-selector-own-ns", "podSelector selects pods in the policy's namespace",
         [to_server({"from": [{"podSelector": sel(app="client")}]})], CS, SV, 80, A),
    Case("pod-selector-not-other-ns", "a podSelector alone never selects pods of another "
         "namespace", [to_server({"from": [{"podSelector": sel(app="client")}]})],
         "dev/client", SV, 80, D),
    Case("ns-selector-alone", "namespaceSelector alone selects every pod of the namespaces",
         [to_server({"from": [{"namespaceSelector": sel(env="dev")}]})],
         "dev/tester", SV, 80, A),
    Case("ns-and-pod-selector-and", "namespaceSelector and podSelector in one peer: both must "
         "match", [to_server({"from": [{"namespaceSelector": sel(env="dev"),
                                        "podSelector": sel(app="client")}]})],
         "dev/tester", SV, 80, D),
    Case("ns-and-pod-selector-and-match", "namespaceSelector and podSelector in one peer match "
         "pods in those namespaces", [to_server({"from": [{"namespaceSelector": sel(env="dev"),
                                                          "podSelector": sel(app="client")}]})],
         "dev/client", SV, 80, A),
    Case("ns-or-pod-selector-ns", "two peers are ORed: the namespaceSelector one",
         [to_server({"from": [{"namespaceSelector": sel(env="dev")},
                              {"podSelector": sel(app="client")}]})], "dev/tester", SV, 80, A),
    Case("ns-or-pod-selector-pod", "two peers are ORed: the podSelector one (own namespace)",
         [to_server({"from": [{"namespaceSelector": sel(env="dev")},
                              {"podSelector": sel(app="client")}]})], CS, SV, 80, A),
    Case("ns-or-pod-selector-neither", "two peers are ORed: a pod matching neither is denied",
         [to_server({"from": [{"namespaceSelector": sel(env="dev")},
                              {"podSelector": sel(app="client")}]})],
         "other/nolabel", SV, 80, D),
    Case("ns-selector-empty", "namespaceSelector {} selects all namespaces",
         [to_server({"from": [{"namespaceSelector": {}}]})], "other/nolabel", SV, 80, A),
    Case("ns-selector-by-name", "every namespace has the label kubernetes.io/metadata.name",
         [to_server({"from": [{"namespaceSelector": nsl("prod")}]})], "prod/db", SV, 80, A),
    Case("deny-egress", "a policy with Egress in policyTypes isolates for egress",
         [DENY_EGRESS], CS, "prod/db", 5432, D),
    Case("egress-empty-no-types", "policyTypes defaults to Ingress, plus Egress only if the "
         "policy has egress rules: egress: [] does not isolate for egress",
         [np("default", "p", {"podSelector": sel(app="client"), "egress": []})],
         CS, "prod/db", 5432, A),
    Case("egress-rule-no-types-egress", "egress rules without policyTypes: Ingress and Egress; "
         "egress [{}] allows all", [np("default", "p", {"podSelector": sel(app="client"),
                                                      "egress": [{}]})],
         CS, "prod/db", 5432, A),
    Case("egress-rule-no-types-ingress", "egress rules without policyTypes still isolate for "
         "ingress", [np("default", "p", {"podSelector": sel(app="client"), "egress": [{}]})],
         "prod/db", CS, 80, D),
    Case("union", "several policies select a pod: the union of their rules applies",
         [to_server({"from": [{"podSelector": sel(app="client")}], "ports": [{"port": 80}]},
                    name="a"),
          to_server({"from": [{"podSelector": sel(app="client")}], "ports": [{"port": 9090}]},
                    name="b")], CS, SV, 9090, A, allowed_by=("default/b",)),
    Case("both-ends-egress-ok-ingress-no", "egress from the client and ingress to the server "
         "both apply", [from_client({"to": [{"podSelector": sel(app="server")}]}),
                        DENY_INGRESS], CS, SV, 80, D),
    Case("both-ends-allowed", "allowed when both the client's egress and the server's ingress "
         "allow it", [from_client({"to": [{"podSelector": sel(app="server")}]}),
                      to_server({"from": [{"podSelector": sel(app="client")}]})], CS, SV, 80, A),
    Case("egress-ipblock", "ipBlock selects CIDR ranges as egress destinations",
         [from_client({"to": [{"ipBlock": {"cidr": f"{EXTERNAL}/32"}}], "ports": [{"port": 80}]})],
         CS, EXTERNAL, 80, A),
    Case("egress-ipblock-port", "a rule allows only its ports",
         [from_client({"to": [{"ipBlock": {"cidr": f"{EXTERNAL}/32"}}], "ports": [{"port": 80}]})],
         CS, EXTERNAL, 443, D),
    Case("egress-ipblock-except", "ipBlock except: addresses in except are not selected",
         [from_client({"to": [{"ipBlock": {"cidr": "203.0.113.0/24",
                                           "except": [f"{EXTERNAL}/32"]}}]})],
         CS, EXTERNAL, 80, D),
    Case("egress-ipblock-pod-ip", "ipBlock also matches pod IPs",
         [from_client({"to": [{"ipBlock": {"cidr": "10.244.0.0/24"}}]})], CS, SV, 80, A),
    Case("ingress-ipblock", "ipBlock selects ingress sources",
         [to_server({"from": [{"ipBlock": {"cidr": "10.244.0.10/32"}}]})], CS, SV, 80, A),
    Case("ingress-ipblock-except", "ingress ipBlock except excludes a source",
         [to_server({"from": [{"ipBlock": {"cidr": "10.244.0.0/24",
                                           "except": ["10.244.0.8/29"]}}]})], CS, SV, 80, D),
    Case("ipv6-ipblock", "an IPv6 ipBlock selects IPv6 sources",
         [to_server({"from": [{"ipBlock": {"cidr": "fd00:244::/64"}}]})], CS, SV, 80, A,
         family=6),
    Case("ipv6-not-in-ipv4-block", "an IPv4 ipBlock does not select an IPv6 connection",
         [to_server({"from": [{"ipBlock": {"cidr": "10.244.0.0/16"}}]})], CS, SV, 80, D,
         family=6),
    Case("ipv6-pod-selector", "selectors match pods whatever the IP family",
         [to_server({"from": [{"podSelector": sel(app="client")}]})], CS, SV, 9090, A,
         family=6),
    Case("ipv6-egress-deny", "egress isolation holds for IPv6",
         [DENY_EGRESS], CS, SV, 80, D, family=6),
    Case("end-port-inside", "port with endPort allows the range",
         [to_server({"ports": [{"port": 8000, "endPort": 9000}]})], CS, SV, 8080, A),
    Case("end-port-outside", "ports beyond endPort are not allowed",
         [to_server({"ports": [{"port": 8000, "endPort": 9000}]})], CS, SV, 9090, D),
    Case("named-port", "a named port is the destination pod's container port of that name",
         [to_server({"ports": [{"port": "metrics"}]})], CS, SV, 9090, A),
    Case("named-port-other-number", "a named port allows only the named port",
         [to_server({"ports": [{"port": "metrics"}]})], CS, SV, 80, D),
    Case("named-port-egress-per-destination", "in egress rules a named port is resolved "
         "against each destination pod", [from_client({"ports": [{"port": "http"}]})],
         CS, "default/web", 8080, A),
    Case("named-port-egress-not-elsewhere", "a name a destination pod does not have allows "
         "nothing there", [from_client({"ports": [{"port": "http"}]})],
         CS, "prod/db", 5432, D),
    Case("named-port-protocol-differs", "a named port matches a container port of that name "
         "and protocol: dns is UDP, so TCP dns allows nothing",
         [to_server({"ports": [{"port": "dns", "protocol": "TCP"}]})], CS, SV, 53, D),
    Case("named-port-protocol-differs-udp", "... and UDP/53 is not TCP",
         [to_server({"ports": [{"port": "dns", "protocol": "TCP"}]})], CS, SV, 53, D,
         proto="udp"),
    Case("named-port-udp", "a UDP named port allows UDP",
         [to_server({"ports": [{"port": "dns", "protocol": "UDP"}]})], CS, SV, 53, A,
         proto="udp"),
    Case("udp-only-isolates-tcp", "a policy allowing only UDP still isolates the pod for TCP",
         [to_server({"ports": [{"protocol": "UDP", "port": 53}]})], CS, SV, 80, D),
    Case("sctp-only-isolates-tcp", "a policy allowing only SCTP still isolates the pod for TCP",
         [to_server({"ports": [{"protocol": "SCTP"}]})], CS, SV, 80, D),
    Case("sctp-allowed", "SCTP is a NetworkPolicy protocol",
         [to_server({"ports": [{"protocol": "SCTP", "port": 9090}]})], CS, SV, 9090, A,
         proto="sctp", lab=False),
    Case("protocol-default-tcp", "a port without protocol is TCP: UDP is not allowed",
         [to_server({"ports": [{"port": 80}]})], CS, SV, 80, D, proto="udp"),
    Case("udp-allowed", "a UDP port rule allows UDP",
         [to_server({"ports": [{"port": 80, "protocol": "UDP"}]})], CS, SV, 80, A, proto="udp"),
    Case("exists-missing-key", "Exists does not match a pod without the key",
         [to_server({"from": [{"podSelector": {"matchExpressions": [
             {"key": "tier", "operator": "Exists"}]}}]})], CS, SV, 80, D),
    Case("does-not-exist-missing-key", "DoesNotExist matches a pod without the key",
         [to_server({"from": [{"podSelector": {"matchExpressions": [
             {"key": "tier", "operator": "DoesNotExist"}]}}]})], CS, SV, 80, A),
    Case("notin-missing-key", "NotIn matches a pod without the key",
         [to_server({"from": [{"podSelector": {"matchExpressions": [
             {"key": "tier", "operator": "NotIn", "values": ["backend"]}]}}]})], CS, SV, 80, A),
    Case("in-missing-key", "In does not match a pod without the key",
         [to_server({"from": [{"podSelector": {"matchExpressions": [
             {"key": "tier", "operator": "In", "values": ["backend"]}]}}]})], CS, SV, 80, D),
    Case("notin-selects-subject", "a policy whose podSelector is NotIn on a missing key selects "
         "(and isolates) the pod", [np("default", "p", {"podSelector": {"matchExpressions": [
             {"key": "tier", "operator": "NotIn", "values": ["x"]}]},
             "policyTypes": ["Ingress"]})], CS, SV, 80, D),
    Case("loopback", "a pod cannot block access to itself", [DENY_ALL], SV, SV, 80, A,
         reason="loopback"),
    Case("node-ingress", "traffic from the node where a pod runs is always allowed",
         [DENY_ALL], "node", SV, 80, A),
    Case("node-egress", "traffic to the node where a pod runs is always allowed",
         [DENY_ALL], SV, "node", 8081, A),
    Case("node-egress-not-ipblock", "the own-node exception needs no ipBlock",
         [from_client({"to": [{"ipBlock": {"cidr": f"{EXTERNAL}/32"}}]})], CS, "node", 8081, A),
    # -- what a netns lab cannot build: host-network pods, another node, Services ------------
    Case("host-network-same-node", "a host-network pod's traffic is its node's: from the pod's "
         "own node it is always allowed", [DENY_INGRESS], "kube-system/agent-here", SV, 80, A,
         world="CLUSTER", lab=False),
    Case("host-network-other-node", "a host-network pod on another node is its node's address: "
         "denied by a default deny", [DENY_INGRESS], "kube-system/agent-there", SV, 80, D,
         world="CLUSTER", lab=False),
    Case("host-network-ipblock", "... and allowed by an ipBlock of that node's address",
         [to_server({"from": [{"ipBlock": {"cidr": f"{OTHER_NODE_IP}/32"}}]})],
         "kube-system/agent-there", SV, 80, A, world="CLUSTER", lab=False),
    Case("host-network-not-selected", "selectors never match host-network pods",
         [to_server({"from": [{"namespaceSelector": {}, "podSelector": {}}]})],
         "kube-system/agent-there", SV, 80, D, world="CLUSTER", lab=False),
    Case("host-network-not-isolated", "NetworkPolicy does not apply to host-network pods",
         [np("kube-system", "deny", {"podSelector": {}, "policyTypes": ["Ingress"]})],
         CS, "kube-system/agent-there", 9100, A, world="CLUSTER", lab=False),
    Case("service-target-port", "a connection to a Service is judged at its backends on the "
         "target port", [np("default", "web-in", {"podSelector": sel(app="web"),
                                                  "ingress": [{"ports": [{"port": 8080}]}]})],
         CS, "10.96.0.10", 80, A, world="CLUSTER", lab=False),
    Case("service-port-is-not-target", "... not on the Service port",
         [np("default", "web-in", {"podSelector": sel(app="web"),
                                   "ingress": [{"ports": [{"port": 80}]}]})],
         CS, "10.96.0.10", 80, D, world="CLUSTER", lab=False),
]

WORLDS = {"LAB": LAB, "CLUSTER": CLUSTER}


def address(world: dict[str, Any], end: str, family: int) -> str:
    """The address of a case's end (a pod ref, ``node``, or an address)."""
    if end == "node":
        return NODE_IP if family == 4 else NODE_IP6
    if "/" not in end:
        return end
    ns, name = end.split("/")
    for item in world["items"]:
        md = item["metadata"]
        if item["kind"] == "Pod" and md["namespace"] == ns and md["name"] == name:
            ips = [p["ip"] for p in item["status"]["podIPs"]]
            return next(ip for ip in ips if (":" in ip) == (family == 6))
    raise KeyError(end)
