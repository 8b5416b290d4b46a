"""cgroup id -> cgroup path -> (pod UID, container ID, runtime), from the cgroup v2 tree.

Every event carries ``bpf_get_current_cgroup_id()``: the id of the task's cgroup in
the *v2* (default) hierarchy, which is also the inode number of that cgroup's
directory wherever cgroup2 is mounted. So one walk of the cgroup2 mount gives an
``id -> path`` dict, and kubelet names its cgroups after the pod UID and the
container ID, so the path alone says which pod and container an event came from,
before any runtime or API server has been asked.

The cgroup2 mount is found in /proc/self/mountinfo, not assumed: it is
/sys/fs/cgroup on unified hosts and /sys/fs/cgroup/unified on hybrid ones (like
the machines podsight is developed on). Paths are those seen from podsight's own
cgroup namespace: an agent in a pod needs the host's cgroup namespace (or a host
mount of the cgroup tree) to see other pods' cgroups.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

MOUNTINFO = "/proc/self/mountinfo"

# "Find the cgroup2 mount yourself" (None means "there is none: resolve no ids").
AUTO = "auto"


class CgroupContainer(NamedTuple):
    """Who owns a cgroup, as far as its path tells.

    ``pod_uid`` is empty for containers outside Kubernetes (docker run, podman),
    ``container_id`` is empty for a pod-level cgroup that is no container's (CRI-O's
    conmon lives there), and ``runtime`` is empty where the layout does not say
    (kubelet's cgroupfs driver names container cgroups by bare ID).
    """

    pod_uid: str
    container_id: str
    runtime: str


def cgroup2_mounts(mountinfo: str = MOUNTINFO) -> list[str]:
    """Mount points of the cgroup2 file system, in mount order."""
    out: list[str] = []
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        # "36 25 0:30 / /sys/fs/cgroup rw,... shared:9 - cgroup2 cgroup2 rw"
        left, sep, right = line.partition(" - ")
        if not sep or not right.startswith("cgroup2 "):
            continue
        fields = left.split(" ")
        if len(fields) >= 5:
            out.append(_unescape_mountinfo(fields[4]))
    return out


def cgroup2_root(mountinfo: str = MOUNTINFO) -> str | None:
    """The cgroup2 mount to walk: the conventional one if mounted, else the first found.

    None on a cgroup v1 only host, where there is no v2 id to resolve.
    """
    mounts = cgroup2_mounts(mountinfo)
    for preferred in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if preferred in mounts:
            return preferred
    return mounts[0] if mounts else None


def _unescape_mountinfo(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (``\\040``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


# --- parsing kubelet / runtime cgroup layouts ------------------------------------------

# A pod UID as kubelet writes it: an RFC 4122 UUID, with '_' for '-' in systemd slice
# names (systemd reads '-' in a slice name as nesting), or 32 hex digits for static
# pods, whose UID is the hash of their manifest.
_UID = (
    r"(?P<uid>[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
    r"|[0-9a-f]{32})"
)

# systemd driver: kubepods-pod<uid>.slice, kubepods-burstable-pod<uid>.slice,
# kubelet-kubepods-besteffort-pod<uid>.slice (kind); cgroupfs driver: pod<uid>.
_POD_SEGMENT = re.compile(rf"(?:[a-z0-9_]+-)*pod{_UID}(?:\.slice)?")

# A container's own cgroup: <prefix>-<64 hex>[.scope] (the systemd driver makes
# scopes; CRI-O and podman's cgroupfs managers use the same names without .scope).
_CONTAINER_SEGMENT = re.compile(
    r"(?P<prefix>cri-containerd|crio|docker|libpod|nerdctl)-(?P<id>[0-9a-f]{64})(?:\.scope)?"
)
_PREFIX_RUNTIME = {
    "cri-containerd": "containerd",
    "crio": "cri-o",
    "docker": "docker",
    "libpod": "podman",
    "nerdctl": "containerd",
}

# A runtime given a systemd-style cgroupsPath while managing cgroupfs itself writes
# the whole "slice:prefix:id" triple as one directory name (seen with containerd and
# k3s when SystemdCgroup is on but systemd does not manage the tree).
_SYSTEMD_TRIPLE = re.compile(
    rf"(?:[a-z0-9_]+-)*pod{_UID}\.slice:(?P<prefix>cri-containerd|crio|docker):(?P<id>[0-9a-f]{{64}})"
)

_BARE_ID = re.compile(r"[0-9a-f]{64}")

# Parents under which a bare 64-hex directory is a container of that runtime
# (cgroupfs drivers of docker and podman).
_BARE_ID_PARENTS = {"docker": "docker", "libpod_parent": "podman"}


def _pod_uid(match: re.Match[str]) -> str:
    return match.group("uid").replace("_", "-")


def parse_cgroup_path(path: str) -> CgroupContainer | None:
    """The pod and container a cgroup path belongs to, from kubelet's and runtimes' layouts.

    The innermost pod wins, and the innermost container at or below it: that way a
    kind node (itself a docker container) still resolves to the pod inside it, and
    cgroups nested below a container's own (crun's ``/container``, cgroups an
    application makes) resolve to that container.
    """
    segments = [s for s in path.split("/") if s]
    pod_index = -1
    pod_uid = ""
    for i in range(len(segments) - 1, -1, -1):
        segment = segments[i]
        triple = _SYSTEMD_TRIPLE.fullmatch(segment)
        if triple is not None:
            return CgroupContainer(
                _pod_uid(triple), triple.group("id"), _PREFIX_RUNTIME[triple.group("prefix")]
            )
        pod = _POD_SEGMENT.fullmatch(segment)
        if pod is not None:
            pod_index, pod_uid = i, _pod_uid(pod)
            break
    # The innermost container segment below the pod (or anywhere, outside Kubernetes).
    for i in range(len(segments) - 1, pod_index, -1):
        segment = segments[i]
        named = _CONTAINER_SEGMENT.fullmatch(segment)
        if named is not None:
            return CgroupContainer(
                pod_uid, named.group("id"), _PREFIX_RUNTIME[named.group("prefix")]
            )
        if _BARE_ID.fullmatch(segment):
            if pod_index >= 0 and i == pod_index + 1:
                return CgroupContainer(pod_uid, segment, "")  # kubelet cgroupfs driver
            parent = segments[i - 1] if i > 0 else ""
            if parent in _BARE_ID_PARENTS:
                return CgroupContainer(pod_uid, segment, _BARE_ID_PARENTS[parent])
    if pod_index >= 0:
        return CgroupContainer(pod_uid, "", "")
    return None


# --- the id -> path index -------------------------------------------------------------


def walk_cgroups(root: str) -> Iterator[tuple[int, str]]:
    """(cgroup id, path relative to the mount, starting with '/') for every cgroup.

    Uses the inode numbers scandir already has from getdents, so a walk costs one
    getdents per cgroup and no stat. On kernfs a directory's inode number is its
    node id, which is the cgroup id the BPF helper returns (64-bit kernels).
    """
    try:
        yield os.stat(root).st_ino, "/"
    except OSError:
        return
    stack = [(root, "")]
    while stack:
        directory, rel = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:  # removed while we walked: its children are gone too
            continue
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
            except OSError:
                continue
            child = f"{rel}/{entry.name}"
            yield entry.inode(), child
            stack.append((entry.path, child))


# Marks "not parsed yet" in the owner memo (None there means "parsed: no container").
_UNPARSED = CgroupContainer("", "", "\0")


class CgroupIndex:
    """cgroup id -> path (and -> parsed owner), walked once and refreshed on a miss.

    Lookups are dict hits. A miss means the cgroup was made after the last walk (a
    container just started), so the index walks the tree again, at most once per
    ``min_rescan_interval`` so that a storm of events from unknown cgroups cannot
    turn into a storm of walks. An id still missing after a walk that ran after the
    event is a cgroup already removed; it is remembered as missing (cgroup ids are
    not reused while the machine is up), in a bounded negative cache.

    Cgroups that disappear between two walks stay resolvable for ``tombstone_ttl``
    seconds: events of a container that just exited are still in flight.
    """

    def __init__(
        self,
        root: str | None = AUTO,
        *,
        min_rescan_interval: float = 1.0,
        tombstone_ttl: float = 60.0,
        negative_cache_size: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = cgroup2_root() if root == AUTO else root
        self.min_rescan_interval = min_rescan_interval
        self.tombstone_ttl = tombstone_ttl
        self._negative_cache_size = negative_cache_size
        self._clock = clock
        self._paths: dict[int, str] = {}
        self._gone: dict[int, tuple[str, float]] = {}  # id -> (path, expiry)
        self._missing: set[int] = set()
        self._owners: dict[int, CgroupContainer | None] = {}
        self._last_scan = float("-inf")
        self._scans = 0
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        """Whether there is a cgroup2 tree to resolve ids against."""
        return self.root is not None

    @property
    def scans(self) -> int:
        """How many walks were made: lets tests and stats see that misses are rate limited."""
        return self._scans

    def __len__(self) -> int:
        return len(self._paths)

    def scan(self) -> int:
        """Walk the whole tree now; returns the number of cgroups found."""
        if self.root is None:
            return 0
        with self._lock:
            now = self._clock()
            paths = dict(walk_cgroups(self.root))
            old = self._paths
            gone = {
                cid: entry for cid, entry in self._gone.items()
                if entry[1] > now and cid not in paths
            }
            expiry = now + self.tombstone_ttl
            for cid, path in old.items():
                if cid not in paths:
                    gone[cid] = (path, expiry)
            # owner() may add entries from another thread: iterate over a snapshot.
            self._owners = {
                cid: owner
                for cid, owner in list(self._owners.items())
                if cid in paths or cid in gone
            }
            self._paths, self._gone = paths, gone
            self._last_scan = now
            self._scans += 1
            return len(paths)

    def path(self, cgroup_id: int) -> str | None:
        """The cgroup's path relative to the cgroup2 mount ('/kubepods/...'), or None."""
        path = self._paths.get(cgroup_id)
        if path is not None:
            return path
        return self._lookup_slow(cgroup_id)

    def owner(self, cgroup_id: int) -> CgroupContainer | None:
        """The pod/container the cgroup's path names, parsed once per cgroup."""
        owner = self._owners.get(cgroup_id, _UNPARSED)
        if owner is not _UNPARSED:
            return owner
        path = self.path(cgroup_id)
        if path is None:
            return None
        parsed = parse_cgroup_path(path)
        self._owners[cgroup_id] = parsed
        return parsed

    def id_for_path(self, path: str) -> int:
        """The id of the cgroup at ``path`` (relative to the mount), 0 if it is not there."""
        if self.root is None:
            return 0
        full = self.root if path in ("", "/") else self.root + "/" + path.strip("/")
        try:
            return os.stat(full).st_ino
        except OSError:
            return 0

    def _lookup_slow(self, cgroup_id: int) -> str | None:
        gone = self._gone.get(cgroup_id)
        if gone is not None:
            return gone[0]
        if cgroup_id in self._missing or self.root is None:
            return None
        if self._clock() - self._last_scan < self.min_rescan_interval:
            return None  # rate limited: not known yet, but not known to be gone either
        self.scan()
        path = self._paths.get(cgroup_id)
        if path is None:
            if len(self._missing) >= self._negative_cache_size:
                self._missing.clear()
            self._missing.add(cgroup_id)
        return path
