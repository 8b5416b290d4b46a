"""Cluster mode on a real node: deploy/ manifests, RBAC, the agent image, discovery and
port-forward, ``kubectl podsight deploy|undeploy``.

The node (tests/k8s/node: apiserver, controller-manager, scheduler, kubelet,
containerd + runc + CNI bridge) is started once per session. Pods here are
real: created by the kubelet through containerd, with real cgroups, network
namespaces and CRI container IDs. kubectl 1.20 (built with the node, the
server's own version) is the oracle for kustomize and ``auth can-i``.

Two deviations from deploy/ go through a test overlay (``overlay`` below),
both forced by this machine, not by podsight: the VM withholds
CAP_SYS_RESOURCE from root (runc cannot grant it), and the node has no
kube-proxy, so the agent reaches the API server at 127.0.0.1:PORT, not at the
``kubernetes`` Service. The node's containerd socket is at its own path.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from clusterrun import agents as sim_agents
from clusterrun import json_lines
from conns import Server, exchange
from k8s.nodefixtures import BUSYBOX, CACHE, ROOT, Node, agent_image, node, overlay, wait_for

from podsight.cluster.deploy import embedded_manifests
from podsight.cluster.deployment import LABEL_SELECTOR, NAMESPACE
from podsight.cluster.portforward import agent_endpoints, find_agents
from podsight.lab import Lab

__all__ = ["agent_image", "node"]  # fixtures, imported for pytest

DEPLOY = ROOT / "deploy"
PACKAGED = ROOT / "src/podsight/cluster/manifests"
SA = f"system:serviceaccount:{NAMESPACE}:podsight-agent"


def kubectl_120() -> str:
    """The kubectl built with the node (root's cache: ``make k8s-node``)."""
    path = CACHE / "bin/kubectl"
    if not path.exists():
        pytest.skip(f"no {path}: run 'make k8s-node'")
    return str(path)


# ------------------------------------------------------------ manifests, no cluster
def test_packaged_manifests_are_deploys() -> None:
    """The plugin applies its embedded copy: it must be deploy/ byte for byte."""
    names = sorted(p.name for p in DEPLOY.glob("*.yaml"))
    assert names == sorted(p.name for p in PACKAGED.glob("*.yaml"))
    for name in names:
        assert (PACKAGED / name).read_bytes() == (DEPLOY / name).read_bytes(), \
            f"src/podsight/cluster/manifests/{name} differs from deploy/{name}: copy it"


@pytest.mark.root  # kubectl 1.20 lives in root's cache, built by make k8s-node
def test_kustomize_renders_every_object_labelled() -> None:
    out = subprocess.run([kubectl_120(), "kustomize", str(DEPLOY)], capture_output=True,
                         text=True, check=True).stdout
    objs = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(["Namespace", "ServiceAccount", "ClusterRole", "ClusterRole",
                            "ClusterRoleBinding", "Role", "DaemonSet"])
    for o in objs:
        assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "podsight", o["kind"]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in embedded_manifests()) == \
        sorted((o["kind"], o["metadata"]["name"]) for o in objs)
    ds = next(o for o in objs if o["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] and spec["hostPID"]
    caps = spec["containers"][0]["securityContext"]["capabilities"]["add"]
    assert {"BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_RESOURCE"} <= set(caps)
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert {"/sys/kernel/tracing", "/sys/fs/bpf", "/host/proc", "/run/netns",
            "/run/containerd"} <= mounts
    assert not ds["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":latest")


def test_deploy_refuses_bad_input(tmp_path: Path) -> None:
    """Bad flags are one line and exit 2, before kubectl is even looked for."""
    proc = run_plugin(["deploy", "--timeout", "soon"], env=dict(os.environ))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "not a number of seconds" in proc.stderr


# ------------------------------------------------------------ against the real node
@pytest.fixture(scope="module")
def rbac(node: Node) -> Iterator[None]:
    """deploy/'s objects without the DaemonSet, applied for real; removed by label after."""
    out = node.run("kustomize", str(DEPLOY)).stdout
    objs = [d for d in yaml.safe_load_all(out) if d and d["kind"] != "DaemonSet"]
    node.run("apply", "-f", "-", stdin=yaml.safe_dump_all(objs))
    wait_for(lambda: node.run("get", "sa", "-n", NAMESPACE, "podsight-agent",
                              "-o", "jsonpath={.secrets[0].name}", check=False).stdout,
             30, "the agent's ServiceAccount token")
    yield
    from podsight.cluster.deploy import undeploy

    undeploy(node.kubectl(), log=lambda _: None)


def test_apply_k_to_the_real_apiserver(node: Node, rbac: None) -> None:
    """``kubectl apply -k deploy/`` is accepted by the API server: a server-side dry run
    (admission and schema checks included) once the namespace exists, since the real
    DaemonSet would pull from a registry this machine must not reach."""
    out = node.run("apply", "-k", str(DEPLOY), "--dry-run=server").stdout.strip().splitlines()
    assert len(out) == 7 and all(line.endswith("(server dry run)") for line in out), out


@pytest.mark.parametrize(("verb", "what", "allowed"), [
    ("list", "pods", True), ("watch", "services", True), ("get", "nodes", True),
    ("list", "namespaces", True), ("watch", "replicasets.apps", True),
    ("list", "jobs.batch", True),
    ("create", "tokenreviews.authentication.k8s.io", True),
    ("create", "subjectaccessreviews.authorization.k8s.io", True),
    ("get", "secrets", False), ("list", "secrets", False), ("create", "pods", False),
    ("create", "pods/exec", False), ("create", "pods/portforward", False),
    ("delete", "pods", False), ("patch", "nodes", False), ("list", "configmaps", False),
    ("list", "endpoints", True), ("watch", "endpoints", True), ("create", "endpoints", False),
    ("create", "daemonsets.apps", False),
    ("use", "agents.podsight.io", False),
])
def test_agent_rbac_is_least_privilege(node: Node, rbac: None, verb: str, what: str,
                                       allowed: bool) -> None:
    resource, _, sub = what.partition("/")
    args = ["auth", "can-i", verb, resource, f"--as={SA}", "-A"]
    if sub:
        args += [f"--subresource={sub}"]
    proc = node.run(*args, check=False)
    assert proc.stdout.strip() == ("yes" if allowed else "no"), (what, proc.stdout, proc.stderr)


def test_agent_rbac_list_is_exactly_the_manifest(node: Node, rbac: None) -> None:
    """Nothing beyond deploy/clusterrole.yaml (and what every authenticated caller has)."""
    out = node.run("auth", "can-i", "--list", f"--as={SA}").stdout
    rows = {line.split()[0] for line in out.splitlines()[1:]
            if line.strip() and not line.split()[0].startswith("[")}
    assert rows == {"pods", "services", "endpoints", "nodes", "namespaces", "replicasets.apps",
                    "jobs.batch", "tokenreviews.authentication.k8s.io",
                    "subjectaccessreviews.authorization.k8s.io",
                    "selfsubjectaccessreviews.authorization.k8s.io",
                    "selfsubjectrulesreviews.authorization.k8s.io"}, out


# ------------------------------------------------------------ the agent image on the node
def agent_template(node: Node, tmp: Path) -> dict[str, Any]:
    out = node.run("kustomize", str(overlay(tmp, node))).stdout
    ds = next(d for d in yaml.safe_load_all(out) if d and d["kind"] == "DaemonSet")
    return dict(ds["spec"]["template"])


def make_namespace(node: Node) -> str:
    name = "t-" + uuid.uuid4().hex[:8]
    node.run("create", "namespace", name)
    wait_for(lambda: node.run("get", "sa", "default", "-n", name, check=False).returncode == 0,
             30, f"the default ServiceAccount of {name}")
    return name


def pod_ready(node: Node, ns: str, name: str) -> Any:
    pod = node.json("get", "pod", "-n", ns, name)
    ok = any(c["type"] == "Ready" and c["status"] == "True"
             for c in pod.get("status", {}).get("conditions", []))
    return pod if ok else None


def wait_pod(node: Node, ns: str, name: str, timeout: float = 60) -> Any:
    """The pod once Ready; on a timeout, fail with the kubelet's events about it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pod = pod_ready(node, ns, name)
        if pod:
            return pod
        time.sleep(0.25)
    events = node.run("describe", "pod", "-n", ns, name, check=False).stdout
    pytest.fail(f"pod {ns}/{name} not ready after {timeout:.0f}s:\n{events[-2500:]}")


def busybox(name: str, command: str, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **extra},
            "spec": {"terminationGracePeriodSeconds": 0, "containers": [{
                "name": name.split("-")[0], "image": BUSYBOX, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", command]}]}}


def test_agent_image_traces_a_busybox_pod(node: Node, agent_image: str, rbac: None,
                                          tmp_path: Path) -> None:
    """The agent image, run as the DaemonSet's pod template runs it, loads tcpconnect and
    names a real busybox pod's connect: pod, namespace, container (from the cgroup path
    the kubelet made, the CRI and the API server)."""
    ns = make_namespace(node)
    tmpl = agent_template(node, tmp_path / "overlay")
    spec = tmpl["spec"]
    c = spec["containers"][0]
    c.update(image=agent_image, imagePullPolicy="Never", command=["sleep", "3600"], args=[])
    for probe in ("readinessProbe", "livenessProbe"):
        c.pop(probe, None)
    spec["terminationGracePeriodSeconds"] = 0
    probe_name = "agent-probe-" + uuid.uuid4().hex[:6]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": probe_name,
           "namespace": NAMESPACE, "labels": {"app.kubernetes.io/part-of": "podsight"}},
           "spec": spec}
    node.run("apply", "-f", "-", stdin=json.dumps(pod))
    server, client_name = start_client_server(node, ns)
    cli = pod_ready(node, ns, client_name)
    wait_pod(node, NAMESPACE, probe_name, 90)
    try:
        proc = node.run("exec", "-n", NAMESPACE, probe_name, "--", "podsight", "trace",
                        "tcpconnect", "-n", ns, "-o", "json", "--max-time", "6",
                        check=False, timeout=120)
        assert proc.returncode == 0, proc.stderr
        recs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        # the first connects can come before the server listens (Ready = started)
        mine = [r for r in recs if r["src"].get("pod") == client_name and r["result"] == "ok"]
        assert mine, f"no connect of {client_name} among {len(recs)} records: {proc.stderr}"
        r = mine[0]
        assert r["src"]["namespace"] == ns
        assert r["dst"].get("pod") == server, r["dst"]
        assert r["src"].get("container") == "client", r["src"]
        assert r["src"].get("node") == node.name, r["src"]
        cid = cli["status"]["containerStatuses"][0]["containerID"]
        assert cid.startswith("containerd://")
    finally:
        node.run("delete", "namespace", ns, "--wait=false", check=False)
        node.run("delete", "pod", "-n", NAMESPACE, probe_name, "--grace-period=0", "--wait=true",
                 check=False, timeout=90)


# ------------------------------------------------------------ discovery + port-forward
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_discovery_and_port_forward_reach_a_loopback_listener(node: Node, agent_image: str
                                                              ) -> None:
    """Agent discovery by label, and the API server -> kubelet -> containerd port-forward
    into a hostNetwork pod that listens on loopback only (as the agent does). A pod that
    is not ready and a node with no agent are reported, not fatal."""
    ns = make_namespace(node)
    port = free_port()
    labels = {"app.kubernetes.io/name": "podsight-agent", "app.kubernetes.io/part-of": "t"}
    listener = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "fake-agent", "namespace": ns, "labels": labels}, "spec": {
        "hostNetwork": True, "terminationGracePeriodSeconds": 0, "containers": [{
            "name": "http", "image": agent_image, "imagePullPolicy": "Never",
            "command": ["python3", "-m", "http.server", "--bind", "127.0.0.1", str(port)],
            "workingDir": "/etc"}]}}
    stuck = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "stuck-agent", "namespace": ns, "labels": labels}, "spec": {
        "nodeName": "ghost-node", "containers": [{"name": "x", "image": BUSYBOX}]}}
    try:
        for p in (listener, stuck):
            node.run("apply", "-f", "-", stdin=json.dumps(p))
        wait_pod(node, ns, "fake-agent")
        agents = find_agents(node.kubectl(), ns)
        assert [(a.pod, a.node, a.ready) for a in agents] == \
            [("stuck-agent", "ghost-node", False), ("fake-agent", node.name, True)]
        t0 = time.monotonic()
        with agent_endpoints(node.kubectl(), namespace=ns, port=port,
                             nodes=[node.name, "ghost-node", "absent-node"]) as reach:
            setup = time.monotonic() - t0
            assert [e.node for e in reach.endpoints] == [node.name]
            ep = reach.endpoints[0]
            assert ep.host == "127.0.0.1" and ep.port != port
            with urllib.request.urlopen(f"http://{ep.host}:{ep.port}/hostname", timeout=10) as r:
                assert r.read().decode().strip() == socket.gethostname()
            assert set(reach.unreachable) == {"ghost-node", "absent-node"}
            assert "not ready" in reach.unreachable["ghost-node"]
            assert "no podsight agent pod" in reach.unreachable["absent-node"]
            forwards = list(reach.forwards)
        assert all(not fw.alive() for fw in forwards), "a kubectl port-forward outlived its use"
        print(f"port-forward up in {setup:.2f} s")
    finally:
        node.run("delete", "namespace", ns, "--wait=false", check=False)


# ------------------------------------------------------------ kubectl podsight deploy|undeploy
def run_plugin(argv: list[str], env: dict[str, str], timeout: float = 300
               ) -> subprocess.CompletedProcess[str]:
    env = dict(env, PYTHONPATH=os.pathsep.join(  # as nobody, packages come only this way
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return subprocess.run([sys.executable, "-m", "podsight.cluster.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=timeout)


def leftovers(node: Node) -> list[str]:
    kinds = "all,serviceaccounts,roles,clusterroles,clusterrolebindings,namespaces"
    return node.run("get", kinds, "-A", "-l", LABEL_SELECTOR, "-o", "name").stdout.split()


def start_client_server(node: Node, ns: str) -> tuple[str, str]:
    """A busybox server and a client pod that connects to it every 0.2 s: their names."""
    server = busybox("server-" + uuid.uuid4().hex[:4], "exec httpd -f -p 8080 -h /var/www",
                     namespace=ns)
    node.run("apply", "-f", "-", stdin=json.dumps(server))
    srv = wait_pod(node, ns, server["metadata"]["name"])
    client = busybox("client-" + uuid.uuid4().hex[:4],
                     f"while true; do nc -w 1 {srv['status']['podIP']} 8080 </dev/null; "
                     "sleep 0.2; done", namespace=ns)
    node.run("apply", "-f", "-", stdin=json.dumps(client))
    wait_pod(node, ns, client["metadata"]["name"])
    return server["metadata"]["name"], client["metadata"]["name"]


def test_deploy_trace_undeploy(node: Node, agent_image: str, tmp_path: Path) -> None:
    """``kubectl podsight deploy`` schedules the DaemonSet and waits for the agent pod to be
    Ready on the real node; ``kubectl podsight trace tcpconnect -n NS`` finds the agent,
    streams through the real API server port-forward and names real busybox pods;
    ``undeploy`` removes every object with the label."""
    env = node.tool_env()
    ov = overlay(tmp_path / "overlay", node)
    ns = make_namespace(node)
    try:
        proc = run_plugin(["deploy", "-k", str(ov), "--image", agent_image, "--timeout", "120"],
                          env)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert "1/1 agents ready" in proc.stdout
        agents = find_agents(node.kubectl())
        assert [(a.node, a.ready) for a in agents] == [(node.name, True)]
        proc = run_plugin(["agents", "--check"], env)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        assert f"{node.name}" in proc.stdout and "reachable through 127.0.0.1:" in proc.stdout
        server, client = start_client_server(node, ns)
        proc = run_plugin(["trace", "tcpconnect", "-n", ns, "-o", "json", "--max-time", "6"],
                          env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        recs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        mine = [r for r in recs if r["src"].get("pod") == client and r["result"] == "ok"]
        assert mine, f"no connect of {client} among {len(recs)} records: {proc.stderr}"
        r = mine[0]
        assert r["src"]["namespace"] == ns
        assert r["dst"].get("pod") == server and r["src"].get("container") == "client"
        assert r["src"].get("node") == node.name
        assert "unreachable" not in proc.stderr, proc.stderr
    finally:
        node.run("delete", "namespace", ns, "--wait=false", check=False)
        proc = run_plugin(["undeploy", "--timeout", "120"], env)
    assert proc.returncode == 0, proc.stderr
    assert "nothing labelled" in proc.stderr
    assert leftovers(node) == []


def test_deploy_times_out_with_the_pods_reason(node: Node, tmp_path: Path) -> None:
    """An image the node cannot have: deploy fails in one line naming the kubelet's reason,
    and undeploy still removes everything."""
    env = node.tool_env()
    ov = overlay(tmp_path / "overlay", node)
    try:
        proc = run_plugin(["deploy", "-k", str(ov), "--image",
                           "localhost/podsight/no-such-image:0", "--timeout", "15"], env)
        assert proc.returncode == 1, proc.stderr
        err = proc.stderr.strip().splitlines()
        assert len(err) == 1 and "not ready after 15 s" in err[0], proc.stderr
        assert "ErrImage" in err[0] or "ImagePull" in err[0] or "ContainerCreating" in err[0]
    finally:
        t0 = time.monotonic()
        proc = run_plugin(["undeploy"], env)
        print(f"undeploy with a failing agent pod took {time.monotonic() - t0:.1f} s")
    assert proc.returncode == 0, proc.stderr
    assert leftovers(node) == []


# ------------------------------------------------------------ the real node with simulated ones
def test_discover_merges_the_real_node_with_simulated_ones(node: Node, agent_image: str,
                                                           lab: Lab, tmp_path: Path) -> None:
    """``kubectl podsight --discover --agent-addr A --agent-addr B trace tcpconnect``: the
    real node's agent (found by label, reached through the API server's port-forward) and
    two simulated nodes (agents on this machine, each watching one lab pod's network
    namespace) in one merged run: each record tagged with its node, in time order, and
    per-node counts in --summary.

    The pod selection is a label only the real client pod has: it picks the real node in
    discovery and, on the real agent, that pod's connects; on the simulated agents it
    matches no lab pod, so each sees just its own namespace (a selection adds to an
    agent's --netns scope)."""
    env = node.tool_env()
    ov = overlay(tmp_path / "overlay", node)
    ns = make_namespace(node)
    label = "podsight-test=merge-" + uuid.uuid4().hex[:6]
    key, _, value = label.partition("=")
    out, err, summary = tmp_path / "merged.json", tmp_path / "client.err", tmp_path / "s.json"
    sims = {"node-a": lab.pod("mypod").netns, "node-b": lab.pod("frontend").netns}
    try:
        proc = run_plugin(["deploy", "-k", str(ov), "--image", agent_image, "--timeout", "120"],
                          env)
        assert proc.returncode == 0, proc.stderr + proc.stdout
        server = busybox("server-" + uuid.uuid4().hex[:4], "exec httpd -f -p 8080 -h /var/www",
                         namespace=ns)
        node.run("apply", "-f", "-", stdin=json.dumps(server))
        srv = wait_pod(node, ns, server["metadata"]["name"])
        client_name = "client-" + uuid.uuid4().hex[:4]
        node.run("apply", "-f", "-", stdin=json.dumps(busybox(
            client_name, f"while true; do nc -w 1 {srv['status']['podIP']} 8080 </dev/null; "
            "sleep 0.2; done", namespace=ns, labels={key: value})))
        wait_pod(node, ns, client_name)
        with Server(lab, "web", 7070), Server(lab, "backend", 7071), \
                sim_agents(sims, tmp_path) as running:
            argv = ["--discover", *[w for a in running for w in ("--agent-addr", a.addr)],
                    "trace", "tcpconnect", "-A", "-l", label, "-o", "json",
                    "--summary", str(summary), "--max-time", "120"]
            env_ = dict(env, PYTHONPATH=os.pathsep.join(
                [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]))
            with out.open("w") as o, err.open("w") as e:
                client = subprocess.Popen([sys.executable, "-m", "podsight.cluster.cli", *argv],
                                          env=env_, stdout=o, stderr=e, text=True)
            try:
                wait_for(lambda: err.read_text().count(": tracing") >= 3 or client.poll(),
                         90, "three nodes tracing")
                assert client.poll() is None, err.read_text()

                def nodes_seen() -> set[str]:
                    exchange(lab, "mypod", lab.pod("web").ipv4, 7070, req=10, resp=10)
                    exchange(lab, "frontend", lab.pod("backend").ipv4, 7071, req=10, resp=10)
                    return {r["node"] for r in json_lines(out)}
                wait_for(lambda: nodes_seen() >= {node.name, *sims} or client.poll(), 60,
                         "records of every node")
                client.send_signal(signal.SIGINT)  # Ctrl-C: every agent stops, outputs whole
                assert client.wait(60) == 0, err.read_text()
            finally:
                if client.poll() is None:
                    client.kill()
                    client.wait()
        text = err.read_text()
        records = json_lines(out)
        by_node: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            by_node.setdefault(r["node"], []).append(r)
        assert set(by_node) == {node.name, *sims}, (set(by_node), text)
        # The real node: the labelled busybox pod's connects, named from the API server.
        real = by_node[node.name]
        assert all(r["src"].get("pod") == client_name and r["src"]["namespace"] == ns
                   for r in real), real[:3]
        assert any(r["result"] == "ok" for r in real)
        # Each simulated node: the lab pod whose namespace it watches, and only it.
        assert {r["src"].get("pod") for r in by_node["node-a"]} == {"mypod"}
        assert {r["src"].get("pod") for r in by_node["node-b"]} == {"frontend"}
        assert {r["dport"] for r in by_node["node-a"]} == {7070}
        # One stream, interleaved by time across the three nodes.
        times = [r["time"] for r in records]
        assert times == sorted(times)
        report = json.loads(summary.read_text())
        rows = {n["node"]: n for n in report["nodes"]}
        assert set(rows) == {node.name, *sims}, rows
        for name, row in rows.items():
            assert row["state"] == "done", row
            assert row["records"] == len(by_node[name]), (name, row)
            assert row["lost_gaps"] == 0 and row["duplicates"] == 0, row
        assert report["records"] == len(records)
        assert rows[node.name]["address"].startswith("127.0.0.1:")  # its port-forward
        assert {rows[n]["address"] for n in sims} == {a.addr for a in running}
        assert "from 3 of 3 nodes" in text, text
    finally:
        node.run("delete", "namespace", ns, "--wait=false", check=False)
        proc = run_plugin(["undeploy", "--timeout", "120"], env)
    assert proc.returncode == 0, proc.stderr
    assert leftovers(node) == []
