"""pytest fixtures: a real kube-apiserver 1.20 + etcd on loopback, and tools to hurt it.

Import the fixtures into a test module (``from k8s.fixtures import kube, core, ...``).
Every module that imports ``kube`` gets the same cluster: pytest makes one
fixture definition per importing module, so the cluster itself is a
process-wide singleton, started once and stopped at session end (and by the
watchdog if pytest is killed). Only a missing apiserver binary skips;
``tests/k8s/build-apiserver.sh`` builds it.

The official ``kubernetes`` client is the oracle that writes objects; the
code under test reads them through its own informers.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

K8S = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("PODSIGHT_K8S_CACHE", Path.home() / ".cache/podsight-k8s"))
APISERVER = Path(os.environ.get("PODSIGHT_KUBE_APISERVER", CACHE / "bin/kube-apiserver"))

T = TypeVar("T")


# --------------------------------------------------------------------- cluster
@dataclass
class Cluster:
    """One running cluster: its directory and the KEY=value lines of DIR/env."""

    dir: Path
    env: dict[str, str] = field(default_factory=dict)
    stopped: bool = False

    @property
    def kubeconfig(self) -> str:
        return self.env["KUBECONFIG"]

    @property
    def server(self) -> str:
        return self.env["K8S_SERVER"]

    @property
    def token(self) -> str:
        return self.env["K8S_TOKEN"]

    @property
    def ca_file(self) -> str:
        return self.env["K8S_CA_FILE"]

    @property
    def port(self) -> int:
        return int(self.server.rsplit(":", 1)[1])

    def reload_env(self) -> None:
        text = (self.dir / "env").read_text()
        self.env = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def apiserver(self, action: str = "restart") -> None:
        """Stop, start or restart only the apiserver (same flags, same etcd data)."""
        subprocess.run([str(K8S / "restart-apiserver.sh"), str(self.dir), action], check=True,
                       capture_output=True, timeout=120)
        self.reload_env()

    def etcd_revision(self) -> int:
        out = _etcd_gateway(self.env["ETCD_ENDPOINT"], "kv/range", {"key": "AA=="})
        return int(out["header"]["revision"])

    def compact_etcd(self, revision: int | None = None) -> int:
        """Compact etcd history up to ``revision`` (default: now), like etcd's own compactor."""
        rev = revision or self.etcd_revision()
        etcdctl = shutil.which("etcdctl")
        if etcdctl:
            subprocess.run([etcdctl, "--endpoints", self.env["ETCD_ENDPOINT"], "compact",
                            str(rev), "--physical"], check=True, capture_output=True,
                           env=dict(os.environ, ETCDCTL_API="3"), timeout=30)
        else:  # etcd's HTTP gateway does the same without the etcd-client package
            _etcd_gateway(self.env["ETCD_ENDPOINT"], "kv/compaction",
                          {"revision": str(rev), "physical": True})
        return rev

    def kubeconfig_for(self, path: Path, *, server: str | None = None,
                       token: str | None = None) -> str:
        """Write a kubeconfig for this cluster with another server URL or token."""
        ca = base64.b64encode(Path(self.ca_file).read_bytes()).decode()
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "c", "cluster": {"server": server or self.server,
                                                  "certificate-authority-data": ca}}],
            "users": [{"name": "u", "user": {"token": token or self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}],
        }))
        return str(path)


def _etcd_gateway(endpoint: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(f"{endpoint}/v3/{path}", data=json.dumps(body).encode(),
                                 method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        out: dict[str, Any] = json.load(resp)
    return out


_CLUSTERS: dict[str, Cluster] = {}
_LOCK = threading.Lock()


def _start(variant: str, base: Path, extra_args: str) -> Cluster:
    if not APISERVER.exists():
        pytest.skip(f"no kube-apiserver at {APISERVER}: run {K8S}/build-apiserver.sh first")
    with _LOCK:
        if variant in _CLUSTERS and not _CLUSTERS[variant].stopped:
            return _CLUSTERS[variant]
        d = base / variant
        env = dict(os.environ, PODSIGHT_K8S_WATCH_PID=str(os.getpid()))
        if extra_args:
            env["PODSIGHT_K8S_APISERVER_ARGS"] = extra_args
        proc = subprocess.run([str(K8S / "start-cluster.sh"), str(d)], env=env, timeout=180,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            subprocess.run([str(K8S / "stop-cluster.sh"), str(d)], check=False,
                           capture_output=True)
            raise RuntimeError(f"start-cluster.sh failed:\n{proc.stderr[-3000:]}")
        cluster = Cluster(d)
        cluster.reload_env()
        _CLUSTERS[variant] = cluster
        return cluster


def _stop(cluster: Cluster) -> None:
    with _LOCK:
        if cluster.stopped:
            return
        cluster.stopped = True
    subprocess.run([str(K8S / "stop-cluster.sh"), str(cluster.dir)], check=False,
                   capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The shared cluster (watch cache on, as in production)."""
    cluster = _start("kube", tmp_path_factory.getbasetemp(), "")
    try:
        yield cluster
    finally:
        _stop(cluster)


@pytest.fixture(scope="session")
def kube_etcd_watch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A second cluster whose apiserver watches etcd directly (``--watch-cache=false``).

    With the watch cache on, a stale resourceVersion is judged against the
    cache's event window; without it, against etcd's compacted revision, which
    is what a compaction test needs to control.
    """
    cluster = _start("kube-etcd-watch", tmp_path_factory.getbasetemp(), "--watch-cache=false")
    try:
        yield cluster
    finally:
        _stop(cluster)


# ------------------------------------------------------------ client (oracle)
def api_client(cluster: Cluster) -> Any:
    from kubernetes import config

    new_client: Any = config.new_client_from_config  # untyped in the client
    return new_client(config_file=cluster.kubeconfig)


@pytest.fixture(scope="session")
def core(kube: Cluster) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client(kube))


@pytest.fixture
def namespace(kube: Cluster, core: Any) -> str:
    """A fresh namespace per test: deleted namespaces stay Terminating forever here."""
    return make_namespace(core)


def make_namespace(core: Any, labels: dict[str, str] | None = None) -> str:
    name = "t-" + uuid.uuid4().hex[:10]
    core.create_namespace({"metadata": {"name": name, "labels": labels or {}}})
    return name


_ip_counter = itertools.count(1)


def fresh_ip() -> str:
    """A pod IP no other test uses (tests share one cluster and see each other's pods)."""
    n = next(_ip_counter) + (os.getpid() % 50) * 1000
    return f"10.{200 + n // 65536}.{(n // 256) % 256}.{n % 256}"


def make_pod(core: Any, ns: str, name: str, *, ip: str | None = None, node: str = "node-a",
             labels: dict[str, str] | None = None, owner: dict[str, Any] | None = None,
             containers: tuple[str, ...] = ("app",), host_network: bool = False,
             phase: str = "Running") -> dict[str, Any]:
    """Create a pod bound to ``node`` (so it survives) and give it an IP via status."""
    meta: dict[str, Any] = {"name": name, "labels": labels or {}}
    if owner:
        meta["ownerReferences"] = [owner]
    body = {"metadata": meta, "spec": {
        "nodeName": node, "hostNetwork": host_network,
        "containers": [{"name": c, "image": "example.invalid/app:1"} for c in containers]}}
    core.create_namespaced_pod(ns, body)
    if ip:
        set_pod_ip(core, ns, name, ip, phase=phase)
    return body


def set_pod_ip(core: Any, ns: str, name: str, ip: str, phase: str = "Running") -> None:
    core.patch_namespaced_pod_status(
        name, ns, {"status": {"phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}})


def delete_pod(core: Any, ns: str, name: str) -> None:
    core.delete_namespaced_pod(name, ns, grace_period_seconds=0)


def owner_ref(kind: str, name: str, uid: str, api_version: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def eventually(fn: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T = fn()
    while not last:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(0.05)
        last = fn()
    return last


# ------------------------------------------------------------- fault injection
class FaultProxy:
    """A loopback TCP forwarder in front of the apiserver that a test can cut.

    ``cut()`` drops every open connection and refuses new ones (as a network
    partition or a restarting load balancer would) while the apiserver keeps
    accepting changes from the oracle, so the code under test misses events
    deterministically. ``restore()`` lets it reconnect. TLS passes through
    untouched; the serving certificate is valid for 127.0.0.1 on any port.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._cut = False
        self._closing = False
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closing = True
        self.cut()
        self._accepter.join(2)
        for t in self._threads:
            t.join(2)
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                refused = self._cut
            if refused:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks.update((client, upstream))
            done = threading.Semaphore(0)
            for a, b in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pump, args=(a, b, done), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, done: threading.Semaphore) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        if done.acquire(blocking=False):  # the other direction ended first: close both
            with self._lock:
                for s in (src, dst):
                    self._socks.discard(s)
                    s.close()
        else:
            done.release()


def free_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
