"""Identity at an event's time against a real kube-apiserver 1.20 + etcd, and what a resolver
tells the user when its watches lose the API server.

The official client changes pods (the oracle); the resolver reads them through its own
informers, exactly as a trace does. "Events" here are boot-clock instants taken by the test
around each change, which is what a kernel timestamp is.
"""

# ruff: noqa: F401, F811  (pytest fixtures are imported, then named as parameters)

from __future__ import annotations

import os
import re
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from identity_history import boot_ns
from k8s.fixtures import (
    Cluster,
    core,  # fixture
    delete_pod,
    eventually,
    fresh_ip,
    kube,  # fixture
    make_pod,
    namespace,  # fixture
)

from podsight.identity import Resolver
from podsight.identity.kube import KubeCache
from podsight.identity.lab import LabInventory
from podsight.identity.local.cgroups import cgroup2_root


@pytest.fixture
def cache(kube: Cluster) -> Iterator[KubeCache]:
    """A started, synced cache that reconnects quickly (fault tests stay short)."""
    c = KubeCache.connect(kube.kubeconfig, initial_backoff=0.1, max_backoff=0.3)
    c.start()
    try:
        c.wait_synced(20)
        yield c
    finally:
        c.close()


@pytest.fixture
def resolver(cache: KubeCache, tmp_path: Path) -> Iterator[Resolver]:
    with Resolver(lab=LabInventory(tmp_path / "no-lab.json"), kube=cache,
                  node_name="n1") as r:
        yield r


def named(r: Resolver, ip: str, at_ns: int | None) -> str:
    return r.endpoint(ip, at_ns=at_ns).notation


def test_reused_pod_ip_is_named_at_each_event_time(cache: KubeCache, resolver: Resolver,
                                                   core: Any, namespace: str) -> None:
    """Pod a holds X; a is deleted; b gets X. Each instant names its holder, whenever asked."""
    ns, ip = namespace, fresh_ip()
    make_pod(core, ns, "a", ip=ip)
    eventually(lambda: cache.pod_by_ip(ip) is not None, what="pod a")
    t1 = boot_ns()
    assert named(resolver, ip, t1) == f"p/{ns}/a"  # memoised before anything changes
    delete_pod(core, ns, "a")
    eventually(lambda: cache.pod_by_ip(ip) is None, what="a deleted")
    t_free = boot_ns()
    make_pod(core, ns, "b", ip=ip)
    eventually(lambda: cache.pod_by_ip(ip) is not None, what="pod b")
    t2 = boot_ns()
    assert named(resolver, ip, t2) == f"p/{ns}/b"
    assert named(resolver, ip, t1) == f"p/{ns}/a"  # asked after the change, named as then
    assert named(resolver, ip, t_free) == f"r/{ip}"  # nobody held it
    assert named(resolver, ip, 1) == f"r/{ip}"  # before a got it (a came after the sync)
    resolver.refresh(force=True)
    assert named(resolver, ip, None) == f"p/{ns}/b"  # no time: now
    pod = cache.pod_by_ip_at(ip, t1)[1]
    assert pod is not None and pod.name == "a"


def test_new_pod_before_the_old_ones_delete_keeps_the_reuse_rule(
        cache: KubeCache, resolver: Resolver, core: Any, namespace: str) -> None:
    """The CNI gave a's IP to b before a's deletion reached the API: b wins from when it was
    seen (the cache's election), a's late DELETED changes nothing."""
    ns, ip = namespace, fresh_ip()
    make_pod(core, ns, "a", ip=ip)
    eventually(lambda: cache.pod_by_ip(ip) is not None, what="pod a")
    t1 = boot_ns()
    time.sleep(1.1)  # creationTimestamp has one-second resolution: b must be newer
    make_pod(core, ns, "b", ip=ip)
    eventually(lambda: (cache.pod_by_ip(ip) or a_pod()).name == "b", what="b wins")
    t2 = boot_ns()
    delete_pod(core, ns, "a")
    eventually(lambda: cache.pod(ns, "a") is None, what="a deleted")
    t3 = boot_ns()
    assert [named(resolver, ip, t) for t in (t1, t2, t3)] == [f"p/{ns}/a", f"p/{ns}/b",
                                                              f"p/{ns}/b"]


def a_pod() -> Any:
    from podsight.identity import PodInfo

    return PodInfo("", "")


# --- the cgroup side: a pod's containers named by the pod UID in their cgroup --------------


@pytest.fixture
def sandbox() -> Iterator[Any]:
    from identity_local_sys import CgroupSandbox

    if os.geteuid() != 0 or cgroup2_root() is None:
        pytest.skip("making cgroups needs root and a cgroup2 hierarchy")
    with CgroupSandbox() as box:
        yield box


def test_cgroup_of_a_deleted_pod_is_named_for_its_earlier_events(
        cache: KubeCache, core: Any, namespace: str, sandbox: Any, tmp_path: Path) -> None:
    """A real cgroup in kubelet's layout names a pod by UID; once the pod is deleted from the
    API, events from before the deletion still name it (even from before the watch brought
    it), later ones fall back to the netns."""
    from podsight.identity.local import LocalIdentity

    ns = namespace
    t0 = boot_ns()  # before the watch brought the pod: its containers may already run
    make_pod(core, ns, "job-1", containers=("work",))
    uid = core.read_namespaced_pod("job-1", ns).metadata.uid
    eventually(lambda: cache.pod_by_uid(uid) is not None, what="pod by uid")
    path = sandbox.mkdir(f"kubepods/besteffort/pod{uid}/{secrets.token_hex(32)}")
    cgroup_id = os.stat(sandbox.full(path)).st_ino
    local = LocalIdentity(runtimes=[])
    local.refresh()
    try:
        with Resolver(lab=LabInventory(tmp_path / "no-lab.json"), kube=cache, node_name="n1",
                      local=local, local_interval=3600.0) as r:
            host = r.host_netns
            t1 = boot_ns()
            ep = r.local_endpoint("10.0.0.1", host, cgroup_id, at_ns=t1)
            assert (ep.notation, ep.container) == (f"p/{ns}/job-1", "work")
            delete_pod(core, ns, "job-1")
            eventually(lambda: cache.pod_by_uid(uid) is None, what="pod deleted")
            t2 = boot_ns()
            assert r.local_endpoint("10.0.0.1", host, cgroup_id, at_ns=t2).kind == "node"
            ep = r.local_endpoint("10.0.0.1", host, cgroup_id, at_ns=t1)
            assert (ep.notation, ep.container) == (f"p/{ns}/job-1", "work")
            # a UID names one pod forever: its past starts when it goes, not when it came
            assert r.local_endpoint("10.0.0.1", host, cgroup_id, at_ns=t0).name == "job-1"
            pod = cache.pod_by_uid_at(uid, t1)[1]
            assert pod is not None and pod.name == "job-1"
    finally:
        local.close()


# --- the API server goes away ------------------------------------------------------------------


def test_lost_api_is_told_once_and_its_return_once(kube: Cluster, cache: KubeCache,
                                                   resolver: Resolver, core: Any,
                                                   namespace: str) -> None:
    """Stop the apiserver: one warning however many retries fail, names kept from the cache;
    start it: one line saying identity is current again."""
    ns, ip = namespace, fresh_ip()
    make_pod(core, ns, "kept", ip=ip)
    eventually(lambda: cache.pod_by_ip(ip) is not None, what="pod")
    eventually(lambda: all(i.connected for i in cache.informers.values()), what="watching")
    assert resolver.take_notices() == []
    pods = cache.informers["pods"]
    server = kube.server
    kube.apiserver("stop")
    try:
        errors = pods.health().errors
        eventually(lambda: pods.health().errors >= errors + 3, what="three failed retries")
        [line] = resolver.take_notices()
        # the cause is what the first informer to fail saw: a dropped watch or a refusal
        assert re.fullmatch(
            rf"podsight: warning: lost the Kubernetes API at {re.escape(server)} "
            r"\((connection refused|watch connection dropped: [^;]+)\); "
            "identity may go stale: names are kept from the cache until it is back", line), line
        assert named(resolver, ip, boot_ns()) == f"p/{ns}/kept"
        eventually(lambda: pods.health().errors >= errors + 5, what="more failed retries")
        assert resolver.take_notices() == []  # not once per retry
    finally:
        kube.apiserver("start")  # the cluster is shared: bring it back even on failure
    eventually(lambda: all(i.connected for i in cache.informers.values()),
               what="every informer watching again")
    eventually(lambda: not cache.api_lost, what="the cache to say so")
    assert resolver.take_notices() == [
        f"podsight: the Kubernetes API at {server} is back; identity is current again"]
    assert named(resolver, ip, boot_ns()) == f"p/{ns}/kept"
    assert resolver.take_notices() == []
