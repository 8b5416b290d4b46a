"""The identity resolver every gadget shares: address, netns or cgroup -> Endpoint.

Sources, in the order they answer: the lab inventory (pods of `podsight lab`),
the Kubernetes API (pods, services, nodes, kept current by watches), and the
host itself (its own addresses are the node). Hot-path calls are dict hits on
a memo that is dropped only when a source reports a change; :meth:`refresh`
is cheap (a stat and an integer compare) and runs once per batch.

The side that owns a socket is named first by the event's cgroup, through the
local sources (``LocalIdentity``): kubelet's cgroup names give the pod UID and
container ID, the Kubernetes API names the pod by UID, and the runtimes' listings
give container names and the pod labels kubelet puts on containers. Only when
the cgroup says nothing does the socket's network namespace (or address) decide.
That is what names hostNetwork pods, and containers that share one namespace.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import logging
import re
import socket
import subprocess
import threading
import time
from typing import TYPE_CHECKING

from podsight.identity.endpoint import Endpoint, PodInfo
from podsight.identity.lab import LabInventory
from podsight.identity.netns import NetnsAddresses, host_netns

if TYPE_CHECKING:
    from podsight.identity.kube import KubeCache
    from podsight.identity.local import ContainerInfo, LocalIdentity, RuntimeListing
    from podsight.selectors import PodSelector

log = logging.getLogger(__name__)

# kubelet's label naming a container in its pod (set through CRI on every container).
CONTAINER_NAME_LABEL = "io.kubernetes.container.name"

# The per-socket memo is dropped whole past this size (distinct (netns, addr, cgroup)
# triples: a scan from many source addresses must not grow it without bound).
LOCAL_MEMO_LIMIT = 1 << 16

# How long a container whose cgroup names it, but that no runtime listed yet, is
# looked up again (once per refresh) before its cgroup alone is taken as the answer.
UNLISTED_GRACE = 15.0


def host_addresses() -> set[str]:
    """Addresses configured in this (the root) network namespace."""
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True,
                             timeout=5, check=False).stdout
        return {a["local"] for link in json.loads(out or "[]") for a in link.get("addr_info", [])
                if "local" in a}
    except (OSError, ValueError, subprocess.SubprocessError):
        return set()


@functools.lru_cache(maxsize=4096)
def _is_loopback(addr: str) -> bool:
    """Cached: it runs once per event, and parsing an address costs more than the event."""
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


class Resolver:
    """Resolves addresses and sockets' network namespaces to endpoints."""

    def __init__(
        self,
        lab: LabInventory | None = None,
        kube: KubeCache | None = None,
        node_name: str | None = None,
        refresh_interval: float = 1.0,
        local: LocalIdentity | None = None,
        local_interval: float = 5.0,
    ) -> None:
        """``local`` adds cgroups and container runtimes as a source; the resolver then polls
        the runtimes every ``local_interval`` seconds from a thread until :meth:`close`
        (pass a LocalIdentity already refreshed once, so the first events are named)."""
        self._lab = lab if lab is not None else LabInventory()
        self._kube = kube
        self._local = local
        self.host_netns = host_netns()
        self._host_addrs = host_addresses()
        self.node_name = node_name or self._node_from_api() or socket.gethostname()
        self._lab_by_ip: dict[str, PodInfo] = {}
        self._lab_by_netns: dict[int, PodInfo] = {}
        self._lab_by_name: dict[tuple[str, str], PodInfo] = {}
        self._netns_addrs = NetnsAddresses()
        self._memo: dict[str, Endpoint] = {}
        self._local_memo: dict[tuple[int, str, int], Endpoint] = {}
        # Memo keys answered while a source was behind (a cgroup not walked yet, a container
        # not listed yet): dropped at the next refresh so that they are looked up again.
        self._retry: set[tuple[int, str, int]] = set()
        self._unlisted: dict[str, float] = {}  # container id -> when first met unlisted
        self._listings: list[RuntimeListing] = []
        self._kube_generation = -1
        self._refresh_interval = refresh_interval
        self._next_refresh = 0.0
        self._poller: _LocalPoller | None = None
        self.refresh(force=True)
        if local is not None:
            self._poller = _LocalPoller(local, local_interval)

    def close(self) -> None:
        """Stop polling the runtimes (the LocalIdentity itself is its creator's to close)."""
        if self._poller is not None:
            self._poller.close()
            self._poller = None

    def __enter__(self) -> Resolver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _node_from_api(self) -> str | None:
        """This host's Node name: the Node whose InternalIP is one of our addresses."""
        if self._kube is None:
            return None
        for addr in sorted(self._host_addrs):
            node = self._kube.node_by_ip(addr)
            if node is not None:
                return node.name
        return None

    # -- keeping current ------------------------------------------------------

    def refresh(self, force: bool = False) -> bool:
        """Pick up source changes; True when anything changed (derived state is rebuilt)."""
        now = time.monotonic()
        if not force and now < self._next_refresh:
            return False
        self._next_refresh = now + self._refresh_interval
        changed = self._lab.refresh() or force
        if changed:
            pods = self._lab.pods
            self._lab_by_ip = {ip: pod for pod in pods for ip in pod.ips}
            self._lab_by_netns = {pod.netns: pod for pod in pods if pod.netns}
            self._lab_by_name = {(pod.namespace, pod.name): pod for pod in pods}
        if self._kube is not None:
            if self._netns_addrs.refresh():
                changed = True
            if self._kube.generation != self._kube_generation:
                self._kube_generation = self._kube.generation
                changed = True
        if self._local is not None and self._listings_changed():
            changed = True
        if changed:
            self._memo.clear()
            self._local_memo.clear()
        elif self._retry:
            for key in self._retry:
                self._local_memo.pop(key, None)
        self._retry.clear()
        return changed

    def _listings_changed(self) -> bool:
        """Did a runtime poll (made by the poller thread) find other containers than before?"""
        assert self._local is not None
        listings = self._local.listings
        old = self._listings
        if len(listings) == len(old) and all(a is b for a, b in zip(listings, old, strict=True)):
            return False  # no poll since the last look: the very same listing objects
        self._listings = listings
        return _containers_of(listings) != _containers_of(old)

    # -- what is known ----------------------------------------------------------

    @property
    def has_kubernetes(self) -> bool:
        return self._kube is not None

    def pods(self) -> list[PodInfo]:
        pods = list(self._lab.pods)
        if self._kube is not None:
            pods.extend(self._kube.pods())
        return pods

    @property
    def knows_pods(self) -> bool:
        """Are there pods or containers to name (then the K8S.* columns are worth showing)?"""
        if self._lab.pods or self._kube is not None:
            return True
        return self._local is not None and any(not c.sandbox for c in self._local.containers())

    # -- lookups (hot path) ------------------------------------------------------

    def endpoint(self, addr: str) -> Endpoint:
        """The endpoint for a remote address: pod, service, node, else raw."""
        ep = self._memo.get(addr)
        if ep is None:
            ep = self._lookup(addr)
            self._memo[addr] = ep
        return ep

    def _lookup(self, addr: str) -> Endpoint:
        kube = self._kube
        if kube is not None:
            kpod = kube.pod_by_ip(addr)
            if kpod is not None:
                return Endpoint.for_pod(addr, kpod)
            svc = kube.service_by_ip(addr)
            if svc is not None:
                return Endpoint.for_service(addr, svc.namespace, svc.name)
            node = kube.node_by_ip(addr)
            if node is not None:
                return Endpoint.for_node(addr, node.name, node.labels)
        pod = self._lab_by_ip.get(addr)
        if pod is not None:
            return Endpoint.for_pod(addr, pod)
        lab_service = self._lab.services.get(addr)
        if lab_service is not None:
            return Endpoint.for_service(addr, *lab_service)
        if addr in self._host_addrs and not _is_loopback(addr):
            return Endpoint.for_node(addr, self.node_name)
        return Endpoint.raw(addr)

    def local_pod(self, netns: int) -> PodInfo | None:
        """The pod whose network namespace this is: by the API (the pod owning an address
        in that namespace), else the lab inventory."""
        if self._kube is not None and netns != self.host_netns:
            for ip in self._netns_addrs.ips_by_netns.get(netns, ()):
                pod = self._kube.pod_by_ip(ip)
                if pod is not None:
                    return pod
        return self._lab_by_netns.get(netns)

    def local_endpoint(self, addr: str, netns: int, cgroup_id: int) -> Endpoint:
        """The endpoint of the side that owns a socket: by the cgroup of the process that
        made it (pod and container), else by the socket's network namespace.

        ``cgroup_id`` is the event's ``bpf_get_current_cgroup_id()``; 0 means unknown.
        """
        key = (netns, addr, cgroup_id)
        ep = self._local_memo.get(key)
        if ep is None:
            ep = self._local_lookup(addr, netns, cgroup_id, key)
            if len(self._local_memo) >= LOCAL_MEMO_LIMIT:
                self._local_memo.clear()
            self._local_memo[key] = ep
        return ep

    def _local_lookup(
        self, addr: str, netns: int, cgroup_id: int, key: tuple[int, str, int]
    ) -> Endpoint:
        owner = self._cgroup_owner(cgroup_id, netns, key)
        if owner is not None:
            pod, container = owner
            if pod is not None:
                ep = Endpoint.for_pod(addr, pod)
                return ep if ep.container == container else dataclasses.replace(
                    ep, container=container)
        ep = self._netns_endpoint(addr, netns)
        if owner is not None and owner[1]:  # a container outside any pod: its name
            return dataclasses.replace(ep, container=owner[1])
        return ep

    def _netns_endpoint(self, addr: str, netns: int) -> Endpoint:
        pod = self.local_pod(netns)
        if pod is not None:
            return Endpoint.for_pod(addr, pod)
        if netns == self.host_netns:
            return Endpoint.for_node(addr, self.node_name)
        return self.endpoint(addr)

    def _cgroup_owner(
        self, cgroup_id: int, netns: int, key: tuple[int, str, int]
    ) -> tuple[PodInfo | None, str] | None:
        """(pod or None, container name) of the process behind an event, from its cgroup.

        None when the cgroup names no container, and when the container lives in another
        network namespace than the socket (a process that entered one, as ``ip netns
        exec`` or ``nsenter`` do, speaks for that namespace's owner, not for its own).
        """
        local = self._local
        if local is None or not cgroup_id:
            return None
        if local.cgroup_path(cgroup_id) is None:
            self._retry.add(key)  # a cgroup made after the last walk (walks are rate limited)
            return None
        owner = local.container_for_cgroup(cgroup_id)
        if owner is None:
            return None
        info = local.container(owner.container_id) if owner.container_id else None
        if info is None and owner.container_id and self._still_unlisted(owner.container_id):
            self._retry.add(key)
        if info is not None and info.netns and info.netns != netns:
            return None
        pod = self._pod_for_container(owner.pod_uid or (info.pod_uid if info else ""), info)
        name = _container_name(info, pod)
        if pod is None and not name:
            return None
        return pod, name

    def _still_unlisted(self, container_id: str) -> bool:
        """A container no runtime listed: ask for a poll now, and look again for a while."""
        now = time.monotonic()
        if len(self._unlisted) > 4096:
            self._unlisted.clear()
        since = self._unlisted.setdefault(container_id, now)
        if now - since > UNLISTED_GRACE:
            return False  # a runtime podsight does not poll (or cannot reach): cgroup only
        if self._poller is not None:
            self._poller.wake()
        return True

    def _pod_for_container(self, uid: str, info: ContainerInfo | None) -> PodInfo | None:
        """The pod a container belongs to: by UID from the API, else by the pod's name that
        kubelet wrote in the container's labels (API, then lab, else a pod known by name)."""
        kube = self._kube
        if kube is not None and uid:
            pod = kube.pod_by_uid(uid)
            if pod is not None:
                return pod
        if info is None or not info.pod_name:
            return None
        namespace = info.pod_namespace or "default"
        if kube is not None:
            pod = kube.pod(namespace, info.pod_name)
            # A same-named pod with another UID is a newer pod: this container is not its.
            if pod is not None and (not uid or not pod.uid or pod.uid == uid):
                return pod
        pod = self._lab_by_name.get((namespace, info.pod_name))
        if pod is not None:
            return pod
        return PodInfo(namespace=namespace, name=info.pod_name, netns=info.netns,
                       node=self.node_name, uid=uid)

    def remote_endpoint(self, addr: str, local: Endpoint) -> Endpoint:
        """The peer of a socket: loopback is the local side itself (a pod's or the node's)."""
        if _is_loopback(addr) and local.kind in ("pod", "node"):
            return local if local.addr == addr else Endpoint(
                kind=local.kind, addr=addr, namespace=local.namespace, name=local.name,
                node=local.node, labels=local.labels, container=local.container,
                workload_kind=local.workload_kind, workload_name=local.workload_name)
        return self.endpoint(addr)

    # -- selection ----------------------------------------------------------------

    def selected_netns(self, selector: PodSelector) -> set[int]:
        """Network namespaces of the pods a selector picks (and the host's with --host).

        Contains 0 ("every namespace") while a selected pod of this node has a
        namespace podsight cannot find yet: the kernel then lets everything
        through and user space filters, rather than miss that pod's traffic.
        """
        chosen: set[int] = set()
        for pod in self.pods():
            node = pod.node or self.node_name
            if not selector.matches(pod.namespace, pod.name, pod.labels, node, pod.containers):
                continue
            inode = pod.netns or next(
                (self._netns_addrs.by_ip[ip] for ip in pod.ips if ip in self._netns_addrs.by_ip),
                0)
            if inode:
                chosen.add(inode)
            elif node == self.node_name and not pod.host_network and pod.ips:
                chosen.add(0)
            elif pod.host_network and node == self.node_name:
                chosen.add(self.host_netns)
        if self._local is not None:
            chosen |= self._selected_container_netns(selector)
        if selector.host:
            chosen.add(self.host_netns)
        return chosen

    def _selected_container_netns(self, selector: PodSelector) -> set[int]:
        """Network namespaces of the runtimes' containers the selector picks, named the way
        :meth:`local_endpoint` names them (so ``-c`` finds containers no pod spec lists)."""
        from podsight.identity.local import parse_cgroup_path

        assert self._local is not None
        chosen: set[int] = set()
        for c in self._local.containers():
            if c.sandbox or not c.netns:
                continue
            uid = c.pod_uid
            if not uid and c.cgroup_path:
                parsed = parse_cgroup_path(c.cgroup_path)
                uid = parsed.pod_uid if parsed is not None else ""
            pod = self._pod_for_container(uid, c)
            name = _container_name(c, pod)
            if pod is not None:
                if selector.matches(pod.namespace, pod.name, pod.labels,
                                    pod.node or self.node_name, (name,) if name else ()):
                    chosen.add(c.netns)
            elif name and self._selects_container(selector, name):
                chosen.add(c.netns)
        return chosen

    def _selects_container(self, selector: PodSelector, name: str) -> bool:
        """A container outside any pod is picked only by name (``-c``), never by pod flags."""
        return selector.containers.active and selector.matches(
            "", "", {}, self.node_name, (name,))

    def selects(self, selector: PodSelector, local: Endpoint, netns: int) -> bool:
        """Does the selector pick the socket owner? (The user-space half of a pod filter.)"""
        if not selector.selects_pods:
            return True
        if local.kind == "pod":
            containers = (local.container,) if local.container else ()
            return selector.matches(local.namespace, local.name, local.labels,
                                    local.node or self.node_name, containers)
        if local.container and self._selects_container(selector, local.container):
            return True
        return selector.host and netns == self.host_netns


_FULL_ID = re.compile(r"[0-9a-f]{64}")


def _container_name(info: ContainerInfo | None, pod: PodInfo | None) -> str:
    """kubelet's name for the container, else the pod's only container, else the runtime's
    own name (docker, podman, nerdctl, ctr); "" for a pod sandbox or a bare 64-hex ID."""
    if info is not None:
        if info.sandbox:
            return ""
        label = info.labels.get(CONTAINER_NAME_LABEL)
        if label:
            return label
    if pod is not None and len(pod.containers) == 1:
        return pod.containers[0]
    if info is not None and not _FULL_ID.fullmatch(info.name):
        return info.name  # ctr's ids are names people chose; kubelet's 64-hex ids are not
    return ""


def _containers_of(listings: list[RuntimeListing]) -> frozenset[ContainerInfo]:
    return frozenset(c for listing in listings for c in listing.containers)


class _LocalPoller:
    """Polls the container runtimes from a thread: every ``interval`` seconds, and early
    (at most once per ``min_gap``) when a lookup met a container no listing had yet.

    Not ``LocalIdentity.start``: that loop cannot be woken early, and a poll costs up to
    a few hundred milliseconds, which must never run on the event thread.
    """

    def __init__(self, local: LocalIdentity, interval: float, min_gap: float = 1.0) -> None:
        self._local = local
        self._interval = interval
        self._min_gap = min_gap
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="podsight-runtimes", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        last = time.monotonic()
        while True:
            self._wake.wait(max(0.0, last + self._interval - time.monotonic()))
            if self._stop.is_set():
                return
            gap = last + self._min_gap - time.monotonic()
            if gap > 0 and self._stop.wait(gap):
                return
            self._wake.clear()
            try:
                self._local.refresh()
            except Exception:  # a bad poll must not end the polling
                log.exception("container runtime poll failed")
            last = time.monotonic()
