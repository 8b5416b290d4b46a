"""trace tcpconnect with identity from a real kube-apiserver: pods created through the API
carry the IPs of lab pods, real traffic flows between the lab pods, and the trace must print
the API's names (which differ from the lab's), workloads and services."""

# ruff: noqa: F401, F811  (pytest fixtures are imported, then named as parameters)

from __future__ import annotations

import contextlib
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from k8s.fixtures import (
    api_client,
    core,  # fixture
    delete_pod,
    kube,  # fixture
    make_namespace,
    make_pod,
    owner_ref,
)
from tracing import Trace, connect, matching

pytestmark = pytest.mark.root

SERVICE_IP = "10.96.0.10"  # the lab DNATs it to web:8080


def one(events: list[dict[str, Any]], **want: Any) -> dict[str, Any]:
    found = matching(events, **want)
    assert len(found) == 1, f"expected one event matching {want}, got {found}"
    return found[0]


@pytest.fixture
def shop(lab, kube, core):
    """Namespace with Deployment shop -> ReplicaSet -> pod on mypod's IP, pod api-0 on web's
    IP behind Service api (clusterIP = the lab's service IP)."""
    from kubernetes import client

    apps = client.AppsV1Api(api_client(kube))
    ns = make_namespace(core)
    node = socket.gethostname()
    labels = {"app": "shop"}
    template = {"metadata": {"labels": labels},
                "spec": {"containers": [{"name": "shop", "image": "example.invalid/shop:1"}]}}
    dep = apps.create_namespaced_deployment(ns, {"metadata": {"name": "shop"}, "spec": {
        "selector": {"matchLabels": labels}, "template": template}})
    rs = apps.create_namespaced_replica_set(ns, {
        "metadata": {"name": "shop-5d8f", "ownerReferences": [
            owner_ref("Deployment", "shop", dep.metadata.uid, "apps/v1")]},
        "spec": {"selector": {"matchLabels": labels}, "template": template}})
    make_pod(core, ns, "shop-5d8f-x2x9q", ip=lab.pod("mypod").ipv4, node=node, labels=labels,
             containers=("shop",), owner=owner_ref("ReplicaSet", "shop-5d8f", rs.metadata.uid,
                                                   "apps/v1"))
    make_pod(core, ns, "api-0", ip=lab.pod("web").ipv4, node=node, labels={"app": "api"},
             containers=("api",))
    core.create_namespaced_service(ns, {"metadata": {"name": "api"}, "spec": {
        "clusterIP": SERVICE_IP, "selector": {"app": "api"},
        "ports": [{"port": 80, "targetPort": 8080}]}})
    yield ns
    for pod in ("shop-5d8f-x2x9q", "api-0", "api-1", "api-2"):
        with contextlib.suppress(Exception):  # already deleted by the test
            delete_pod(core, ns, pod)
    core.delete_namespaced_service("api", ns, _preload_content=False)


def test_names_workloads_and_services_come_from_the_api(lab, kube, shop):
    web = lab.pod("web")
    with Trace("--kubeconfig", kube.kubeconfig, "-n", shop) as t:
        a = connect(lab, "mypod", web.ipv4, 8080)
        b = connect(lab, "mypod", SERVICE_IP, 80)
        c = connect(lab, "frontend", web.ipv4, 8080)  # not in the namespace: filtered out
    e = one(t.result.events, pid=a["pid"])
    assert e["src"]["endpoint"] == f"p/{shop}/shop-5d8f-x2x9q:{a['sport']}"
    assert e["src"]["workload"] == {"kind": "Deployment", "name": "shop"}
    assert e["src"]["labels"] == {"app": "shop"} and e["src"]["container"] == "shop"
    assert e["dst"]["endpoint"] == f"p/{shop}/api-0:8080"
    assert e["result"] == "ok"
    s = one(t.result.events, pid=b["pid"])
    assert s["dst"]["endpoint"] == f"s/{shop}/api:80" and s["dst"]["kind"] == "service"
    assert s["result"] == "ok"
    assert not matching(t.result.events, pid=c["pid"])

    with Trace("--kubeconfig", kube.kubeconfig, "-n", shop, output="") as t:
        connect(lab, "mypod", web.ipv4, 8080)
    header, *rows = t.result.stdout.splitlines()
    assert header.split()[:5] == ["K8S.NODE", "K8S.NAMESPACE", "K8S.PODNAME",
                                  "K8S.CONTAINERNAME", "PID"]
    node = socket.gethostname()
    assert any(r.split()[:4] == [node, shop, "shop-5d8f-x2x9q", "shop"] for r in rows), rows


def test_label_selector_and_pod_filters(lab, kube, shop):
    web = lab.pod("web")
    for flags, traced in ((["-l", "app=shop"], True), (["-l", "app in (api,db)"], False),
                          (["-p", "shop-5d8f-x2x9q"], True), (["-p", "!shop-5d8f-x2x9q"], False),
                          (["-c", "shop"], True), (["-A", "-c", "nope"], False)):
        with Trace("--kubeconfig", kube.kubeconfig, *flags) as t:
            a = connect(lab, "mypod", web.ipv4, 8080)
        assert bool(matching(t.result.events, pid=a["pid"])) is traced, flags


def test_reused_ip_and_apiserver_restart_mid_trace(lab, kube, core, shop):
    """Delete api-0 and give its IP to api-1 while tracing; restart the API server; later
    connects name the new pod, and the trace never stops."""
    web = lab.pod("web")
    node = socket.gethostname()
    with Trace("--kubeconfig", kube.kubeconfig, "-n", shop) as t:
        before = connect(lab, "mypod", web.ipv4, 8080)
        # No waiting for it to be printed: it is named at its own time, whenever printed.
        delete_pod(core, shop, "api-0")
        make_pod(core, shop, "api-1", ip=web.ipv4, node=node, labels={"app": "api"},
                 containers=("api",))
        after = _until_named(lab, t, web.ipv4, f"p/{shop}/api-1:8080")
        kube.apiserver("restart")
        delete_pod(core, shop, "api-1")
        make_pod(core, shop, "api-2", ip=web.ipv4, node=node, labels={"app": "api"},
                 containers=("api",))
        late = _until_named(lab, t, web.ipv4, f"p/{shop}/api-2:8080")
        t.stop()
    assert one(t.result.events, pid=before["pid"])["dst"]["endpoint"] == f"p/{shop}/api-0:8080"
    assert after and late
    assert t.result.returncode == 0


def _until_named(lab: Any, trace: Trace, ip: str, endpoint: str) -> bool:
    """Connect once a second until the trace names the peer ``endpoint`` (watch latency)."""
    import time

    deadline = time.monotonic() + 30
    pids = []
    while time.monotonic() < deadline:
        pids.append(connect(lab, "mypod", ip, 8080)["pid"])
        time.sleep(1.0)
        # peek at what the trace wrote so far
        assert trace.proc is not None
        if endpoint in trace.peek():
            return True
    return False

