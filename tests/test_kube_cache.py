"""KubeCache semantics, driven through the informers' own event paths with API-shaped JSON.

These pin down orderings a live apiserver will not produce on demand (a new
pod's ADDED before the old pod's DELETED, a relist after missed deletes).
The same behaviours are exercised against a real apiserver in
test_kube_live.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from podsight.identity.kube import KubeCache
from podsight.identity.kube.api import Gone, KubeAPIError


def pod(name: str, ip: str | None, *, ns: str = "default", node: str = "n1",
        uid: str | None = None, created: str = "2024-01-01T00:00:00Z", phase: str = "Running",
        labels: dict[str, str] | None = None, owner: tuple[str, str] | None = None,
        host_network: bool = False, deleting: bool = False, rv: str = "10",
        containers: tuple[str, ...] = ("app",)) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": ns, "uid": uid or f"uid-{ns}-{name}",
                          "resourceVersion": rv, "creationTimestamp": created,
                          "labels": labels or {}}
    if owner:
        md["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                  "uid": "x", "controller": True}]
    if deleting:
        md["deletionTimestamp"] = "2024-01-01T00:10:00Z"
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status.update(podIP=ip, podIPs=[{"ip": ip}])
    return {"kind": "Pod", "apiVersion": "v1", "metadata": md,
            "spec": {"nodeName": node, "hostNetwork": host_network,
                     "containers": [{"name": c, "image": "i"} for c in containers]},
            "status": status}


def meta_obj(name: str, ns: str = "default", owner: tuple[str, str] | None = None,
             rv: str = "10") -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": ns, "uid": f"uid-{name}",
                          "resourceVersion": rv}
    if owner:
        md["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                  "uid": "y", "controller": True}]
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": md}


def listing(items: list[dict[str, Any]], rv: str = "100") -> bytes:
    return json.dumps({"kind": "List", "metadata": {"resourceVersion": rv},
                       "items": items}).encode()


def event(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode()


@pytest.fixture
def cache() -> KubeCache:
    c = KubeCache()
    for inf in c.informers.values():
        inf.apply_list_body(listing([]))
    return c


def test_list_then_lookups(cache: KubeCache) -> None:
    pods = cache.informers["pods"]
    pods.apply_list_body(listing([pod("a", "10.0.0.1", labels={"app": "x"},
                                      containers=("app", "sidecar")), pod("b", "10.0.0.2")]))
    a = cache.pod_by_ip("10.0.0.1")
    assert a is not None
    assert (a.namespace, a.name, a.ips, a.node) == ("default", "a", ("10.0.0.1",), "n1")
    assert a.labels == {"app": "x"} and a.containers == ("app", "sidecar")
    assert a.netns == 0
    assert cache.pod_by_ip("10.0.0.9") is None
    assert sorted(p.name for p in cache.pods()) == ["a", "b"]
    assert pods.resource_version == "100"


def test_new_pod_added_before_old_pod_deleted_wins(cache: KubeCache) -> None:
    pods = cache.informers["pods"]
    pods.apply_list_body(listing([pod("a", "10.0.0.5", created="2024-01-01T00:00:00Z")]))
    pods.apply_watch_line(event("ADDED", pod("b", "10.0.0.5", created="2024-01-01T00:05:00Z")))
    assert cache.pod_by_ip("10.0.0.5").name == "b"  # type: ignore[union-attr]
    pods.apply_watch_line(event("DELETED", pod("a", "10.0.0.5")))
    assert cache.pod_by_ip("10.0.0.5").name == "b"  # type: ignore[union-attr]
    assert cache.stats()["contested_pod_ips"] == 0


def test_ip_reuse_in_order(cache: KubeCache) -> None:
    pods = cache.informers["pods"]
    pods.apply_watch_line(event("ADDED", pod("a", "10.0.0.6")))
    pods.apply_watch_line(event("DELETED", pod("a", "10.0.0.6")))
    assert cache.pod_by_ip("10.0.0.6") is None
    pods.apply_watch_line(event("ADDED", pod("b", "10.0.0.6", created="2024-01-01T00:00:01Z")))
    assert cache.pod_by_ip("10.0.0.6").name == "b"  # type: ignore[union-attr]


def test_finished_or_deleting_pod_loses_its_ip_to_a_live_one(cache: KubeCache) -> None:
    pods = cache.informers["pods"]
    # a Job pod that finished keeps status.podIP; the IP is back in the pool
    pods.apply_watch_line(event("ADDED", pod("new", "10.0.0.7", created="2024-01-01T00:00:00Z")))
    pods.apply_watch_line(event("ADDED", pod("done", "10.0.0.7", phase="Succeeded",
                                             created="2024-01-02T00:00:00Z")))
    assert cache.pod_by_ip("10.0.0.7").name == "new"  # type: ignore[union-attr]
    pods.apply_watch_line(event("ADDED", pod("going", "10.0.0.8", deleting=True,
                                             created="2024-01-03T00:00:00Z")))
    pods.apply_watch_line(event("ADDED", pod("coming", "10.0.0.8",
                                             created="2024-01-01T00:00:00Z")))
    assert cache.pod_by_ip("10.0.0.8").name == "coming"  # type: ignore[union-attr]
    # alone, a finished pod still names its IP (better than a raw address)
    pods.apply_watch_line(event("DELETED", pod("new", "10.0.0.7")))
    assert cache.pod_by_ip("10.0.0.7").name == "done"  # type: ignore[union-attr]


def test_relist_drops_vanished_pods_and_hands_over_ips(cache: KubeCache) -> None:
    pods = cache.informers["pods"]
    pods.apply_list_body(listing([pod("a", "10.0.1.1"), pod("b", "10.0.1.2")]))
    # while disconnected: a deleted, c took its IP, b's IP changed
    pods.apply_list_body(listing([pod("b", "10.0.1.3"), pod("c", "10.0.1.1")], rv="200"))
    assert cache.pod_by_ip("10.0.1.1").name == "c"  # type: ignore[union-attr]
    assert cache.pod_by_ip("10.0.1.2") is None
    assert cache.pod_by_ip("10.0.1.3").name == "b"  # type: ignore[union-attr]
    assert cache.pod("default", "a") is None
    assert sorted(p.name for p in cache.pods()) == ["b", "c"]


def test_recreated_pod_same_name_new_uid(cache: KubeCache) -> None:
    pods = cache.informers["pods"]
    pods.apply_list_body(listing([pod("s-0", "10.0.2.1", uid="u1")]))
    pods.apply_list_body(listing([pod("s-0", "10.0.2.2", uid="u2")]))
    assert cache.pod_by_ip("10.0.2.1") is None
    assert cache.pod_by_ip("10.0.2.2").name == "s-0"  # type: ignore[union-attr]


def test_host_network_pods_are_found_by_node_not_ip(cache: KubeCache) -> None:
    pods = cache.informers["pods"]
    cache.informers["nodes"].apply_list_body(listing([{
        "metadata": {"name": "n1", "uid": "n1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"},
                                 {"type": "Hostname", "address": "n1"}]}}]))
    pods.apply_list_body(listing([pod("kube-proxy-x", "192.168.1.10", host_network=True),
                                  pod("web", "10.0.3.1")]))
    assert cache.pod_by_ip("192.168.1.10") is None
    assert cache.node_by_ip("192.168.1.10").name == "n1"  # type: ignore[union-attr]
    assert {p.name for p in cache.pods_on_node("n1", host_network=True)} == {"kube-proxy-x"}
    assert {p.name for p in cache.pods_on_node("n1")} == {"kube-proxy-x", "web"}
    assert cache.node_by_ip("n1") is None


def test_modify_moves_ip_and_status_heartbeat_is_a_no_op(cache: KubeCache) -> None:
    pods = cache.informers["pods"]
    pods.apply_watch_line(event("ADDED", pod("a", None)))
    assert cache.pod_by_ip("10.0.4.1") is None
    gen = cache.generation
    pods.apply_watch_line(event("MODIFIED", pod("a", "10.0.4.1")))
    assert cache.pod_by_ip("10.0.4.1").name == "a"  # type: ignore[union-attr]
    assert cache.generation > gen
    info = cache.pod_by_ip("10.0.4.1")
    gen = cache.generation
    pods.apply_watch_line(event("MODIFIED", pod("a", "10.0.4.1", rv="11")))
    assert cache.generation == gen and cache.pod_by_ip("10.0.4.1") is info
    assert pods.resource_version == "11"


def test_owner_chain_deployment_and_cronjob(cache: KubeCache) -> None:
    pods = cache.informers["pods"]
    rs, jobs = cache.informers["replicasets"], cache.informers["jobs"]
    # pods first, owners later: pods are re-resolved when their owner arrives
    pods.apply_list_body(listing([
        pod("web-7d4-abc", "10.0.5.1", owner=("ReplicaSet", "web-7d4"),
            labels={"pod-template-hash": "7d4"}),
        pod("solo-1", "10.0.5.2", owner=("ReplicaSet", "solo")),
        pod("backup-1-x", "10.0.5.3", owner=("Job", "backup-1")),
        pod("once-x", "10.0.5.4", owner=("Job", "once")),
        pod("db-0", "10.0.5.5", owner=("StatefulSet", "db")),
        pod("agent-x", "10.0.5.6", owner=("DaemonSet", "agent")),
        pod("bare", "10.0.5.7"),
    ]))
    w = {p.name: (p.workload_kind, p.workload_name) for p in cache.pods()}
    assert w["web-7d4-abc"] == ("Deployment", "web")  # from pod-template-hash until RS known
    assert w["backup-1-x"] == ("Job", "backup-1")
    rs.apply_list_body(listing([meta_obj("web-7d4", owner=("Deployment", "web")),
                                meta_obj("solo")]))
    jobs.apply_list_body(listing([meta_obj("backup-1", owner=("CronJob", "backup")),
                                  meta_obj("once")]))
    w = {p.name: (p.workload_kind, p.workload_name) for p in cache.pods()}
    assert w == {
        "web-7d4-abc": ("Deployment", "web"), "solo-1": ("ReplicaSet", "solo"),
        "backup-1-x": ("CronJob", "backup"), "once-x": ("Job", "once"),
        "db-0": ("StatefulSet", "db"), "agent-x": ("DaemonSet", "agent"), "bare": ("", ""),
    }
    assert cache.pod_by_ip("10.0.5.3").workload_kind == "CronJob"  # type: ignore[union-attr]
    # an owner adopted later (kubectl create deployment adopting an orphan RS)
    rs.apply_watch_line(event("MODIFIED", meta_obj("solo", owner=("Deployment", "solo-dep"))))
    assert cache.pod_by_ip("10.0.5.2").workload_name == "solo-dep"  # type: ignore[union-attr]


def test_services_cluster_ips(cache: KubeCache) -> None:
    svcs = cache.informers["services"]
    svcs.apply_list_body(listing([
        {"metadata": {"name": "web", "namespace": "shop", "uid": "s1"},
         "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.10",
                  "clusterIPs": ["10.96.0.10", "fd00::a"], "selector": {"app": "web"},
                  "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                             "protocol": "TCP"}]}},
        {"metadata": {"name": "headless", "namespace": "shop", "uid": "s2"},
         "spec": {"clusterIP": "None", "clusterIPs": ["None"], "selector": {"app": "db"}}},
        {"metadata": {"name": "ext", "namespace": "shop", "uid": "s3"},
         "spec": {"type": "ExternalName", "externalName": "example.org"}},
    ]))
    web = cache.service_by_ip("10.96.0.10")
    assert web is not None and (web.namespace, web.name) == ("shop", "web")
    assert cache.service_by_ip("fd00::a") is web
    assert web.selector == {"app": "web"}
    assert [(p.name, p.port, p.target_port, p.protocol) for p in web.ports] == [
        ("http", 80, "8080", "TCP")]
    assert cache.service_by_ip("None") is None
    assert len(cache.services()) == 3
    svcs.apply_watch_line(event("DELETED", {"metadata": {"name": "web", "namespace": "shop"}}))
    assert cache.service_by_ip("10.96.0.10") is None


def test_ipv6_addresses_are_normalised(cache: KubeCache) -> None:
    cache.informers["pods"].apply_watch_line(event("ADDED", pod("v6", "fd00:0:0::0001")))
    assert cache.pod_by_ip("fd00::1").name == "v6"  # type: ignore[union-attr]


def test_bookmark_and_410_error_event(cache: KubeCache) -> None:
    pods = cache.informers["pods"]
    pods.apply_watch_line(json.dumps({"type": "BOOKMARK", "object": {
        "kind": "Pod", "metadata": {"resourceVersion": "555"}}}))
    assert pods.resource_version == "555"
    with pytest.raises(Gone):
        pods.apply_watch_line(json.dumps({"type": "ERROR", "object": {
            "kind": "Status", "code": 410, "reason": "Expired",
            "message": "too old resource version: 5 (189)"}}))
    with pytest.raises(KubeAPIError):
        pods.apply_watch_line(json.dumps({"type": "ERROR", "object": {
            "kind": "Status", "code": 500, "message": "boom"}}))


def test_namespaces_labels(cache: KubeCache) -> None:
    ns = cache.informers["namespaces"]
    ns.apply_list_body(listing([{"metadata": {"name": "shop", "labels": {"team": "a"}}}]))
    assert cache.namespace_labels("shop") == {"team": "a"}
    ns.apply_watch_line(event("DELETED", {"metadata": {"name": "shop"}}))
    assert cache.namespace_labels("shop") is None


def test_label_sets_are_shared_and_compacted(cache: KubeCache) -> None:
    c = cache
    pods = c.informers["pods"]
    pods.apply_list_body(listing([pod(f"p{i}", f"10.1.{i // 256}.{i % 256}",
                                      labels={"app": "x", "tier": "web"}) for i in range(100)]))
    infos = c.pods()
    assert all(p.labels is infos[0].labels for p in infos)
    # churn of unique label sets (Job pods carry controller-uid) must not grow forever
    for i in range(5000):
        pods.apply_watch_line(event("ADDED", pod("job", "10.2.0.1", uid=f"u{i}",
                                                 labels={"controller-uid": f"u{i}"})))
    assert c.stats()["label_sets"] < 2 * 101 + 1024 + 2
