"""The local sources of identity: which process, container and pod is behind an event.

Everything here is learnt from this host alone (/proc, the cgroup tree and the
container runtimes' sockets), so it works with no API server and names pods by
UID and container ID, the keys the Kubernetes source maps to names.

``LocalIdentity`` ties the sources together. Its lookups (``process``,
``container_for_cgroup``, ``container_for_pid``) are dict hits once a pid or
cgroup has been seen; misses read /proc or re-walk the cgroup tree, rate limited.
``refresh()`` (or ``start()``, which calls it from a background thread) polls
the runtimes and sweeps stale entries; call it from a batch loop, never per event.
What the user should know (a runtime stops answering, a refresh fails) is queued
on :attr:`LocalIdentity.notices` as one line, for the command loop to print.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from types import TracebackType

from podsight.identity.history import boot_ns
from podsight.identity.local.cgroups import (
    AUTO,
    CgroupContainer,
    CgroupIndex,
    cgroup2_root,
    parse_cgroup_path,
)
from podsight.identity.local.processes import ProcessCache, ProcessInfo, start_ticks_from_ns
from podsight.identity.local.runtimes import (
    ContainerdClient,
    ContainerInfo,
    DockerClient,
    PodmanClient,
    RuntimeClient,
    RuntimeListing,
    RuntimeState,
    default_clients,
)
from podsight.identity.netns import named_netns
from podsight.identity.notices import Notices, tell_failure

__all__ = [
    "CgroupContainer",
    "CgroupIndex",
    "ContainerInfo",
    "ContainerdClient",
    "DockerClient",
    "LocalIdentity",
    "PodmanClient",
    "ProcessCache",
    "ProcessInfo",
    "RuntimeClient",
    "RuntimeListing",
    "RuntimeState",
    "cgroup2_root",
    "default_clients",
    "parse_cgroup_path",
    "start_ticks_from_ns",
]


class LocalIdentity:
    """Process, container and pod identity from this host: /proc, cgroups, runtimes.

    Thread safety: lookups may run on the event thread while :meth:`refresh` runs on
    another; refresh builds new dicts and swaps them in whole, so a lookup sees the
    old index or the new one, never half of each.
    """

    def __init__(
        self,
        *,
        cgroup_root: str | None = AUTO,
        runtimes: Iterable[RuntimeClient] | None = None,
        process_cache_size: int = 8192,
        min_rescan_interval: float = 1.0,
    ) -> None:
        root = cgroup2_root() if cgroup_root == AUTO else cgroup_root
        self.cgroups = CgroupIndex(root, min_rescan_interval=min_rescan_interval)
        self.processes = ProcessCache(process_cache_size, cgroup_root=root)
        self.runtimes: list[RuntimeClient] = (
            list(runtimes) if runtimes is not None else default_clients()
        )
        self._by_id: dict[str, ContainerInfo] = {}
        self._by_pid: dict[int, ContainerInfo] = {}
        self._by_cgroup_path: dict[str, ContainerInfo] = {}
        self._by_netns: dict[int, tuple[ContainerInfo, ...]] = {}
        self._owners: dict[int, CgroupContainer | None] = {}
        self._listings: list[RuntimeListing] = []
        #: When the current listings were taken (CLOCK_BOOTTIME ns; 0: never).
        self.listed_ns = 0
        #: One-line messages for the user: a runtime stopped or started answering.
        self.notices = Notices()
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.cgroups.scan()

    # --- lookups (hot path) -----------------------------------------------------------

    def process(
        self, pid: int, start_time: int | None = None, comm: str | None = None
    ) -> ProcessInfo | None:
        """The process behind ``pid``; pass the event's ``comm`` (and start time in ticks,
        if the program records it) so that exec and pid reuse reload a stale entry."""
        return self.processes.get(pid, start_time, comm)

    def cgroup_path(self, cgroup_id: int) -> str | None:
        return self.cgroups.path(cgroup_id)

    def container_for_cgroup(self, cgroup_id: int) -> CgroupContainer | None:
        """(pod UID, container ID, runtime) for an event's cgroup id, or None.

        The cgroup path decides (kubelet and the runtimes name cgroups after pods and
        containers); the runtimes' listings fill in what a path cannot say: the
        runtime behind kubelet's cgroupfs layout, and containers whose cgroup names
        follow no convention (``ctr run`` puts them at ``/<namespace>/<id>``).
        """
        owner = self._owners.get(cgroup_id, _UNRESOLVED)
        if owner is not _UNRESOLVED:
            return owner
        path = self.cgroups.path(cgroup_id)
        if path is None:
            return None  # not memoized: the cgroup may appear in the next walk
        owner = self._resolve(path)
        self._owners[cgroup_id] = owner
        return owner

    def container_for_pid(
        self, pid: int, start_time: int | None = None, comm: str | None = None
    ) -> ContainerInfo | None:
        """The container a process runs in, with what the runtime said about it.

        A container no runtime listed (no socket access, or a runtime podsight does
        not poll, like CRI-O) is still returned from its cgroup path alone: runtime,
        ID and pod UID set, the rest empty.
        """
        info = self.processes.get(pid, start_time, comm)
        if info is None:
            return self._by_pid.get(pid)
        owner: CgroupContainer | None
        if info.cgroup_id:
            owner = self.container_for_cgroup(info.cgroup_id)
        else:
            owner = self._resolve(info.cgroup_path)
        if owner is None or not owner.container_id:
            return self._by_pid.get(pid)
        known = self._by_id.get(owner.container_id)
        if known is not None:
            return known
        return ContainerInfo(
            runtime=owner.runtime,
            id=owner.container_id,
            name="",
            pid=0,
            pod_uid=owner.pod_uid,
            cgroup_path=info.cgroup_path,
        )

    def container(self, container_id: str) -> ContainerInfo | None:
        """A container any runtime listed, by full ID."""
        return self._by_id.get(container_id)

    def containers(self) -> list[ContainerInfo]:
        """Every running container the runtimes listed at the last refresh."""
        return list(self._by_id.values())

    def containers_in_netns(self, netns: int) -> tuple[ContainerInfo, ...]:
        """The containers sharing a network namespace (a pod's, or one container's)."""
        return self._by_netns.get(netns, ())

    @staticmethod
    def netns_names() -> dict[str, int]:
        """name -> inode of the namespaces under /var/run/netns (``ip netns``, the lab)."""
        return named_netns()

    # --- refresh (background) ---------------------------------------------------------

    @property
    def listings(self) -> list[RuntimeListing]:
        """What each runtime said at the last refresh, warnings included."""
        return list(self._listings)

    def refresh(self) -> list[RuntimeListing]:
        """Re-walk the cgroup tree, sweep the process cache and poll every runtime.

        Costs milliseconds to a few hundred (one HTTP or gRPC exchange per runtime,
        one inspect per docker/podman container): call it every few seconds from a
        background thread or a batch loop. A runtime's warning is told (see
        :attr:`notices`) when it changes, not at every poll.
        """
        with self._refresh_lock:
            self.cgroups.scan()
            self.processes.sweep()
            listings = [client.list_containers() for client in self.runtimes]
            listed = boot_ns()
            by_id: dict[str, ContainerInfo] = {}
            for listing in listings:
                self._log_state(listing)
                for container in listing.containers:
                    # The first runtime to list an ID keeps it (docker before containerd).
                    by_id.setdefault(container.id, container)
            by_netns: dict[int, list[ContainerInfo]] = {}
            for container in by_id.values():
                if container.netns:
                    by_netns.setdefault(container.netns, []).append(container)
            self._by_pid = {c.pid: c for c in by_id.values() if c.pid}
            self._by_cgroup_path = {c.cgroup_path: c for c in by_id.values() if c.cgroup_path}
            self._by_netns = {netns: tuple(cs) for netns, cs in by_netns.items()}
            self._by_id = by_id
            self._owners = {}
            self.listed_ns = listed  # before the listings: a reader of both sees no newer stamp
            self._listings = listings
            return listings

    def start(self, interval: float = 5.0) -> None:
        """Refresh every ``interval`` seconds from a daemon thread until :meth:`close`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, args=(interval,), name="podsight-local-identity", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop the background refresh and close the runtimes' connections."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for client in self.runtimes:
            client.close()

    def __enter__(self) -> LocalIdentity:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals --------------------------------------------------------------------

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.refresh()
            except Exception as exc:  # a bad poll must not end the refresh loop
                tell_failure(self.notices, "refresh", "local identity refresh failed", exc)
            else:
                self.notices.recovered("refresh", "podsight: local identity refresh works again")

    def _resolve(self, path: str) -> CgroupContainer | None:
        parsed = parse_cgroup_path(path)
        known = self._by_cgroup_path.get(path)
        if known is None and parsed is not None and parsed.container_id:
            known = self._by_id.get(parsed.container_id)
        if known is None:
            return parsed
        if parsed is None or not parsed.container_id:
            return CgroupContainer(known.pod_uid, known.id, known.runtime)
        return CgroupContainer(
            parsed.pod_uid or known.pod_uid, parsed.container_id, parsed.runtime or known.runtime
        )

    def _log_state(self, listing: RuntimeListing) -> None:
        topic = f"{listing.runtime}@{listing.endpoint}"
        if listing.warning:
            self.notices.warn(topic, f"podsight: warning: {listing.warning}", listing.warning)
        elif listing.state is RuntimeState.OK:
            self.notices.recovered(
                topic, f"podsight: {listing.runtime} at {listing.endpoint} answers again")


# Marks "not resolved yet" in the owner memo (None there means "resolved: no container").
_UNRESOLVED = CgroupContainer("", "", "\0")
