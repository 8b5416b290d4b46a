"""KubeCache against a real kube-apiserver 1.20 + etcd: lists, watches, restarts, compaction.

The official client writes objects (the oracle); the cache under test reads
them through its own informers. Faults are real: the apiserver process is
restarted, etcd is compacted, and a TCP proxy cuts the cache's connections.
"""

# ruff: noqa: F401, F811  (pytest fixtures are imported, then named as parameters)

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from k8s.fixtures import (
    Cluster,
    FaultProxy,
    api_client,
    core,  # fixture
    delete_pod,
    eventually,
    fresh_ip,
    kube,  # fixture
    kube_etcd_watch,  # fixture
    make_namespace,
    make_pod,
    namespace,  # fixture
    owner_ref,
    set_pod_ip,
)
from test_kube_config import closes_without_hanging

from podsight.identity.kube import KubeCache
from podsight.identity.kube.cache import PODS


@pytest.fixture
def cache(kube: Cluster) -> Iterator[KubeCache]:
    """A started, synced cache; reconnects quickly so fault tests stay short."""
    c = KubeCache.connect(kube.kubeconfig, initial_backoff=0.2, max_backoff=1.0)
    c.start()
    try:
        c.wait_synced(20)
        yield c
    finally:
        closes_without_hanging(c)


def name_at(cache: KubeCache, ip: str) -> str | None:
    p = cache.pod_by_ip(ip)
    return None if p is None else p.name


def make_node(core: Any, name: str, ip: str) -> None:
    core.create_node({"metadata": {"name": name, "labels": {"zone": "z1"}}})
    core.patch_node_status(name, {"status": {"addresses": [
        {"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}})


def test_initial_list(kube: Cluster, core: Any, namespace: str) -> None:
    ns = namespace
    ip_a, node_ip = fresh_ip(), fresh_ip()
    make_pod(core, ns, "a", ip=ip_a, labels={"app": "a"}, containers=("web", "log"))
    make_pod(core, ns, "pending")  # no IP yet
    svc = core.create_namespaced_service(ns, {"metadata": {"name": "s"}, "spec": {
        "selector": {"app": "a"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
    node = f"node-{ns}"
    make_node(core, node, node_ip)

    with KubeCache.connect(kube.kubeconfig) as cache:
        cache.wait_synced(20)
        a = cache.pod_by_ip(ip_a)
        assert a is not None
        assert (a.namespace, a.name, a.ips, a.node, a.labels, a.containers) == (
            ns, "a", (ip_a,), "node-a", {"app": "a"}, ("web", "log"))
        assert cache.pod(ns, "pending") is not None
        s = cache.service_by_ip(svc.spec.cluster_ip)
        assert s is not None and (s.namespace, s.name, s.selector) == (ns, "s", {"app": "a"})
        assert [(p.port, p.target_port) for p in s.ports] == [(80, "8080")]
        n = cache.node_by_ip(node_ip)
        assert n is not None and n.name == node and n.labels == {"zone": "z1"}
        assert cache.namespace_labels(ns) is not None
        assert {h.resource for h in cache.health() if h.synced} == {
            "pods", "services", "nodes", "namespaces", "replicasets.apps", "jobs.batch"}


def test_watch_add_modify_delete(cache: KubeCache, core: Any, namespace: str) -> None:
    ns, ip = namespace, fresh_ip()
    make_pod(core, ns, "w", labels={"v": "1"})
    eventually(lambda: cache.pod(ns, "w"), what="ADDED pod")
    assert cache.pod_by_ip(ip) is None
    set_pod_ip(core, ns, "w", ip)
    eventually(lambda: name_at(cache, ip) == "w", what="MODIFIED pod with an IP")
    core.patch_namespaced_pod("w", ns, {"metadata": {"labels": {"v": "2"}}})
    eventually(lambda: cache.pod_by_ip(ip).labels == {"v": "2"},  # type: ignore[union-attr]
               what="MODIFIED labels")
    delete_pod(core, ns, "w")
    eventually(lambda: cache.pod_by_ip(ip) is None and cache.pod(ns, "w") is None,
               what="DELETED pod")


def test_owner_chain_to_deployment(cache: KubeCache, kube: Cluster, core: Any,
                                   namespace: str) -> None:
    from kubernetes import client

    apps = client.AppsV1Api(api_client(kube))
    ns, ip = namespace, fresh_ip()
    labels = {"app": "web"}
    template = {"metadata": {"labels": labels},
                "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]}}
    dep = apps.create_namespaced_deployment(ns, {"metadata": {"name": "web"}, "spec": {
        "selector": {"matchLabels": labels}, "template": template}})
    # no controller-manager here: make the ReplicaSet the Deployment controller would;
    # its name does not follow the <deployment>-<hash> pattern, so only the
    # ReplicaSet informer can tell the pod's Deployment
    rs = apps.create_namespaced_replica_set(ns, {
        "metadata": {"name": "web-rs", "ownerReferences": [
            owner_ref("Deployment", "web", dep.metadata.uid, "apps/v1")]},
        "spec": {"selector": {"matchLabels": labels}, "template": template}})
    make_pod(core, ns, "web-rs-x1", ip=ip, labels=labels,
             owner=owner_ref("ReplicaSet", "web-rs", rs.metadata.uid, "apps/v1"))
    p = eventually(lambda: cache.pod_by_ip(ip), what="pod")
    eventually(lambda: (cache.pod_by_ip(ip).workload_kind,  # type: ignore[union-attr]
                        cache.pod_by_ip(ip).workload_name)  # type: ignore[union-attr]
               == ("Deployment", "web"), what=f"Deployment/web as workload (had {p})")


def test_owner_chain_to_cronjob(cache: KubeCache, kube: Cluster, core: Any,
                                namespace: str) -> None:
    from kubernetes import client

    api = api_client(kube)
    ns, ip = namespace, fresh_ip()
    pod_spec = {"restartPolicy": "Never",
                "containers": [{"name": "b", "image": "example.invalid/backup:1"}]}
    cj = client.CustomObjectsApi(api).create_namespaced_custom_object(
        "batch", "v1beta1", ns, "cronjobs", {
            "apiVersion": "batch/v1beta1", "kind": "CronJob", "metadata": {"name": "backup"},
            "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {
                "template": {"spec": pod_spec}}}}})
    job = client.BatchV1Api(api).create_namespaced_job(ns, {
        "metadata": {"name": "backup-1600", "ownerReferences": [
            owner_ref("CronJob", "backup", cj["metadata"]["uid"], "batch/v1beta1")]},
        "spec": {"template": {"spec": pod_spec}}})
    make_pod(core, ns, "backup-1600-abcde", ip=ip,
             owner=owner_ref("Job", "backup-1600", job.metadata.uid, "batch/v1"))
    eventually(lambda: (cache.pod_by_ip(ip) or None) and (
        cache.pod_by_ip(ip).workload_kind,  # type: ignore[union-attr]
        cache.pod_by_ip(ip).workload_name) == ("CronJob", "backup"),  # type: ignore[union-attr]
        what="CronJob/backup as workload")


def test_statefulset_owner_is_direct(cache: KubeCache, core: Any, namespace: str) -> None:
    ns, ip = namespace, fresh_ip()
    make_pod(core, ns, "db-0", ip=ip,
             owner=owner_ref("StatefulSet", "db", "00000000-0000-0000-0000-000000000001",
                             "apps/v1"))
    p = eventually(lambda: cache.pod_by_ip(ip), what="pod")
    assert (p.workload_kind, p.workload_name) == ("StatefulSet", "db")


def test_service_and_node_via_watch(cache: KubeCache, core: Any, namespace: str) -> None:
    ns = namespace
    svc = core.create_namespaced_service(ns, {"metadata": {"name": "api"}, "spec": {
        "selector": {"app": "api"}, "ports": [{"port": 443, "targetPort": "https"}]}})
    ip = svc.spec.cluster_ip
    s = eventually(lambda: cache.service_by_ip(ip), what="service by clusterIP")
    assert (s.namespace, s.name, s.ports[0].target_port) == (ns, "api", "https")
    node, node_ip = f"n-{ns}", fresh_ip()
    make_node(core, node, node_ip)
    assert eventually(lambda: cache.node_by_ip(node_ip), what="node by InternalIP").name == node
    core.delete_namespaced_service("api", ns, _preload_content=False)  # 1.20 answers Status
    eventually(lambda: cache.service_by_ip(ip) is None, what="service deleted")


def test_host_network_pod_by_node(cache: KubeCache, core: Any, namespace: str) -> None:
    ns, node_ip = namespace, fresh_ip()
    node = f"hn-{ns}"
    make_node(core, node, node_ip)
    make_pod(core, ns, "proxy", ip=node_ip, node=node, host_network=True)
    eventually(lambda: cache.pods_on_node(node, host_network=True), what="hostNetwork pod")
    assert cache.pod_by_ip(node_ip) is None
    # Nodes and pods are two watches: the node's event may come after the pod's.
    assert eventually(lambda: cache.node_by_ip(node_ip), what="node by InternalIP").name == node


class Sampler:
    """Looks up one IP in a tight loop, recording every answer, as a gadget would."""

    def __init__(self, cache: KubeCache, ip: str) -> None:
        self.seen: list[str | None] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(cache, ip), daemon=True)
        self._t.start()

    def _run(self, cache: KubeCache, ip: str) -> None:
        last: object = object()
        while not self._stop.is_set():
            name = name_at(cache, ip)
            if name != last:
                self.seen.append(name)
                last = name
            time.sleep(0.0005)

    def stop(self) -> list[str | None]:
        self._stop.set()
        self._t.join(2)
        return self.seen


def test_ip_reuse_never_shows_the_old_pod(cache: KubeCache, core: Any, namespace: str) -> None:
    ns, ip = namespace, fresh_ip()
    make_pod(core, ns, "a", ip=ip)
    eventually(lambda: name_at(cache, ip) == "a", what="pod a")
    sampler = Sampler(cache, ip)
    delete_pod(core, ns, "a")
    make_pod(core, ns, "b", ip=ip)
    eventually(lambda: name_at(cache, ip) == "b", what="pod b owns the reused IP")
    time.sleep(0.2)
    seen = sampler.stop()
    assert "a" not in seen[seen.index("b"):], seen


def test_ip_reuse_new_pod_before_old_is_deleted(cache: KubeCache, core: Any,
                                                namespace: str) -> None:
    """The CNI handed A's IP to B while A's deletion has not reached the API yet."""
    ns, ip = namespace, fresh_ip()
    make_pod(core, ns, "a", ip=ip)
    eventually(lambda: name_at(cache, ip) == "a", what="pod a")
    time.sleep(1.1)  # creationTimestamp has one-second resolution
    make_pod(core, ns, "b", ip=ip)
    eventually(lambda: name_at(cache, ip) == "b", what="newer pod b wins while a still exists")
    # a finishing (Succeeded) keeps its podIP in status but gives the IP up
    set_pod_ip(core, ns, "a", ip, phase="Succeeded")
    delete_pod(core, ns, "a")
    eventually(lambda: cache.pod(ns, "a") is None, what="a deleted")
    assert name_at(cache, ip) == "b"


def test_apiserver_restart_mid_watch(cache: KubeCache, kube: Cluster, core: Any,
                                     namespace: str) -> None:
    ns, ip1, ip2 = namespace, fresh_ip(), fresh_ip()
    make_pod(core, ns, "before", ip=ip1)
    eventually(lambda: name_at(cache, ip1) == "before", what="pod before the restart")
    pods = cache.informers["pods"]
    eventually(lambda: pods.connected, what="pods watch connected")
    kube.apiserver("stop")
    try:
        eventually(lambda: pods.health().last_error is not None and not pods.connected,
                   what="the cut to be noticed")
        assert name_at(cache, ip1) == "before"  # the cache keeps serving while the API is away
    finally:
        kube.apiserver("start")  # the cluster is shared: bring it back even on failure
    # changes made after the restart must show up
    make_pod(core, ns, "after", ip=ip2)
    delete_pod(core, ns, "before")
    eventually(lambda: name_at(cache, ip2) == "after", what="pod created after the restart")
    eventually(lambda: cache.pod_by_ip(ip1) is None, what="pod deleted after the restart")
    eventually(lambda: all(i.connected for i in cache.informers.values()),
               what="every informer watching again")
    assert cache.synced


def test_compaction_forces_relist(kube_etcd_watch: Cluster, tmp_path: Path) -> None:
    """Events missed while cut off were compacted away: 410 inside the watch, relist, correct."""
    from kubernetes import client

    cluster = kube_etcd_watch
    core = client.CoreV1Api(api_client(cluster))
    ns = make_namespace(core)
    ip_a, ip_c = fresh_ip(), fresh_ip()
    make_pod(core, ns, "a", ip=ip_a)
    make_pod(core, ns, "keep", ip=fresh_ip())

    proxy = FaultProxy(cluster.port)
    kc = cluster.kubeconfig_for(tmp_path / "kc", server=proxy.server)
    cache = KubeCache.connect(kc, resources=[PODS], initial_backoff=0.1, max_backoff=0.5)
    try:
        cache.start().wait_synced(20)
        pods = cache.informers["pods"]
        assert name_at(cache, ip_a) == "a"
        eventually(lambda: pods.connected, what="watch connected")
        old_rv = int(pods.resource_version)

        proxy.cut()
        eventually(lambda: not pods.connected, what="watch cut")
        # behind the cache's back: a goes, b takes a's IP, c appears
        delete_pod(core, ns, "a")
        make_pod(core, ns, "b", ip=ip_a)
        make_pod(core, ns, "c", ip=ip_c)
        for i in range(5):  # more history, then compact all of it
            core.create_namespaced_config_map(ns, {"metadata": {"name": f"cm{i}"}})
        rev = cluster.compact_etcd()
        assert rev > old_rv and int(pods.resource_version) == old_rv
        assert name_at(cache, ip_a) == "a"  # still the stale view: nothing reached us

        proxy.restore()
        eventually(lambda: pods.relists_on_gone >= 1, what="410 Gone and a relist")
        eventually(lambda: name_at(cache, ip_a) == "b", what="relist result")
        assert cache.pod(ns, "a") is None
        assert name_at(cache, ip_c) == "c"
        assert pods.lists >= 2 and int(pods.resource_version) >= rev
        # and the watch after the relist is live again
        make_pod(core, ns, "d", ip=(ip_d := fresh_ip()))
        eventually(lambda: name_at(cache, ip_d) == "d", what="watch after relist")
    finally:
        cache.close()
        proxy.close()


def test_close_is_prompt_while_watching(kube: Cluster) -> None:
    cache = KubeCache.connect(kube.kubeconfig).start()
    cache.wait_synced(20)
    eventually(lambda: all(i.connected for i in cache.informers.values()), what="watching")
    closes_without_hanging(cache)
    assert not [t for t in threading.enumerate() if t.name.startswith("podsight-informer")]
