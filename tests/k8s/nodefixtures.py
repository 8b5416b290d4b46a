"""pytest fixtures: a real single-node Kubernetes 1.20 cluster, and the agent image in it.

``node`` starts tests/k8s/node/start-node.sh once per session (etcd, apiserver,
controller-manager, scheduler, containerd + runc + CNI bridge, a kubelet
registered as ``node-proto``) and stops it at session end with stop-node.sh,
whose last line must be ``clean: nothing of the node is left``. The
watchdog (PODSIGHT_K8S_WATCH_PID) stops it if pytest dies. The node's names
are fixed (one per machine), so it runs under the lab lock: the fixture
depends on ``lab``, which holds /run/podsight-tests.lock for the session.

``agent_image`` builds the podsight agent image of this checkout
(build-agent-image.sh: the cached Debian + dependencies layer, plus this
wheel) and imports it into the node's containerd.

Only missing node binaries skip (``make k8s-node`` builds them); everything
else that goes wrong fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from podsight.cluster.kubectl import Kubectl
from podsight.lab import Lab

K8S = Path(__file__).resolve().parent
NODE = K8S / "node"
ROOT = K8S.parent.parent
CACHE = Path(os.environ.get("PODSIGHT_K8S_CACHE", Path.home() / ".cache/podsight-k8s"))
NODE_BINS = ("kube-apiserver", "kubelet", "kube-controller-manager", "kube-scheduler",
             "node-proto-cri")
BUSYBOX = "localhost/node-proto/busybox:1"


@dataclass
class Node:
    """The running node: its directory and the KEY=value lines of DIR/env."""

    dir: Path
    env: dict[str, str] = field(default_factory=dict)
    images: set[str] = field(default_factory=set)

    @property
    def kubeconfig(self) -> str:
        return self.env["KUBECONFIG"]

    @property
    def kubectl_bin(self) -> str:
        return self.env["KUBECTL"]

    @property
    def name(self) -> str:
        return self.env["NODE_NAME"]

    @property
    def api_port(self) -> int:
        return int(self.env["K8S_SERVER"].rsplit(":", 1)[1])

    def kubectl(self) -> Kubectl:
        return Kubectl(self.kubectl_bin, self.kubeconfig)

    def run(self, *args: str, stdin: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """kubectl ARGS against this node's apiserver (the oracle's kubectl, 1.20)."""
        proc = subprocess.run([self.kubectl_bin, "--kubeconfig", self.kubeconfig, *args],
                              input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): "
                                 f"{proc.stderr.strip()[-2000:]}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def import_image(self, tar: str) -> None:
        subprocess.run(["ctr", "-a", self.env["CONTAINERD_SOCK"], "-n", "k8s.io", "images",
                        "import", tar], check=True, capture_output=True, timeout=300)

    def tool_env(self) -> dict[str, str]:
        """Environment for ``kubectl-podsight``: this node's kubeconfig and kubectl 1.20."""
        return dict(os.environ, KUBECONFIG=self.kubeconfig, KUBECTL=self.kubectl_bin,
                    PYTHONPATH=str(ROOT / "src"))


def overlay(tmp: Path, node: Node, *, privileged: bool = False) -> Path:
    """A kustomize overlay of deploy/ for this machine.

    It drops SYS_RESOURCE (the VM withholds it from root, so runc cannot grant it),
    points the agent at the API server on 127.0.0.1 (no kube-proxy: the
    ``kubernetes`` Service does not route), and mounts the node's own containerd
    socket directory.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    caps = ["BPF", "PERFMON", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"]
    ops: list[dict[str, Any]] = [
        {"op": "replace", "path": "/spec/template/spec/containers/0/securityContext",
         "value": {"privileged": privileged, "capabilities": {"drop": ["ALL"], "add": caps}}},
        {"op": "add", "path": "/spec/template/spec/containers/0/env/-",
         "value": {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"}},
        {"op": "add", "path": "/spec/template/spec/containers/0/env/-",
         "value": {"name": "KUBERNETES_SERVICE_PORT", "value": str(node.api_port)}},
        {"op": "replace", "path": "/spec/template/spec/volumes/5/hostPath/path",
         "value": str(Path(node.env["CONTAINERD_SOCK"]).parent)},
    ]
    (tmp / "agent-patch.yaml").write_text(yaml.safe_dump(ops))
    (tmp / "kustomization.yaml").write_text(yaml.safe_dump({
        "bases": [os.path.relpath(ROOT / "deploy", tmp)],
        "patchesJson6902": [{"target": {"group": "apps", "version": "v1", "kind": "DaemonSet",
                                        "name": "podsight-agent", "namespace": "podsight"},
                             "path": "agent-patch.yaml"}],
    }))
    return tmp


def _read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


_NODE: Node | None = None
_LOCK = threading.Lock()


@pytest.fixture(scope="session")
def node(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """The real node, started once per session (about 20 s) and stopped clean at its end."""
    global _NODE
    missing = [b for b in NODE_BINS if not (CACHE / "bin" / b).exists()]
    if missing:
        pytest.skip(f"no {', '.join(missing)} in {CACHE}/bin: run 'make k8s-node'")
    with _LOCK:
        if _NODE is None:
            d = tmp_path_factory.getbasetemp() / "node"
            env = dict(os.environ, PODSIGHT_K8S_WATCH_PID=str(os.getpid()))
            proc = subprocess.run([str(NODE / "start-node.sh"), str(d)], env=env, timeout=300,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                subprocess.run([str(NODE / "stop-node.sh"), str(d)], check=False,
                               capture_output=True, timeout=120)
                raise RuntimeError(f"start-node.sh failed:\n{proc.stderr[-3000:]}")
            _NODE = Node(d, _read_env(d / "env"))
    try:
        yield _NODE
    finally:
        with _LOCK:
            if _NODE is not None:
                stop_node(_NODE)
                _NODE = None


def stop_node(n: Node) -> None:
    proc = subprocess.run([str(NODE / "stop-node.sh"), str(n.dir)], capture_output=True,
                          text=True, timeout=180)
    last = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
    assert proc.returncode == 0 and "clean: nothing of the node is left" in last[0], \
        f"stop-node.sh left the node behind: {last[0]}\n{proc.stderr[-2000:]}"


@pytest.fixture(scope="session")
def agent_image(node: Node) -> str:
    """The agent image of this checkout, imported into the node: its reference."""
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run([str(NODE / "build-agent-image.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"build-agent-image.sh failed:\n{proc.stderr[-3000:]}"
    out = _read_env_text(proc.stdout)
    ref, tar = out["AGENT_IMAGE"], out["AGENT_IMAGE_TAR"]
    if ref not in node.images:
        node.import_image(tar)
        node.images.add(ref)
    return ref


def _read_env_text(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def wait_for(fn: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = fn()
    while not last:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)
        last = fn()
    return last
