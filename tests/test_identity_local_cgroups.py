"""cgroup id -> path -> (pod UID, container ID, runtime): the parser on real-world paths, and
the index on real cgroups made under the host's cgroup2 tree, with the kernel as oracle."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from identity_local_sys import (
    CgroupSandbox,
    bpftrace_cgroup_of,
    bpftrace_cgroupid,
    leftover_cgroups,
)

from podsight.identity.local import LocalIdentity
from podsight.identity.local.cgroups import (
    CgroupContainer,
    CgroupIndex,
    cgroup2_mounts,
    cgroup2_root,
    parse_cgroup_path,
    walk_cgroups,
)

UID = "5d4b3a2e-6a1c-4f7e-9b2d-8c3e1f0a7b6d"
UID_ = UID.replace("-", "_")
STATIC_UID = "0f3b5c7a9e1d2b4c6a8e0f2d4b6c8a0e"  # static pods: a manifest hash, no dashes
CID = "2a5f7d0e8c3b1a9f6e4d2c0b8a7f5e3d1c9b7a5f3e1d0c8b6a4f2e0d8c6b4a2f"
CID2 = "9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b"
NODE = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

SYSTEMD_BURSTABLE = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
SYSTEMD_BESTEFFORT = (
    f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
)

# (path as /proc/PID/cgroup shows it, expected owner); each seen on a real kind of host.
CASES: list[tuple[str, CgroupContainer | None]] = [
    # kubelet, systemd driver (kubeadm, EKS, GKE, AKS on cgroup v2), containerd
    (f"{SYSTEMD_BURSTABLE}/cri-containerd-{CID}.scope", CgroupContainer(UID, CID, "containerd")),
    # guaranteed QoS pods sit right under kubepods.slice
    (f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",
     CgroupContainer(UID, CID, "containerd")),
    # static (mirror) pods: UID is a 32-hex hash
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/"
     f"cri-containerd-{CID}.scope", CgroupContainer(STATIC_UID, CID, "containerd")),
    # CRI-O (OpenShift), its conmon in the pod slice, and crun's /container sub-cgroup
    (f"{SYSTEMD_BESTEFFORT}/crio-{CID}.scope", CgroupContainer(UID, CID, "cri-o")),
    (f"{SYSTEMD_BESTEFFORT}/crio-conmon-{CID}.scope", CgroupContainer(UID, "", "")),
    (f"{SYSTEMD_BESTEFFORT}/crio-{CID}.scope/container", CgroupContainer(UID, CID, "cri-o")),
    # docker behind kubelet (dockershim, cri-dockerd)
    (f"{SYSTEMD_BURSTABLE}/docker-{CID}.scope", CgroupContainer(UID, CID, "docker")),
    # a process in the pod's cgroup itself, and QoS-level cgroups that are nobody's
    (SYSTEMD_BURSTABLE, CgroupContainer(UID, "", "")),
    ("/kubepods.slice/kubepods-burstable.slice", None),
    ("/kubepods.slice", None),
    # kubelet, cgroupfs driver (k3s, older kubeadm, cgroup v1): bare IDs, runtime unknown
    (f"/kubepods/burstable/pod{UID}/{CID}", CgroupContainer(UID, CID, "")),
    (f"/kubepods/pod{UID}/{CID}", CgroupContainer(UID, CID, "")),
    (f"/kubepods/besteffort/pod{UID}/crio-{CID}", CgroupContainer(UID, CID, "cri-o")),
    (f"/kubepods/besteffort/pod{UID}", CgroupContainer(UID, "", "")),
    # a systemd cgroupsPath applied by a cgroupfs manager: one "slice:prefix:id" directory
    (f"/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{CID}",
     CgroupContainer(UID, CID, "containerd")),
    # kind: a pod inside a node that is itself a docker container; the pod wins
    (f"/system.slice/docker-{NODE}.scope/kubelet.slice/kubelet-kubepods.slice/"
     f"kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/"
     f"cri-containerd-{CID}.scope", CgroupContainer(UID, CID, "containerd")),
    # ... and the kind node's own processes belong to the node container
    (f"/system.slice/docker-{NODE}.scope/system.slice/containerd.service",
     CgroupContainer("", NODE, "docker")),
    # docker in a pod (dind): the innermost container, in its pod
    (f"/kubepods/burstable/pod{UID}/{CID}/docker/{CID2}", CgroupContainer(UID, CID2, "docker")),
    # plain docker: systemd and cgroupfs drivers
    (f"/system.slice/docker-{CID}.scope", CgroupContainer("", CID, "docker")),
    (f"/docker/{CID}", CgroupContainer("", CID, "docker")),
    # podman: root (machine.slice), crun's sub-cgroup, conmon, rootless, cgroupfs
    (f"/machine.slice/libpod-{CID}.scope", CgroupContainer("", CID, "podman")),
    (f"/machine.slice/libpod-{CID}.scope/container", CgroupContainer("", CID, "podman")),
    (f"/machine.slice/libpod-conmon-{CID}.scope", None),
    (f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope",
     CgroupContainer("", CID, "podman")),
    (f"/libpod_parent/libpod-{CID}", CgroupContainer("", CID, "podman")),
    (f"/libpod_parent/{CID}", CgroupContainer("", CID, "podman")),
    # nerdctl
    (f"/system.slice/nerdctl-{CID}.scope", CgroupContainer("", CID, "containerd")),
    # host processes, and names that only look like IDs
    ("/", None),
    ("", None),
    ("/init.scope", None),
    ("/system.slice/sshd.service", None),
    ("/user.slice/user-0.slice/session-3.scope", None),
    (f"/default/{CID}", None),  # `ctr run`: /<namespace>/<id>, a runtime listing tells
    (f"/somewhere/{CID}", None),
    (f"/system.slice/docker-{CID[:12]}.scope", None),  # short IDs are not IDs
    ("/kubepods/burstable/podnot-a-uid", None),
]


@pytest.mark.parametrize(("path", "expected"), CASES, ids=[c[0] or "empty" for c in CASES])
def test_parse_cgroup_path(path: str, expected: CgroupContainer | None) -> None:
    assert parse_cgroup_path(path) == expected


def test_cgroup2_mounts_parses_escapes(tmp_path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:7 - cgroup2 cgroup2 rw\n"
        "42 1 0:38 / /mnt/odd\\040name rw - cgroup2 cgroup2 rw\n"
    )
    assert cgroup2_mounts(str(mountinfo)) == ["/sys/fs/cgroup/unified", "/mnt/odd name"]
    assert cgroup2_root(str(mountinfo)) == "/sys/fs/cgroup/unified"
    (tmp_path / "v1only").write_text(
        "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
    )
    assert cgroup2_root(str(tmp_path / "v1only")) is None


def test_cgroup2_root_matches_findmnt() -> None:
    """The kernel's own account of mounts (through util-linux) agrees on cgroup2."""
    if shutil.which("findmnt") is None:
        pytest.skip("findmnt (util-linux) not installed")
    out = subprocess.run(["findmnt", "-n", "-t", "cgroup2", "-o", "TARGET"],
                         capture_output=True, text=True, check=False).stdout.split()
    assert cgroup2_mounts() == out
    if out:
        assert cgroup2_root() in out


# --- real cgroups ---------------------------------------------------------------------


@pytest.fixture
def sandbox() -> Iterator[CgroupSandbox]:
    """A podsight-test-* cgroup subtree, removed (with its processes) even on failure."""
    if os.geteuid() != 0:
        pytest.skip("making cgroups needs root")
    if cgroup2_root() is None:
        pytest.skip("no cgroup2 hierarchy mounted")
    box = CgroupSandbox()
    try:
        yield box
    finally:
        box.close()
        assert not [p for p in leftover_cgroups() if box.top in p]


def proc_cgroup_v2(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].rstrip("\n")
    raise AssertionError(f"pid {pid} has no cgroup v2 line")


def test_walk_ids_are_cgroup_ids(sandbox: CgroupSandbox) -> None:
    """The inode numbers a walk gets from getdents are the ids stat and the kernel report."""
    path = sandbox.mkdir(f"kubepods/besteffort/pod{UID}/{CID}")
    walked = dict(walk_cgroups(sandbox.mount))
    by_path = {p: i for i, p in walked.items()}
    prefix = path
    while prefix != "/":
        assert by_path[prefix] == os.stat(sandbox.full(prefix)).st_ino
        prefix = os.path.dirname(prefix)
    assert walked[os.stat(sandbox.mount).st_ino] == "/"
    if shutil.which("bpftrace"):
        assert bpftrace_cgroupid(sandbox.full(path)) == by_path[path]


@pytest.mark.parametrize("layout", ["systemd", "cgroupfs"])
def test_real_process_in_kubelet_layout(sandbox: CgroupSandbox, layout: str) -> None:
    """A real process moved into a kubelet-style cgroup resolves to its pod and container.

    The index exists before the cgroups do, as when a pod starts after podsight: the
    first lookup misses and re-walks. Oracles: /proc/PID/cgroup for the path, and
    bpftrace's ``cgroup`` builtin (``bpf_get_current_cgroup_id()``, what events
    carry) for the id.
    """
    index = CgroupIndex(sandbox.mount, min_rescan_interval=0.0)
    index.scan()
    if layout == "systemd":
        path = sandbox.mkdir(
            f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
            f"cri-containerd-{CID}.scope"
        )
        expected = CgroupContainer(UID, CID, "containerd")
    else:
        path = sandbox.mkdir(f"kubepods/besteffort/pod{UID}/{CID}")
        expected = CgroupContainer(UID, CID, "")
    proc = sandbox.spawn(path)
    cgroup_id = os.stat(sandbox.full(path)).st_ino
    assert proc_cgroup_v2(proc.pid) == path
    if shutil.which("bpftrace"):
        assert bpftrace_cgroup_of(proc.pid) == cgroup_id
    assert index.path(cgroup_id) == path
    assert index.owner(cgroup_id) == expected

    with LocalIdentity(cgroup_root=sandbox.mount, runtimes=[]) as identity:
        info = identity.process(proc.pid)
        assert info is not None
        assert (info.cgroup_path, info.cgroup_id) == (path, cgroup_id)
        assert identity.container_for_cgroup(cgroup_id) == expected
        container = identity.container_for_pid(proc.pid)
        assert container is not None
        assert (container.id, container.pod_uid, container.runtime) == (CID, UID, expected[2])


class ManualClock:
    """Time that moves only when the test says (rate limits and TTLs without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_miss_rescans_at_most_once_per_interval(sandbox: CgroupSandbox) -> None:
    clock = ManualClock()
    index = CgroupIndex(sandbox.mount, min_rescan_interval=5.0, clock=clock)
    index.scan()
    scans = index.scans
    path = sandbox.mkdir(f"kubepods/pod{UID}/{CID}")
    cgroup_id = os.stat(sandbox.full(path)).st_ino

    assert index.path(cgroup_id) is None  # within the interval: no walk
    assert index.scans == scans
    clock.now += 5.0
    assert index.path(cgroup_id) == path  # the miss walks once
    assert index.scans == scans + 1
    for _ in range(100):  # hits never walk
        assert index.path(cgroup_id) == path
    assert index.scans == scans + 1

    # An id that no walk finds is remembered as missing: later misses cost no walk.
    unknown = 2**62 + 12345
    clock.now += 5.0
    assert index.path(unknown) is None
    assert index.scans == scans + 2
    clock.now += 60.0
    assert index.path(unknown) is None
    assert index.owner(unknown) is None
    assert index.scans == scans + 2


def test_removed_cgroup_resolves_for_a_while(sandbox: CgroupSandbox) -> None:
    """Events of a container that just exited are still in flight when its cgroup goes."""
    clock = ManualClock()
    index = CgroupIndex(sandbox.mount, min_rescan_interval=0.0, tombstone_ttl=30.0, clock=clock)
    path = sandbox.mkdir(f"kubepods/burstable/pod{UID}/{CID}")
    cgroup_id = os.stat(sandbox.full(path)).st_ino
    index.scan()
    assert index.owner(cgroup_id) == CgroupContainer(UID, CID, "")
    os.rmdir(sandbox.full(path))
    index.scan()
    assert cgroup_id not in dict(walk_cgroups(sandbox.mount))
    assert index.path(cgroup_id) == path
    assert index.owner(cgroup_id) == CgroupContainer(UID, CID, "")
    clock.now += 31.0
    index.scan()
    assert index.path(cgroup_id) is None
    assert index.owner(cgroup_id) is None
