"""The identity resolver every gadget shares: address, netns or cgroup -> Endpoint.

Sources, in the order they answer: the Kubernetes API (pods, services, nodes,
kept current by watches), the lab inventory (pods of `podsight lab`), and the
host itself (its own addresses are the node). Hot-path calls are dict hits on
a memo; :meth:`refresh` is cheap and runs once per batch.

**At the event's time.** Events are named when they are printed, which can
be long after they happened, and by then an IP, a network namespace or a
container may belong to someone else. Every lookup takes the event's kernel
timestamp (``at_ns``, CLOCK_BOOTTIME) and names whoever held the key then;
the sources keep a short past for that (:mod:`podsight.identity.history`).
The memo stays one dict hit: an entry is the answer as of the resolver's
last look at its sources (the *view*) together with the instant since which
it holds, and an event at or after that instant takes it. Only an event older
than the latest change of its own keys is looked up in the past. An event
newer than the view first makes the resolver catch up: read each source's
change feed and drop exactly the memo entries built from the keys that
changed (about once per batch, since a batch's events are older than the
moment it was drained).

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
import re
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeVar

from podsight.identity.endpoint import Endpoint, PodInfo
from podsight.identity.history import ChangeFeed, Timeline, Token, boot_ns
from podsight.identity.lab import LabInventory
from podsight.identity.netns import NetnsAddresses, host_netns
from podsight.identity.notices import Notices, tell_failure

if TYPE_CHECKING:
    from podsight.identity.kube import KubeCache
    from podsight.identity.local import ContainerInfo, LocalIdentity, RuntimeListing
    from podsight.selectors import PodSelector

T = TypeVar("T")
LocalKey = tuple[int, str, int]  # (netns, addr, cgroup id)
Held = tuple[int, Endpoint]  # (since when, answer) as of the view

# kubelet's label naming a container in its pod (set through CRI on every container).
CONTAINER_NAME_LABEL = "io.kubernetes.container.name"

# The memos are dropped whole past this size (distinct addresses, or (netns, addr, cgroup)
# triples: a scan from many addresses must not grow them without bound).
MEMO_LIMIT = 1 << 16
LOCAL_MEMO_LIMIT = 1 << 16
# The keys memo entries were built from outlive the entries (an entry dropped for one key
# stays listed under its others): past this many, everything is dropped and rebuilt.
DEPS_LIMIT = 1 << 18

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


class _Moment:
    """One lookup: the instant it is for, and what it read on the way, namely since when
    its answer holds (the latest change among the keys it read) and which keys those
    were (tokens, for the memo to be dropped when one of them changes)."""

    __slots__ = ("at", "since", "tokens")

    def __init__(self, at: int, track: bool = False) -> None:
        self.at = at
        self.since = 0
        self.tokens: list[Token] | None = [] if track else None

    def read(self, token: Token, held: tuple[int, T]) -> T:
        since, value = held
        if since > self.since:
            self.since = since
        if self.tokens is not None:
            self.tokens.append(token)
        return value


class Resolver:
    """Resolves addresses and sockets' network namespaces to endpoints, at a given time."""

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
        self._netns_addrs = NetnsAddresses()
        self._memo: dict[str, Held] = {}
        self._local_memo: dict[LocalKey, Held] = {}
        # Which memo entries were built from which keys: dropped when a key changes.
        self._deps: dict[Token, set[str | LocalKey]] = {}
        self._view_ns = 0  # the instant of the last look at the sources (boot ns)
        #: Bumped whenever memoised answers are dropped: caches built on them (rendered
        #: templates) check theirs again (see :meth:`sync` and :meth:`stable_since`).
        self.generation = 0
        self._dirty = False  # a source changed since refresh() last said so
        # Memo keys answered while a source was behind (a cgroup not walked yet, a container
        # not listed yet): dropped at the next refresh so that they are looked up again.
        self._retry: set[LocalKey] = set()
        self._retried: set[LocalKey] = set()
        self._unlisted: dict[str, float] = {}  # container id -> when first met unlisted
        # The runtimes' containers as of the view, and their past (stopped ones included).
        self._listings: list[RuntimeListing] = []
        self._listed_ns = 0
        self._containers: dict[str, ContainerInfo] = {}
        self._runtime_changes = ChangeFeed()
        self._container_past: Timeline[str, ContainerInfo] = Timeline(self._runtime_changes, "cid")
        self._container_past.recording = False  # the first listing has no past
        sources = [self._lab.changes, self._netns_addrs.changes, self._runtime_changes]
        if kube is not None:
            sources.append(kube.changes)  # last: its "now" is the view (see _catch_up)
        self._feeds = [(feed, feed.position) for feed in sources]
        self._notices = Notices()
        self._kube_generation = -1
        self._refresh_interval = refresh_interval
        self._next_refresh = 0.0
        self._poller: _LocalPoller | None = None
        self.refresh(force=True)
        self._container_past.recording = True
        if local is not None:
            self._poller = _LocalPoller(local, local_interval, self._notices)

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
        """Pick up source changes; True when anything changed since the last True (at most
        once per ``refresh_interval``: callers recompute filters and drop caches on it)."""
        now = time.monotonic()
        if not force and now < self._next_refresh:
            return False
        self._next_refresh = now + self._refresh_interval
        if self._kube is not None:
            self._netns_addrs.refresh()  # its changes go through its feed
        self._catch_up()
        changed = self._dirty or force
        self._dirty = False
        if self._kube is not None and self._kube.generation != self._kube_generation:
            self._kube_generation = self._kube.generation
            changed = True
        if self._retry:
            for key in self._retry:
                self._local_memo.pop(key, None)
            self._retried |= self._retry
            self.generation += 1
            self._retry.clear()
        return changed

    def sync(self, at_ns: int) -> int:
        """Make sure the view covers events up to ``at_ns``; returns :attr:`generation`.

        For caches of answers (tcpconnect's rendered templates): call it once per batch
        with the batch's newest event time, then a cached answer is still right while the
        generation it was checked at is current and the event is not older than its
        :meth:`stable_since`.
        """
        if at_ns > self._view_ns:
            self._catch_up()
        return self.generation

    def _catch_up(self) -> None:
        """Take in every change podsight learned of until now, and drop the memo entries
        built from the keys that changed.

        The sources this thread updates (the lab inventory, the runtimes' listings) are
        looked at first; the view is then the "now" of the API cache's feed, taken under the
        lock its writers stamp under, so no change stamped before the view is missed.
        """
        if self._lab.refresh():
            self._dirty = True
        if self._local is not None and self._adopt_listings():
            self._dirty = True
        view = 0
        tokens: list[Token] = []
        lost = False
        for i, (feed, position) in enumerate(self._feeds):
            view, position, got = feed.read(position)
            self._feeds[i] = (feed, position)
            if got is None:
                lost = True
            else:
                tokens += got
        self._view_ns = view
        if lost:
            self._forget()
            self._dirty = True
            return
        if not tokens:
            return
        self._dirty = True
        dropped = False
        memo, local_memo, deps = self._memo, self._local_memo, self._deps
        for token in tokens:
            keys = deps.pop(token, None)
            if not keys:
                continue
            dropped = True
            for key in keys:
                if isinstance(key, str):
                    memo.pop(key, None)
                else:
                    local_memo.pop(key, None)
        if dropped:
            self.generation += 1

    def _forget(self) -> None:
        self._memo.clear()
        self._local_memo.clear()
        self._deps.clear()
        self._retried.clear()
        self.generation += 1

    def _adopt_listings(self) -> bool:
        """Take the runtimes' latest listings (polled by another thread) into the view and
        the containers' past; True when the set of containers changed."""
        assert self._local is not None
        listings = self._local.listings
        old = self._listings
        if len(listings) == len(old) and all(a is b for a, b in zip(listings, old, strict=True)):
            return False  # no poll since the last look: the very same listing objects
        listed = self._local.listed_ns  # read after the listings: never older than them
        self._listings = listings
        containers: dict[str, ContainerInfo] = {}
        for listing in listings:
            for c in listing.containers:
                containers.setdefault(c.id, c)  # the first runtime to list an ID keeps it
        when = min(boot_ns(), max(listed, self._listed_ns))
        self._listed_ns = when
        before = self._containers
        for cid in before.keys() | containers.keys():
            was, now = before.get(cid), containers.get(cid)
            if was != now or (was is not None and now is not None and was.labels != now.labels):
                # A container ID names one container: its past starts when it goes (it ran
                # before the poll that first listed it).
                self._container_past.changed(cid, was, now, same=now is not None, stamp=when)
        self._containers = containers
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

    def take_notices(self) -> list[str]:
        """Lines for the user from the sources' background threads (the API server went away
        or came back, a runtime stopped answering, a poll failed), each told once, oldest
        first. The command loop prints them once per batch, between records."""
        lines = self._kube.notices.take() if self._kube is not None else []
        lines += self._notices.take()
        if self._local is not None:
            lines += self._local.notices.take()
        return lines

    # -- lookups (hot path) ------------------------------------------------------
    # ``at_ns``: the event's kernel timestamp (CLOCK_BOOTTIME ns); who held the key then.
    # None (or 0, unknown) means now: the sources as of the last refresh.

    def endpoint(self, addr: str, *, at_ns: int | None = None) -> Endpoint:
        """The endpoint for a remote address: pod, service, node, else raw."""
        held = self._memo.get(addr)
        if not at_ns:
            return held[1] if held is not None else self._remember(addr)[1]
        if at_ns > self._view_ns:
            self._catch_up()
            held = self._memo.get(addr)
        if held is None:
            held = self._remember(addr)
        if at_ns >= held[0]:
            return held[1]
        return self._lookup(addr, _Moment(at_ns))

    def _remember(self, addr: str) -> Held:
        m = _Moment(self._view_ns, track=True)
        ep = self._lookup(addr, m)
        held = (m.since, ep)
        if len(self._memo) >= MEMO_LIMIT or len(self._deps) > DEPS_LIMIT:
            self._forget()
        self._memo[addr] = held
        self._depend(m, addr)
        return held

    def _depend(self, m: _Moment, key: str | LocalKey) -> None:
        deps = self._deps
        for token in m.tokens or ():
            keys = deps.get(token)
            if keys is None:
                deps[token] = {key}
            else:
                keys.add(key)

    def _lookup(self, addr: str, m: _Moment) -> Endpoint:
        at = m.at
        token = ("ip", addr)
        kube = self._kube
        if kube is not None:
            kpod = m.read(token, kube.pod_by_ip_at(addr, at))
            if kpod is not None:
                return Endpoint.for_pod(addr, kpod)
            svc = m.read(token, kube.service_by_ip_at(addr, at))
            if svc is not None:
                return Endpoint.for_service(addr, svc.namespace, svc.name)
            node = m.read(token, kube.node_by_ip_at(addr, at))
            if node is not None:
                return Endpoint.for_node(addr, node.name, node.labels)
        pod = m.read(token, self._lab.pod_by_ip_at(addr, at))
        if pod is not None:
            return Endpoint.for_pod(addr, pod)
        lab_service = m.read(token, self._lab.service_at(addr, at))
        if lab_service is not None:
            return Endpoint.for_service(addr, *lab_service)
        if addr in self._host_addrs and not _is_loopback(addr):
            return Endpoint.for_node(addr, self.node_name)
        return Endpoint.raw(addr)

    def local_pod(self, netns: int, *, at_ns: int | None = None) -> PodInfo | None:
        """The pod whose network namespace this is (at ``at_ns``): by the API (the pod owning
        an address in that namespace), else the lab inventory."""
        if at_ns and at_ns > self._view_ns:
            self._catch_up()
        return self._local_pod(netns, _Moment(at_ns or self._view_ns))

    def _local_pod(self, netns: int, m: _Moment) -> PodInfo | None:
        kube = self._kube
        token = ("netns", netns)
        if kube is not None and netns != self.host_netns:
            for ip in m.read(token, self._netns_addrs.ips_at(netns, m.at)):
                pod = m.read(("ip", ip), kube.pod_by_ip_at(ip, m.at))
                if pod is not None:
                    return pod
        return m.read(token, self._lab.pod_by_netns_at(netns, m.at))

    def local_endpoint(self, addr: str, netns: int, cgroup_id: int, *,
                       at_ns: int | None = None) -> Endpoint:
        """The endpoint of the side that owns a socket: by the cgroup of the process that
        made it (pod and container), else by the socket's network namespace.

        ``cgroup_id`` is the event's ``bpf_get_current_cgroup_id()``; 0 means unknown.
        """
        key = (netns, addr, cgroup_id)
        held = self._local_memo.get(key)
        if not at_ns:
            return held[1] if held is not None else self._remember_local(key)[1]
        if at_ns > self._view_ns:
            self._catch_up()
            held = self._local_memo.get(key)
        if held is None:
            held = self._remember_local(key)
        if at_ns >= held[0]:
            return held[1]
        return self._local_lookup(addr, netns, cgroup_id, _Moment(at_ns), None)

    def _remember_local(self, key: LocalKey) -> Held:
        netns, addr, cgroup_id = key
        m = _Moment(self._view_ns, track=True)
        ep = self._local_lookup(addr, netns, cgroup_id, m, key)
        since = m.since
        if key in self._retried:  # looked up again once a source caught up: it changed now
            self._retried.discard(key)
            since = max(since, self._view_ns)
        if len(self._local_memo) >= LOCAL_MEMO_LIMIT or len(self._deps) > DEPS_LIMIT:
            self._forget()
        held = (since, ep)
        self._local_memo[key] = held
        self._depend(m, key)
        return held

    def _local_lookup(
        self, addr: str, netns: int, cgroup_id: int, m: _Moment, key: LocalKey | None
    ) -> Endpoint:
        owner = self._cgroup_owner(cgroup_id, netns, m, key)
        if owner is not None:
            pod, container = owner
            if pod is not None:
                ep = Endpoint.for_pod(addr, pod)
                return ep if ep.container == container else dataclasses.replace(
                    ep, container=container)
        ep = self._netns_endpoint(addr, netns, m)
        if owner is not None and owner[1]:  # a container outside any pod: its name
            return dataclasses.replace(ep, container=owner[1])
        return ep

    def _netns_endpoint(self, addr: str, netns: int, m: _Moment) -> Endpoint:
        pod = self._local_pod(netns, m)
        if pod is not None:
            return Endpoint.for_pod(addr, pod)
        if netns == self.host_netns:
            return Endpoint.for_node(addr, self.node_name)
        if m.tokens is None:  # a lookup in the past
            return self._lookup(addr, m)
        held = self._memo.get(addr) or self._remember(addr)  # the same view: share it
        return m.read(("ip", addr), held)

    def _cgroup_owner(
        self, cgroup_id: int, netns: int, m: _Moment, key: LocalKey | None
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
            if key is not None:
                self._retry.add(key)  # a cgroup made after the last walk (walks are rate limited)
            return None
        owner = local.container_for_cgroup(cgroup_id)
        if owner is None:
            return None
        info = None
        if owner.container_id:
            cid = owner.container_id
            info = m.read(("cid", cid), self._container_past.held(
                cid, self._containers.get(cid), m.at))
            if info is None and key is not None and self._still_unlisted(cid):
                self._retry.add(key)
        if info is not None and info.netns and info.netns != netns:
            return None
        pod = self._pod_for_container(owner.pod_uid or (info.pod_uid if info else ""), info, m)
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

    def _pod_for_container(self, uid: str, info: ContainerInfo | None,
                           m: _Moment) -> PodInfo | None:
        """The pod a container belongs to: by UID from the API, else by the pod's name that
        kubelet wrote in the container's labels (API, then lab, else a pod known by name)."""
        kube = self._kube
        if kube is not None and uid:
            pod = m.read(("uid", uid), kube.pod_by_uid_at(uid, m.at))
            if pod is not None:
                return pod
        if info is None or not info.pod_name:
            return None
        namespace = info.pod_namespace or "default"
        token = ("pod", (namespace, info.pod_name))
        if kube is not None:
            pod = m.read(token, (0, kube.pod(namespace, info.pod_name)))
            # A same-named pod with another UID is a newer pod: this container is not its.
            if pod is not None and (not uid or not pod.uid or pod.uid == uid):
                return pod
        pod = m.read(token, self._lab.pod_by_name_at(namespace, info.pod_name, m.at))
        if pod is not None:
            return pod
        return PodInfo(namespace=namespace, name=info.pod_name, netns=info.netns,
                       node=self.node_name, uid=uid)

    def remote_endpoint(self, addr: str, local: Endpoint, *,
                        at_ns: int | None = None) -> Endpoint:
        """The peer of a socket: loopback is the local side itself (a pod's or the node's)."""
        if _is_loopback(addr) and local.kind in ("pod", "node"):
            return local if local.addr == addr else Endpoint(
                kind=local.kind, addr=addr, namespace=local.namespace, name=local.name,
                node=local.node, labels=local.labels, container=local.container,
                workload_kind=local.workload_kind, workload_name=local.workload_name)
        return self.endpoint(addr, at_ns=at_ns)

    def stable_since(self, remote: Sequence[str] = (),
                     local: tuple[str, int, int] | None = None) -> int:
        """Since when (boot ns) a record's ends are named as they are now: its ``local`` side
        ``(addr, netns, cgroup id)`` as :meth:`local_endpoint` names it, and its ``remote``
        addresses as :meth:`remote_endpoint` (or, without a local side, :meth:`endpoint`)
        does. An event at or after it resolves as now. With :meth:`sync`, what a cache of
        rendered events checks."""
        since = 0
        held = None
        if local is not None:
            key = (local[1], local[0], local[2])
            held = self._local_memo.get(key) or self._remember_local(key)
            since = held[0]
        for addr in remote:
            if held is not None and _is_loopback(addr) and held[1].kind in ("pod", "node"):
                continue  # named as the local side
            since = max(since, (self._memo.get(addr) or self._remember(addr))[0])
        return since

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
        now = _Moment(self._view_ns)
        for c in self._local.containers():
            if c.sandbox or not c.netns:
                continue
            uid = c.pod_uid
            if not uid and c.cgroup_path:
                parsed = parse_cgroup_path(c.cgroup_path)
                uid = parsed.pod_uid if parsed is not None else ""
            pod = self._pod_for_container(uid, c, now)
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
    a few hundred milliseconds, which must never run on the event thread. A failed poll
    is told once per cause on ``notices`` (printed by the command loop), not logged.
    """

    def __init__(self, local: LocalIdentity, interval: float, notices: Notices,
                 min_gap: float = 1.0) -> None:
        self._local = local
        self._notices = notices
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
            except Exception as exc:  # a bad poll must not end the polling
                tell_failure(self._notices, "poll", "container runtime poll failed", exc)
            else:
                self._notices.recovered("poll", "podsight: container runtime poll works again")
            last = time.monotonic()
