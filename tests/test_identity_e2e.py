"""Identity end to end, real everything: a busybox container run by a real containerd inside a
lab pod's network namespace, with kubelet's labels and cgroup layout, connects to another lab
pod; ``podsight trace tcpconnect`` must name the container and its pod from the event's cgroup
(through the runtime's listing, or through the Kubernetes API by pod UID), and ``-c`` must
select it by that container name."""

# ruff: noqa: F401, F811  (pytest fixtures are imported, then named as parameters)

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from identity_local_containerd import PrivateContainerd, running_containerd
from identity_local_sys import cgroup_mounts, leftover_cgroups, remove_cgroup_tree
from k8s.fixtures import (
    core,  # fixture
    delete_pod,
    kube,  # fixture
    make_namespace,
    make_pod,
)
from tracing import Trace, connect, matching

from podsight.identity.local.cgroups import cgroup2_root

pytestmark = pytest.mark.root

WEB_PORT = 8080


# --- a private containerd and busybox containers in lab pods ---------------------------------


@pytest.fixture(scope="module")
def containerd() -> Iterator[PrivateContainerd]:
    """A private containerd with the busybox image imported, stopped and removed after."""
    with running_containerd(need_cgroup2=True) as daemon:
        yield daemon


@pytest.fixture
def cgroup_top() -> Iterator[str]:
    """A podsight-test-* cgroup parent standing in for kubelet's root, removed after."""
    top = "podsight-test-" + secrets.token_hex(4)
    try:
        yield top
    finally:
        for mount in cgroup_mounts():
            remove_cgroup_tree(mount, top)
        assert not [p for p in leftover_cgroups() if top in p]


@dataclass
class Connector:
    """A container whose init waits on a fifo, then *becomes* ``nc`` to the target (exec keeps
    the pid): the connect comes from the container's own pid, when the test says so, and the
    connection stays open until the test closes its end of the fifo."""

    container_id: str
    pid: int
    cgroup: str
    _fd: int = -1

    def connect(self, timeout: float = 10.0) -> None:
        fifo = f"/proc/{self.pid}/root/tmp/go"
        deadline = time.monotonic() + timeout
        while True:
            try:  # non-blocking: fails with ENXIO until the shell has opened its end
                self._fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                return
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENXIO) or time.monotonic() > deadline:
                    raise
            time.sleep(0.02)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@contextlib.contextmanager
def connector(containerd: PrivateContainerd, cgroup_top: str, netns: str, target: str, *,
              labels: dict[str, str], pod_uid: str) -> Iterator[Connector]:
    """A busybox container joined to ``netns`` (a lab pod's) in kubelet's cgroupfs layout
    (``kubepods/besteffort/pod<uid>/<container id>``), removed on the way out."""
    container_id = secrets.token_hex(32)
    cgroup = f"/{cgroup_top}/kubepods/besteffort/pod{pod_uid}/{container_id}"
    script = (f"/bin/busybox mkfifo /tmp/go && "
              f"exec /bin/busybox nc {target} {WEB_PORT} </tmp/go")
    task = containerd.run(container_id, labels=labels, netns=f"/var/run/netns/{netns}",
                          cgroup=cgroup, args=("sh", "-c", script))
    c = Connector(container_id, task.pid, cgroup)
    try:
        yield c
    finally:
        c.release()
        containerd.remove(container_id)


def kubelet_labels(namespace: str, pod: str, container: str, uid: str) -> dict[str, str]:
    """What kubelet (through CRI) puts on every container of a pod."""
    return {"io.kubernetes.pod.namespace": namespace, "io.kubernetes.pod.name": pod,
            "io.kubernetes.pod.uid": uid, "io.kubernetes.container.name": container}


def runtime_flags(containerd: PrivateContainerd) -> tuple[str, ...]:
    return ("--runtimes", "containerd", "--containerd-socketpath", containerd.socket)


def trace(*flags: str, output: str = "json") -> Trace:
    """``podsight trace tcpconnect`` of connects to the lab's web port only: other work on
    this machine (a connect storm from a benchmark) stays out of these tests' output."""
    return Trace(*flags, "--dport", str(WEB_PORT), output=output)


def traced_connect(trace: Trace, c: Connector, expect_printed: bool = True) -> str:
    """Let the container connect and hold the connection until the trace printed it (or, when
    it must not print it, a little while); returns the process's comm, read from /proc."""
    c.connect()
    deadline = time.monotonic() + 10
    comm = ""
    while time.monotonic() < deadline:  # the shell execs nc once its fifo opened
        comm = Path(f"/proc/{c.pid}/comm").read_text().strip()
        if comm != "sh":
            break
        time.sleep(0.02)
    if expect_printed:
        assert trace.wait_printed(f'"pid":{c.pid},'), trace.peek()
    else:
        # Connected: its event is in the kernel's ring now, so the trace's final drain (after
        # it detaches) would print it if it were to be printed at all.
        wait_connected(c.pid)
    c.release()
    return comm


def wait_connected(pid: int, timeout: float = 10.0) -> None:
    """Until one of the process's sockets is an established TCP connection (procfs only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inodes = set()
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        for table in ("tcp", "tcp6"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as f:
                for row in f.read().splitlines()[1:]:
                    cols = row.split()
                    if cols[3] == "01" and cols[9] in inodes:  # TCP_ESTABLISHED
                        return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} never connected")


def one(events: list[dict[str, Any]], **want: Any) -> dict[str, Any]:
    found = matching(events, **want)
    assert len(found) == 1, f"expected one event matching {want}, got {found}"
    return found[0]


# --- without the API: the runtime's labels name the pod ------------------------------------------


def test_container_in_a_lab_pod_is_named_from_its_cgroup(lab, containerd, cgroup_top):
    mypod, web = lab.pod("mypod"), lab.pod("web")
    uid = str(uuid.uuid4())
    labels = kubelet_labels("default", "mypod", "busy", uid)
    with connector(containerd, cgroup_top, mypod.netns, web.ipv4, labels=labels,
                   pod_uid=uid) as c, trace(*runtime_flags(containerd)) as t:
        comm = traced_connect(t, c)
        lab_side = connect(lab, "mypod", web.ipv4, WEB_PORT)  # mypod's own container
    e = one(t.result.events, pid=c.pid)
    assert comm == "busybox" and e["comm"] == comm
    assert e["netns"] == os.stat(f"/var/run/netns/{mypod.netns}").st_ino
    assert e["src"]["endpoint"].startswith("p/default/mypod:")
    assert e["src"]["container"] == "busy"
    assert e["src"]["labels"] == mypod.labels  # the lab's pod, found by the labels' name
    assert e["dst"]["endpoint"] == f"p/default/web:{WEB_PORT}"
    assert e["result"] == "ok" and e["daddr"] == web.ipv4
    # The same namespace, another cgroup: the lab pod's own container, as before.
    other = one(t.result.events, pid=lab_side["pid"])
    assert other["src"]["endpoint"].startswith("p/default/mypod:")
    assert other["src"]["container"] == mypod.container != "busy"

    # The table shows the container's name in K8S.CONTAINERNAME.
    with connector(containerd, cgroup_top, mypod.netns, web.ipv4, labels=labels,
                   pod_uid=uid) as c, trace(*runtime_flags(containerd), output="") as t:
        traced_connect(t, c, expect_printed=False)
    header, *rows = t.result.stdout.splitlines()
    assert header.split()[:4] == ["K8S.NAMESPACE", "K8S.PODNAME", "K8S.CONTAINERNAME", "PID"]
    assert any(r.split()[:4] == ["default", "mypod", "busy", str(c.pid)] for r in rows), rows


def test_containername_flag_selects_runtime_containers(lab, containerd, cgroup_top):
    mypod, web = lab.pod("mypod"), lab.pod("web")
    uid = str(uuid.uuid4())
    labels = kubelet_labels("default", "mypod", "busy", uid)
    with connector(containerd, cgroup_top, mypod.netns, web.ipv4, labels=labels,
                   pod_uid=uid) as c, trace(*runtime_flags(containerd), "-c", "busy") as t:
        traced_connect(t, c)
        lab_side = connect(lab, "mypod", web.ipv4, WEB_PORT)  # same netns, container "mypod"
    e = one(t.result.events, pid=c.pid)
    assert e["src"]["container"] == "busy"
    assert not matching(t.result.events, pid=lab_side["pid"])

    with connector(containerd, cgroup_top, mypod.netns, web.ipv4, labels=labels,
                   pod_uid=uid) as c, trace(*runtime_flags(containerd), "-c", "other") as t:
        traced_connect(t, c, expect_printed=False)
    assert not matching(t.result.events, pid=c.pid)
    assert t.result.returncode == 0


def test_plain_container_gets_its_runtime_name(lab, containerd, cgroup_top):
    """A container no pod owns (no kubelet labels, no pod in its cgroup path) sharing the lab
    pod's namespace: the namespace names the pod, the runtime names the container."""
    mypod, web = lab.pod("mypod"), lab.pod("web")
    container_id = "plain-" + secrets.token_hex(4)
    script = f"/bin/busybox mkfifo /tmp/go && exec /bin/busybox nc {web.ipv4} {WEB_PORT} </tmp/go"
    task = containerd.run(container_id, netns=f"/var/run/netns/{mypod.netns}",
                          cgroup=f"/{cgroup_top}/{container_id}", args=("sh", "-c", script))
    c = Connector(container_id, task.pid, f"/{cgroup_top}/{container_id}")
    try:
        with trace(*runtime_flags(containerd), "-c", container_id) as t:
            traced_connect(t, c)
    finally:
        c.release()
        containerd.remove(container_id)
    e = one(t.result.events, pid=c.pid)
    assert e["src"]["container"] == container_id  # ctr's container id is its name
    assert e["src"]["endpoint"].startswith("p/default/mypod:")


# --- with the API: the pod UID in the cgroup names the pod ---------------------------------------


def test_pod_is_named_from_the_api_by_the_uid_in_its_cgroup(lab, kube, core, containerd,
                                                             cgroup_top):
    """The API's pod has no IP and its name is nowhere on the container: only the UID in the
    cgroup path links them. Without the cgroup, the netns would say default/mypod."""
    mypod, web = lab.pod("mypod"), lab.pod("web")
    ns = make_namespace(core)
    make_pod(core, ns, "byuid", node=socket.gethostname(), labels={"app": "byuid"},
             containers=("busy",))
    try:
        uid = core.read_namespaced_pod("byuid", ns).metadata.uid
        for flags in (runtime_flags(containerd), ("--runtimes", "none")):
            with connector(containerd, cgroup_top, mypod.netns, web.ipv4, labels={},
                           pod_uid=uid) as c, trace("--kubeconfig", kube.kubeconfig,
                                                    *flags) as t:
                traced_connect(t, c)
            e = one(t.result.events, pid=c.pid)
            assert e["src"]["endpoint"].startswith(f"p/{ns}/byuid:"), flags
            assert e["src"]["container"] == "busy", flags  # the pod's only container
            assert e["src"]["labels"] == {"app": "byuid"}, flags
            assert e["dst"]["endpoint"] == f"p/default/web:{WEB_PORT}"

        # Selecting by the API pod's labels reaches the container's namespace.
        with connector(containerd, cgroup_top, mypod.netns, web.ipv4, labels={},
                       pod_uid=uid) as c, trace("--kubeconfig", kube.kubeconfig,
                                                *runtime_flags(containerd), "-l", "app=byuid") as t:
            traced_connect(t, c)
            lab_side = connect(lab, "mypod", web.ipv4, WEB_PORT)
        assert one(t.result.events, pid=c.pid)["src"]["endpoint"].startswith(f"p/{ns}/byuid:")
        assert not matching(t.result.events, pid=lab_side["pid"])
    finally:
        with contextlib.suppress(Exception):
            delete_pod(core, ns, "byuid")


# --- the pieces, without the lab: the UID index and the resolver's order of sources ------------


def _api_pod(name: str, uid: str, *, containers: tuple[str, ...] = ("app",),
             host_network: bool = False, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "shop", "uid": uid, "resourceVersion": "1",
                         "creationTimestamp": "2024-01-01T00:00:00Z", "labels": labels or {}},
            "spec": {"nodeName": "n1", "hostNetwork": host_network,
                     "containers": [{"name": c, "image": "i"} for c in containers]},
            "status": {"phase": "Running"}}


def _feed(cache: Any, kind: str, obj: dict[str, Any]) -> None:
    cache.informers["pods"].apply_watch_line(json.dumps({"type": kind, "object": obj}).encode())


def _list(cache: Any, items: list[dict[str, Any]]) -> None:
    body = {"kind": "List", "metadata": {"resourceVersion": "9"}, "items": items}
    cache.informers["pods"].apply_list_body(json.dumps(body).encode())


def test_pod_by_uid_follows_adds_updates_deletes_and_relists() -> None:
    from podsight.identity.kube import KubeCache

    cache = KubeCache()
    for inf in cache.informers.values():
        inf.apply_list_body(b'{"kind":"List","metadata":{"resourceVersion":"1"},"items":[]}')
    _feed(cache, "ADDED", _api_pod("a", "uid-a1"))
    assert cache.pod_by_uid("uid-a1").name == "a"  # type: ignore[union-attr]
    _feed(cache, "MODIFIED", _api_pod("a", "uid-a1", labels={"v": "2"}))
    assert cache.pod_by_uid("uid-a1").labels == {"v": "2"}  # type: ignore[union-attr]
    # Same name, new pod (a StatefulSet's pod comes back with a new UID).
    _feed(cache, "ADDED", _api_pod("a", "uid-a2"))
    assert cache.pod_by_uid("uid-a1") is None
    assert cache.pod_by_uid("uid-a2").name == "a"  # type: ignore[union-attr]
    _feed(cache, "ADDED", _api_pod("b", "uid-b"))
    _feed(cache, "DELETED", _api_pod("a", "uid-a2"))
    assert cache.pod_by_uid("uid-a2") is None
    _list(cache, [_api_pod("c", "uid-c")])  # a relist that missed b's deletion
    assert cache.pod_by_uid("uid-b") is None and cache.pod_by_uid("uid-c") is not None
    assert cache.pod_by_uid("") is None


class _StaticRuntime:
    """A runtime whose listing the test writes (the real ones are exercised above)."""

    runtime = "containerd"
    endpoint = "test"

    def __init__(self) -> None:
        self.containers: list[Any] = []

    def list_containers(self) -> Any:
        from podsight.identity.local import RuntimeListing, RuntimeState

        return RuntimeListing(self.runtime, self.endpoint, RuntimeState.OK,
                              tuple(self.containers))

    def close(self) -> None:
        pass


@pytest.fixture
def sandbox() -> Iterator[Any]:
    from identity_local_sys import CgroupSandbox

    if os.geteuid() != 0 or cgroup2_root() is None:
        pytest.skip("making cgroups needs root and a cgroup2 hierarchy")
    with CgroupSandbox() as box:
        yield box


def test_resolver_names_the_owner_by_cgroup_first(sandbox: Any, tmp_path: Path) -> None:
    from podsight.identity import Resolver
    from podsight.identity.kube import KubeCache
    from podsight.identity.lab import LabInventory
    from podsight.identity.local import ContainerInfo, LocalIdentity
    from podsight.selectors import NameList, PodSelector

    cache = KubeCache()
    for inf in cache.informers.values():
        inf.apply_list_body(b'{"kind":"List","metadata":{"resourceVersion":"1"},"items":[]}')
    uid = str(uuid.uuid4())
    _feed(cache, "ADDED", _api_pod("agent-x", uid, containers=("agent", "sidecar"),
                                   host_network=True, labels={"app": "agent"}))
    cid = secrets.token_hex(32)
    pod_cgroup = sandbox.mkdir(f"kubepods/besteffort/pod{uid}/{cid}")
    plain_cgroup = sandbox.mkdir("plain")
    runtime = _StaticRuntime()
    local = LocalIdentity(runtimes=[runtime], min_rescan_interval=3600.0)
    local.refresh()
    resolver = Resolver(lab=LabInventory(tmp_path / "none.json"), kube=cache, node_name="n1",
                        refresh_interval=0.0, local=local, local_interval=3600.0)
    try:
        host = resolver.host_netns
        pod_id = os.stat(sandbox.full(pod_cgroup)).st_ino
        # A hostNetwork pod: its netns is the node's, its cgroup says which pod.
        ep = resolver.local_endpoint("192.0.2.1", host, pod_id)
        assert (ep.kind, ep.namespace, ep.name, ep.container) == ("pod", "shop", "agent-x", "")
        assert resolver.local_endpoint("192.0.2.1", host, 0).kind == "node"  # no cgroup: as before

        # The runtime lists it: kubelet's label names the container (the pod has two).
        info = ContainerInfo("containerd", cid, "agent", pid=0, netns=host, pod_uid=uid,
                             labels={"io.kubernetes.container.name": "agent"},
                             cgroup_path=pod_cgroup)
        runtime.containers = [info]
        local.refresh()
        assert resolver.refresh()  # another listing: the memo is dropped
        assert resolver.local_endpoint("192.0.2.1", host, pod_id).container == "agent"
        # A process of that container that entered another netns speaks for that netns.
        assert resolver.local_endpoint("192.0.2.1", host + 1, pod_id).kind == "raw"

        # A plain container (no pod anywhere): the netns names the endpoint, the runtime
        # the container; -c selects it, in the kernel's netns set too.
        plain = ContainerInfo("containerd", "plain-1", "plain-1", pid=0, netns=host,
                              cgroup_path=plain_cgroup)
        runtime.containers = [info, plain]
        local.refresh()
        resolver.refresh()
        plain_id = os.stat(sandbox.full(plain_cgroup)).st_ino
        ep = resolver.local_endpoint("192.0.2.1", host, plain_id)
        assert (ep.kind, ep.container) == ("node", "plain-1")
        by_name = PodSelector(containers=NameList.parse("-c", "plain-1"))
        assert resolver.selects(by_name, ep, host) and host in resolver.selected_netns(by_name)
        other = PodSelector(containers=NameList.parse("-c", "other"))
        assert not resolver.selects(other, ep, host) and not resolver.selected_netns(other)
        agent = PodSelector(containers=NameList.parse("-c", "agent"))
        assert resolver.selected_netns(agent) == {host}

        # A cgroup made after the last walk (walks are rate limited): named by the netns
        # for now, and looked up again once a walk has seen it.
        late_uid = str(uuid.uuid4())
        _feed(cache, "ADDED", _api_pod("late", late_uid))
        resolver.refresh()
        late = sandbox.mkdir(f"kubepods/pod{late_uid}/{secrets.token_hex(32)}")
        late_id = os.stat(sandbox.full(late)).st_ino
        assert resolver.local_endpoint("192.0.2.1", host, late_id).kind == "node"
        local.cgroups.scan()
        resolver.refresh()
        ep = resolver.local_endpoint("192.0.2.1", host, late_id)
        assert (ep.name, ep.container) == ("late", "app")  # the pod's only container
    finally:
        resolver.close()
        local.close()
