"""Runtime clients against real sockets: absent, dead, silent, and a real containerd running
real containers (runc, an image built here from busybox), with ctr and the kernel as oracles."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from identity_local_containerd import (
    IMAGE_REF,
    PrivateContainerd,
    build_busybox_image,
    running_containerd,
)
from identity_local_podman import PrivatePodman
from identity_local_sys import (
    bpftrace_cgroup_of,
    cgroup_mounts,
    leftover_cgroups,
    remove_cgroup_tree,
)

from podsight.identity.local import (
    CgroupContainer,
    ContainerdClient,
    ContainerInfo,
    DockerClient,
    LocalIdentity,
    PodmanClient,
    RuntimeClient,
    RuntimeState,
)
from podsight.identity.local.cgroups import cgroup2_root


def clients_at(path: str, timeout: float = 2.0) -> list[RuntimeClient]:
    return [
        DockerClient(path, timeout=timeout),
        PodmanClient(path, timeout=timeout),
        ContainerdClient(path, timeout=timeout),
    ]


def test_missing_socket_means_absent(tmp_path: Path) -> None:
    for client in clients_at(str(tmp_path / "nothing.sock")):
        listing = client.list_containers()
        assert listing.state is RuntimeState.ABSENT
        assert listing.containers == () and listing.warning == ""
        client.close()


def test_stale_socket_is_a_warning_not_an_error(tmp_path: Path) -> None:
    """A socket file whose daemon died: connection refused, reported, not raised."""
    path = str(tmp_path / "stale.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.close()  # the file stays; nobody listens
    for client in clients_at(path):
        listing = client.list_containers()
        assert listing.state is RuntimeState.UNREACHABLE, listing
        assert path in listing.warning
        assert "refused" in listing.warning or "UNAVAILABLE" in listing.warning, listing.warning
        client.close()


class SilentServer:
    """A real unix socket that accepts connections and then says nothing (a hung daemon),
    or says something that is not the protocol the client speaks."""

    def __init__(self, path: str, reply: bytes = b"") -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        self.reply = reply
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.conns.append(conn)
            if self.reply:
                conn.sendall(self.reply)
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for conn in self.conns:
            conn.close()
        self.sock.close()


def test_silent_socket_times_out_with_a_warning(tmp_path: Path) -> None:
    path = str(tmp_path / "hung.sock")
    server = SilentServer(path)
    try:
        for client in clients_at(path, timeout=0.5):
            listing = client.list_containers()  # a hang here fails the whole run
            assert listing.state is RuntimeState.UNREACHABLE, listing
            assert "timed out" in listing.warning, listing.warning
            client.close()
    finally:
        server.close()


def test_wrong_protocol_is_a_warning(tmp_path: Path) -> None:
    path = str(tmp_path / "garbage.sock")
    server = SilentServer(path, reply=b"SSH-2.0-not-a-container-runtime\r\n")
    try:
        for client in clients_at(path, timeout=1.0):
            listing = client.list_containers()
            assert listing.state is RuntimeState.UNREACHABLE, listing
            assert listing.warning
            client.close()
    finally:
        server.close()


# --- a real containerd ----------------------------------------------------------------


@pytest.fixture(scope="module")
def containerd() -> Iterator[PrivateContainerd]:
    """A private containerd with the busybox image imported, stopped and removed after."""
    with running_containerd(need_cgroup2=False) as daemon:
        yield daemon


@pytest.fixture
def netns() -> Iterator[str]:
    name = "podsight-test-" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def cgroup_top() -> Iterator[str]:
    """A podsight-test-* cgroup parent for containers, removed from every hierarchy after."""
    top = "podsight-test-" + secrets.token_hex(4)
    try:
        yield top
    finally:
        for mount in cgroup_mounts():
            remove_cgroup_tree(mount, top)
        assert not [p for p in leftover_cgroups() if top in p]


def proc_cgroup_v2(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].rstrip("\n")
    raise AssertionError(f"pid {pid} has no cgroup v2 line")


def test_containerd_client_against_real_containers(
    containerd: PrivateContainerd, netns: str, cgroup_top: str
) -> None:
    """Two real containers: a "pod" one (kubelet's labels, a pod netns, kubelet's cgroupfs
    layout) and a plain ``ctr run`` one (its own netns, containerd's default cgroup)."""
    pod_uid = str(uuid.uuid4())
    pod_cid = secrets.token_hex(32)
    plain_cid = "plain-" + secrets.token_hex(4)
    pod_cgroup = f"/{cgroup_top}/kubepods/besteffort/pod{pod_uid}/{pod_cid}"
    labels = {
        "io.kubernetes.pod.name": "web-7d4b9c",
        "io.kubernetes.pod.namespace": "shop",
        "io.kubernetes.pod.uid": pod_uid,
        "io.kubernetes.container.name": "nginx",
        "app": "web",
    }
    # The pod container's shell forks a sleep every 50 ms: syscalls a tracer can see.
    pod_task = containerd.run(
        pod_cid, labels=labels, netns=f"/var/run/netns/{netns}", cgroup=pod_cgroup,
        args=("sh", "-c", "while true; do sleep 0.05; done"),
    )
    plain_task = containerd.run(plain_cid)
    created_cid = "created-" + secrets.token_hex(4)
    containerd.containers.append(created_cid)
    containerd.ctr("container", "create", IMAGE_REF, created_cid)

    client = ContainerdClient(containerd.socket)
    try:
        server_version = containerd.ctr("version").stdout.split("Server:")[1]
        version, revision = client.version()
        assert f"Version:  {version}" in server_version and revision in server_version
        assert containerd.namespace in client.namespaces()

        listing = client.list_containers()
        assert listing.state is RuntimeState.OK, listing.warning
        mine = {c.id: c for c in listing.containers if c.namespace == containerd.namespace}
        assert set(mine) == {pod_cid, plain_cid}  # the created-only container has no task

        pod = mine[pod_cid]
        assert pod.pid == pod_task.pid == containerd.task_pids()[pod_cid]
        assert (pod.runtime, pod.name, pod.image) == ("containerd", "nginx", IMAGE_REF)
        assert (pod.pod_namespace, pod.pod_name, pod.pod_uid) == ("shop", "web-7d4b9c", pod_uid)
        assert pod.labels["app"] == "web" and not pod.sandbox and pod.in_pod
        assert pod.netns == os.stat(f"/var/run/netns/{netns}").st_ino
        assert pod.cgroup_path == pod_cgroup == proc_cgroup_v2(pod.pid)

        plain = mine[plain_cid]
        assert plain.pid == plain_task.pid
        assert (plain.name, plain.pod_uid, plain.in_pod) == (plain_cid, "", False)
        assert plain.netns == os.stat(f"/proc/{plain.pid}/ns/net").st_ino
        assert plain.netns not in (pod.netns, os.stat("/proc/self/ns/net").st_ino)
        assert plain.cgroup_path == f"/{containerd.namespace}/{plain_cid}"

        only = ContainerdClient(containerd.socket, namespaces=[containerd.namespace])
        assert {c.id for c in only.list_containers().containers} == {pod_cid, plain_cid}
        only.close()

        check_local_identity(client, pod, plain)
    finally:
        client.close()


def check_local_identity(
    client: ContainerdClient, pod: ContainerInfo, plain: ContainerInfo
) -> None:
    """The facade joins cgroups, /proc and the runtime listing for real containers."""
    root = cgroup2_root()
    assert root is not None
    with LocalIdentity(runtimes=[client]) as identity:
        identity.refresh()
        pod_cgroup_id = os.stat(root + pod.cgroup_path).st_ino
        plain_cgroup_id = os.stat(root + plain.cgroup_path).st_ino
        if shutil.which("bpftrace"):
            # What podsight's BPF programs will put in events from inside the container.
            probe = "tracepoint:raw_syscalls:sys_enter"
            assert bpftrace_cgroup_of(pod.pid, probe) == pod_cgroup_id

        # cgroupfs layout names no runtime: the listing fills it in.
        assert identity.container_for_cgroup(pod_cgroup_id) == CgroupContainer(
            pod.pod_uid, pod.id, "containerd"
        )
        # `ctr run`'s /<namespace>/<id> follows no convention: only the listing knows it.
        assert identity.container_for_cgroup(plain_cgroup_id) == CgroupContainer(
            "", plain.id, "containerd"
        )
        assert identity.container_for_pid(pod.pid) == pod
        assert identity.container_for_pid(plain.pid) == plain
        assert identity.container(pod.id) == pod
        assert pod in identity.containers_in_netns(pod.netns)
        info = identity.process(pod.pid)
        assert info is not None
        assert (info.comm, info.netns, info.cgroup_id) == ("sh", pod.netns, pod_cgroup_id)
        assert info.mntns != os.stat("/proc/self/ns/mnt").st_ino  # the container's rootfs
        # A child of the container's init (a short-lived `sleep`) resolves to the same pod.
        children = Path(f"/proc/{pod.pid}/task/{pod.pid}/children").read_text().split()
        for child in children:
            found = identity.container_for_pid(int(child))
            assert found is None or found.id == pod.id  # None: it exited before we looked


# --- a real podman, through the Docker Engine API -----------------------------------------


@pytest.fixture(scope="module")
def podman() -> Iterator[PrivatePodman]:
    """A private ``podman system service`` with the busybox image loaded, removed after."""
    if os.geteuid() != 0:
        pytest.skip("running containers needs root")
    if shutil.which("podman") is None or not os.path.exists("/usr/bin/busybox"):
        pytest.skip("needs Debian's podman and busybox-static")
    run_before = set(os.listdir("/run"))
    service = PrivatePodman()
    try:
        service.start()
        service.load(build_busybox_image(service.dir))
        yield service
    finally:
        service.stop()
        assert not service.dir.exists()
        assert set(os.listdir("/run")) - run_before <= {"netns"}, "podman left state in /run"
        for path, existed in service._existed.items():
            assert path.exists() == existed, f"podman left {path} behind"


def test_docker_api_clients_against_real_podman(
    podman: PrivatePodman, netns: str, cgroup_top: str
) -> None:
    """The Docker Engine API client, on podman's compat API, lists real containers."""
    pod_uid = str(uuid.uuid4())
    labels = {
        "io.kubernetes.pod.name": "api-0",
        "io.kubernetes.pod.namespace": "shop",
        "io.kubernetes.pod.uid": pod_uid,
        "io.kubernetes.container.name": "server",
    }
    pod_id, pod_pid = podman.run("k8s_server_api-0", labels=labels,
                                 netns=f"/var/run/netns/{netns}", cgroup_parent=f"/{cgroup_top}")
    plain_id, plain_pid = podman.run("plain", cgroup_parent=f"/{cgroup_top}")
    podman.podman("create", "--name", "never-started", IMAGE_REF)

    for client in (PodmanClient(podman.socket), DockerClient(podman.socket)):
        listing = client.list_containers()
        assert listing.state is RuntimeState.OK, listing.warning
        found = {c.id: c for c in listing.containers}
        assert set(found) == {pod_id, plain_id}  # created-only containers do not run

        pod = found[pod_id]
        assert (pod.runtime, pod.name, pod.pid) == (client.runtime, "server", pod_pid)
        assert (pod.pod_namespace, pod.pod_name, pod.pod_uid) == ("shop", "api-0", pod_uid)
        assert pod.image == IMAGE_REF
        assert pod.netns == os.stat(f"/var/run/netns/{netns}").st_ino
        assert pod.cgroup_path == f"/{cgroup_top}/libpod-{pod_id}" == proc_cgroup_v2(pod_pid)

        plain = found[plain_id]
        assert (plain.name, plain.pid, plain.in_pod) == ("plain", plain_pid, False)
        assert plain.netns == os.stat(f"/proc/{plain_pid}/ns/net").st_ino
        assert plain.netns not in (pod.netns, os.stat("/proc/self/ns/net").st_ino)

    root = cgroup2_root()
    assert root is not None
    client = PodmanClient(podman.socket)
    with LocalIdentity(runtimes=[client]) as identity:
        identity.refresh()
        pod_cgroup = os.stat(root + f"/{cgroup_top}/libpod-{pod_id}").st_ino
        # The path says podman and the ID; the labels the runtime lists add the pod UID.
        assert identity.container_for_cgroup(pod_cgroup) == CgroupContainer(
            pod_uid, pod_id, "podman"
        )
        found_pod = identity.container_for_pid(pod_pid)
        assert found_pod is not None and found_pod.pod_name == "api-0"
        plain_found = identity.container_for_pid(plain_pid)
        assert plain_found is not None and plain_found.id == plain_id
