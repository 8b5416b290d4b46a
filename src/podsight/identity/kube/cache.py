"""IP -> pod / service / node, kept current by informers, answered with one dict hit.

Lookups (:meth:`KubeCache.pod_by_ip` and friends) run on the per-event hot
path, so they read plain dicts without a lock: CPython makes a single
``dict.get`` atomic, and writers only ever replace whole values. All writes
happen under one lock, from the informer threads.

**IP reuse.** Several objects can claim one IP at the same time: a new pod
gets the IP of a pod whose DELETED event has not arrived yet (events of
different objects are not ordered the way the kubelet acted), and a finished
Job pod keeps ``status.podIP`` after the IP went back to the pool. So each IP
keeps its list of claimants and the winner is chosen from the objects'
state, never from arrival order: live beats deleting beats finished, then
the newer ``creationTimestamp`` wins. The lookup dict always holds the winner.

**History.** Identity is wanted at an event's time, which may be before a
change the cache already applied (see :mod:`podsight.identity.history`).
Every change of the holder of an IP (pod, Service, Node) or of a pod UID is
recorded with the CLOCK_BOOTTIME instant the watch event (or relist) was
applied, and ``*_at`` lookups answer for a given instant. Recording starts
after each resource's first listing: the initial state has no past.

**Workloads.** A pod's top workload is found through ownerReferences
(pod -> ReplicaSet -> Deployment, pod -> Job -> CronJob; StatefulSet and
DaemonSet own pods directly), using metadata-only informers on ReplicaSets
and Jobs: no API call per pod. When a ReplicaSet arrives after its pods, or
its owner changes, the pods it owns are re-resolved.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from podsight.errors import UserError
from podsight.identity.endpoint import PodInfo
from podsight.identity.history import ChangeFeed, Timeline
from podsight.identity.kube.api import KubeAPI
from podsight.identity.kube.config import KubeConfig, load_config
from podsight.identity.kube.informer import Informer, InformerHealth, Resource, Sink
from podsight.identity.kube.objects import (
    Interner,
    Key,
    NamespaceRecord,
    NodeInfo,
    NodeRecord,
    OwnerRecord,
    PodRecord,
    ServiceInfo,
    ServiceRecord,
    decode_namespace,
    decode_node,
    decode_owner,
    decode_pod,
    decode_service,
)
from podsight.identity.notices import Notices

PODS = Resource("pods")
SERVICES = Resource("services")
NODES = Resource("nodes")
NAMESPACES = Resource("namespaces", metadata_only=True, required=False)
REPLICASETS = Resource("replicasets", "apps/v1", metadata_only=True, required=False)
JOBS = Resource("jobs", "batch/v1", metadata_only=True, required=False)
RESOURCES = (PODS, SERVICES, NODES, NAMESPACES, REPLICASETS, JOBS)


class _Claimant(Protocol):
    @property
    def rank(self) -> tuple[int, str, int]: ...
    @property
    def info(self) -> Any: ...


C = TypeVar("C", bound=_Claimant)


class IpIndex(Generic[C]):
    """ip -> the winning claimant's info, plus the claimants behind each IP.

    ``best`` is the dict the hot path reads. A changed IP is re-elected in
    place (``best[ip] = winner``), never popped and re-added, so a reader
    never sees an IP vanish during an update. With a ``timeline``, every
    change of winner is recorded there first (another object is a new holder;
    the same object with new details is not).
    """

    def __init__(self, timeline: Timeline[str, Any] | None = None) -> None:
        self.best: dict[str, Any] = {}
        self.timeline = timeline
        self._claims: dict[str, list[C]] = {}

    def add(self, ip: str, rec: C) -> None:
        claims = self._claims.get(ip)
        if claims is None:
            self._claims[ip] = [rec]
            self._install(ip, rec)
        else:
            claims.append(rec)
            self._elect(ip, claims)

    def remove(self, ip: str, rec: C) -> None:
        claims = self._claims.get(ip)
        if claims is None:
            return
        claims[:] = [c for c in claims if c is not rec]
        if claims:
            self._elect(ip, claims)
        else:
            del self._claims[ip]
            self._install(ip, None)

    def swap(self, ip: str, old: C, new: C) -> None:
        claims = self._claims.get(ip)
        if claims is None:
            self.add(ip, new)
            return
        for i, c in enumerate(claims):
            if c is old:
                claims[i] = new
                break
        else:
            claims.append(new)
        self._elect(ip, claims)

    def update(self, old: C | None, old_ips: tuple[str, ...], new: C | None,
               new_ips: tuple[str, ...]) -> None:
        """Move one object's claims from ``old_ips`` to ``new_ips``."""
        for ip in old_ips:
            if old is not None and (new is None or ip not in new_ips):
                self.remove(ip, old)
        for ip in new_ips:
            if new is None:
                continue
            if old is not None and ip in old_ips:
                self.swap(ip, old, new)
            else:
                self.add(ip, new)

    def reinfo(self, ip: str, old: Any, new: Any) -> None:
        """The winner of ``ip`` got new details (``old`` -> ``new`` info), nothing else."""
        if self.best.get(ip) is not old:
            return
        if self.timeline is not None:
            self.timeline.changed(ip, old, new, same=True)
        self.best[ip] = new

    def held(self, ip: str, at_ns: int) -> tuple[int, Any]:
        """``(since, info)`` of the holder of ``ip`` at ``at_ns`` (boot ns)."""
        current = self.best.get(ip)  # before the past: see podsight.identity.history
        if self.timeline is None:
            return 0, current
        return self.timeline.held(ip, current, at_ns)

    def _elect(self, ip: str, claims: list[C]) -> None:
        self._install(ip, claims[0] if len(claims) == 1 else max(claims, key=_rank))

    def _install(self, ip: str, winner: C | None) -> None:
        """Make ``winner`` (None: nobody) the holder of ``ip``: the past first, then ``best``."""
        old = self.best.get(ip)
        tl = self.timeline
        if winner is None:
            if old is not None:
                if tl is not None:
                    tl.changed(ip, old, None)
                del self.best[ip]
            return
        info = winner.info
        if info is old:
            return
        if tl is not None:
            tl.changed(ip, old, info, same=old is not None and _who(old) == _who(info))
        self.best[ip] = info

    def contested(self) -> int:
        return sum(1 for c in self._claims.values() if len(c) > 1)

    def __len__(self) -> int:
        return len(self.best)


def _rank(c: _Claimant) -> tuple[int, str, int]:
    return c.rank


def _who(info: Any) -> tuple[str, str, str]:
    """Which object an info is about (a pod, Service or Node), whatever its details say."""
    return (getattr(info, "namespace", ""), info.name, getattr(info, "uid", ""))


class KubeCache:
    """Pods, services, nodes, namespaces and owners of one cluster, for identity lookups.

    Use as a context manager or call :meth:`close`; :meth:`wait_synced`
    before trusting a miss. Without an ``api`` the cache is fed by calling
    the informers' ``apply_*`` methods (the benchmark does that).
    """

    def __init__(
        self,
        api: KubeAPI | None = None,
        *,
        resources: Iterable[Resource] = RESOURCES,
        watch_timeout: float = 300.0,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        page_size: int = 500,
    ) -> None:
        self._api = api
        self._lock = threading.Lock()
        self._state = threading.Condition()
        self._interner = Interner()
        self._seq = 0
        self._generation = 0
        #: Every key whose holder changed, for resolvers to drop what they derived from it.
        self.changes = ChangeFeed()
        #: One-line messages for the user (the API went away, came back): see take_notices.
        self.notices = Notices()
        self._failing: set[str] = set()  # informers that lost the API since they last watched
        self._pod_ips: IpIndex[PodRecord] = IpIndex(self._timeline("ip"))
        self._service_ips: IpIndex[ServiceRecord] = IpIndex(self._timeline("ip"))
        self._node_ips: IpIndex[NodeRecord] = IpIndex(self._timeline("ip"))
        self._uids: Timeline[str, PodInfo] = self._timeline("uid")
        # pods
        self._pods: dict[Key, PodRecord] = {}
        self._pod_by_ip = self._pod_ips.best  # the hot dict, bound once
        self._pods_by_node: dict[str, set[Key]] = {}
        self._pods_by_owner: dict[tuple[str, str, str], set[Key]] = {}
        self._pod_by_uid: dict[str, PodRecord] = {}  # metadata.uid -> record (cgroups name UIDs)
        # services, nodes, namespaces, owners
        self._services: dict[Key, ServiceRecord] = {}
        self._service_by_ip = self._service_ips.best
        self._nodes: dict[Key, NodeRecord] = {}
        self._node_by_ip = self._node_ips.best
        self._namespaces: dict[str, dict[str, str]] = {}
        self._owners: dict[str, dict[Key, tuple[str, str] | None]] = {
            "ReplicaSet": {}, "Job": {},
        }
        sinks: dict[str, Sink[Any]] = {
            "pods": Sink(self._decode(decode_pod), self._replace_pods, self._upsert_pod,
                         self._delete_pod),
            "services": Sink(self._decode(decode_service), self._replace_services,
                             self._upsert_service, self._delete_service),
            "nodes": Sink(self._decode(decode_node), self._replace_nodes, self._upsert_node,
                          self._delete_node),
            "namespaces": Sink(self._decode(decode_namespace), self._replace_namespaces,
                               self._upsert_namespace, self._delete_namespace),
            "replicasets": self._owner_sink("ReplicaSet"),
            "jobs": self._owner_sink("Job"),
        }
        self.informers: dict[str, Informer[Any]] = {
            r.plural: Informer(
                r, sinks[r.plural], api, watch_timeout=watch_timeout,
                initial_backoff=initial_backoff, max_backoff=max_backoff, page_size=page_size,
                on_state=self._notify, on_health=self._on_health,
            )
            for r in resources
        }

    # -------------------------------------------------------------- lifecycle
    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None,
                config: KubeConfig | None = None, **kwargs: Any) -> KubeCache:
        """Build (not start) a cache for the cluster kubectl would talk to."""
        cfg = config or load_config(kubeconfig, context)
        return cls(KubeAPI(cfg), **kwargs)

    def start(self) -> KubeCache:
        for inf in self.informers.values():
            inf.start()
        return self

    def close(self, timeout: float = 1.0) -> None:
        """Stop every informer and join its thread; returns within ``timeout``."""
        for inf in self.informers.values():
            inf.stop()
        deadline = time.monotonic() + timeout
        for inf in self.informers.values():
            inf.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> KubeCache:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_synced(self, timeout: float = 30.0, *, fail_fast: bool = True) -> None:
        """Block until every informer listed once; raise a one-line UserError otherwise.

        With ``fail_fast`` the first error before the initial sync is raised at
        once (a wrong server or missing RBAC will not fix itself within the
        timeout, and the CLI should say so now); the informers keep retrying.
        """
        deadline = time.monotonic() + timeout
        with self._state:
            while True:
                pending = [i for i in self.informers.values() if not i.synced]
                if not pending:
                    return
                if fail_fast:
                    for inf in pending:
                        if inf.error_before_sync is not None:
                            raise inf.error_before_sync
                left = deadline - time.monotonic()
                if left <= 0:
                    err = next((i.last_error for i in pending if i.last_error), None)
                    if err is not None:
                        raise UserError(str(err))
                    names = ", ".join(i.resource.display for i in pending)
                    raise UserError(f"timed out after {timeout:g}s waiting to list {names}")
                self._state.wait(min(left, 0.5))

    def _notify(self) -> None:
        with self._state:
            self._state.notify_all()

    def _timeline(self, kind: str) -> Timeline[str, Any]:
        tl: Timeline[str, Any] = Timeline(self.changes, kind)
        tl.recording = False  # until the first listing: see _started
        return tl

    def _started(self, *timelines: Timeline[str, Any] | None) -> None:
        """A resource's first listing is in: from now on its changes have a past."""
        for tl in timelines:
            if tl is not None:
                tl.recording = True

    def _on_health(self, informer: Informer[Any], error: UserError | None) -> None:
        """An informer lost the API (``error``) or watches again (None): tell the user once
        when the first one is lost and once when the last one is back, not per retry."""
        server = self._api.config.server if self._api is not None else "(no server)"
        with self._state:
            if error is not None:
                first = not self._failing
                self._failing.add(informer.resource.plural)
                if first:
                    cause = str(error).removeprefix(
                        f"cannot reach the Kubernetes API at {server}: ")
                    self.notices.warn("api", (
                        f"podsight: warning: lost the Kubernetes API at {server} ({cause}); "
                        "identity may go stale: names are kept from the cache until it is back"))
            else:
                self._failing.discard(informer.resource.plural)
                if not self._failing:
                    self.notices.recovered(
                        "api", f"podsight: the Kubernetes API at {server} is back; "
                               "identity is current again")

    @property
    def api_lost(self) -> bool:
        """Has a watch lost the API server (and not got it back yet)?"""
        return bool(self._failing)

    @property
    def synced(self) -> bool:
        return all(i.synced for i in self.informers.values())

    def health(self) -> list[InformerHealth]:
        return [i.health() for i in self.informers.values()]

    @property
    def generation(self) -> int:
        """Bumped on every change lookups can see: callers drop derived caches when it moves."""
        return self._generation

    # ---------------------------------------------------------------- lookups
    def pod_by_ip(self, ip: str) -> PodInfo | None:
        """The pod that owns ``ip`` now (hostNetwork pods are not here: the IP is the node's)."""
        info: PodInfo | None = self._pod_by_ip.get(ip)
        return info

    def service_by_ip(self, ip: str) -> ServiceInfo | None:
        info: ServiceInfo | None = self._service_by_ip.get(ip)
        return info

    def node_by_ip(self, ip: str) -> NodeInfo | None:
        info: NodeInfo | None = self._node_by_ip.get(ip)
        return info

    def pod_by_uid(self, uid: str) -> PodInfo | None:
        """The pod with this ``metadata.uid``: what kubelet's cgroup names call a pod."""
        rec = self._pod_by_uid.get(uid)
        info: PodInfo | None = None if rec is None else rec.info
        return info

    # At an event's time (``at_ns``, CLOCK_BOOTTIME ns): ``(since, holder)``, the holder then
    # and since when it held the key (0: from before any change podsight saw), which is what
    # a resolver needs to memoise an answer.
    def pod_by_ip_at(self, ip: str, at_ns: int) -> tuple[int, PodInfo | None]:
        return self._pod_ips.held(ip, at_ns)

    def service_by_ip_at(self, ip: str, at_ns: int) -> tuple[int, ServiceInfo | None]:
        return self._service_ips.held(ip, at_ns)

    def node_by_ip_at(self, ip: str, at_ns: int) -> tuple[int, NodeInfo | None]:
        return self._node_ips.held(ip, at_ns)

    def pod_by_uid_at(self, uid: str, at_ns: int) -> tuple[int, PodInfo | None]:
        rec = self._pod_by_uid.get(uid)  # before the past: see podsight.identity.history
        return self._uids.held(uid, None if rec is None else rec.info, at_ns)

    def pod(self, namespace: str, name: str) -> PodInfo | None:
        rec = self._pods.get((namespace, name))
        info: PodInfo | None = None if rec is None else rec.info
        return info

    def pods(self) -> list[PodInfo]:
        with self._lock:
            return [r.info for r in self._pods.values()]

    def pods_on_node(self, node: str, *, host_network: bool | None = None) -> list[PodInfo]:
        """Pods bound to ``node``; ``host_network=True`` gives those sharing the node's IPs."""
        with self._lock:
            recs = [self._pods[k] for k in self._pods_by_node.get(node, ())]
        return [r.info for r in recs if host_network is None or r.host_network == host_network]

    def services(self) -> list[ServiceInfo]:
        with self._lock:
            return [r.info for r in self._services.values()]

    def nodes(self) -> list[NodeInfo]:
        with self._lock:
            return [r.info for r in self._nodes.values()]

    def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        return self._namespaces.get(namespace)

    def namespaces(self) -> list[str]:
        with self._lock:
            return list(self._namespaces)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "pods": len(self._pods), "pod_ips": len(self._pod_ips),
                "contested_pod_ips": self._pod_ips.contested(),
                "services": len(self._services), "service_ips": len(self._service_ips),
                "nodes": len(self._nodes), "namespaces": len(self._namespaces),
                "replicasets": len(self._owners["ReplicaSet"]), "jobs": len(self._owners["Job"]),
                "label_sets": len(self._interner),
                "ips_with_history": sum(len(ix.timeline) for ix in
                                        (self._pod_ips, self._service_ips, self._node_ips)
                                        if ix.timeline is not None),
            }

    # ------------------------------------------------------------------ pods
    def _decode(self, fn: Callable[[Any, Interner], Any]) -> Callable[[Any], Any]:
        interner = self._interner
        return lambda obj: fn(obj, interner)

    def _replace_pods(self, items: dict[Key, PodRecord]) -> None:
        with self._lock:
            for key in [k for k in self._pods if k not in items]:
                self._delete_pod_locked(key)
            for key, rec in items.items():
                self._upsert_pod_locked(key, rec, compact=False)
            self._maybe_compact()
            self._started(self._pod_ips.timeline, self._uids)

    def _upsert_pod(self, key: Key, rec: PodRecord) -> None:
        with self._lock:
            self._upsert_pod_locked(key, rec)

    def _delete_pod(self, key: Key) -> None:
        with self._lock:
            self._delete_pod_locked(key)

    def _upsert_pod_locked(self, key: Key, rec: PodRecord, compact: bool = True) -> None:
        old = self._pods.get(key)
        if old is not None and old.same(rec):
            return  # a status heartbeat: nothing identity shows changed
        if old is not None and old.uid == rec.uid:
            rec.seq = old.seq
        else:
            self._seq += 1
            rec.seq = self._seq
        rec.info = self._pod_info(rec)
        # The pasts first (see podsight.identity.history), then the current state. A UID
        # names one pod forever: its past starts when the pod goes, not when it comes
        # (its containers may run before the watch brings the pod).
        if old is not None and old.uid and old.uid != rec.uid:
            self._uids.changed(old.uid, old.info, None)  # same name, another pod: old is gone
        if rec.uid:
            self._uids.changed(rec.uid, None if old is None else old.info, rec.info, same=True)
        self.changes.note(("pod", key))
        self._pods[key] = rec
        old_ips = () if old is None or old.host_network else old.ips
        new_ips = () if rec.host_network else rec.ips
        self._pod_ips.update(old, old_ips, rec, new_ips)
        if old is not None:
            self._unindex_pod(old)
        self._index_pod(rec)
        self._generation += 1
        if compact:  # not mid-relist: the table holds the whole listing's labels then
            self._maybe_compact()

    def _delete_pod_locked(self, key: Key) -> None:
        old = self._pods.get(key)
        if old is None:
            return
        if old.uid:
            self._uids.changed(old.uid, old.info, None)
        self.changes.note(("pod", key))
        del self._pods[key]
        self._pod_ips.update(old, () if old.host_network else old.ips, None, ())
        self._unindex_pod(old)
        self._generation += 1

    def _index_pod(self, rec: PodRecord) -> None:
        self._pods_by_node.setdefault(rec.node, set()).add(rec.key)
        if rec.uid:
            self._pod_by_uid[rec.uid] = rec
        if rec.owner is not None and rec.owner[0] in self._owners:
            okey = (rec.key[0], rec.owner[0], rec.owner[1])
            self._pods_by_owner.setdefault(okey, set()).add(rec.key)

    def _unindex_pod(self, rec: PodRecord) -> None:
        if self._pod_by_uid.get(rec.uid) is rec:
            del self._pod_by_uid[rec.uid]
        keys = self._pods_by_node.get(rec.node)
        if keys is not None:
            keys.discard(rec.key)
            if not keys:
                del self._pods_by_node[rec.node]
        if rec.owner is not None and rec.owner[0] in self._owners:
            okey = (rec.key[0], rec.owner[0], rec.owner[1])
            owned = self._pods_by_owner.get(okey)
            if owned is not None:
                owned.discard(rec.key)
                if not owned:
                    del self._pods_by_owner[okey]

    def _pod_info(self, rec: PodRecord) -> PodInfo:
        kind, name = self._workload(rec)
        return PodInfo(
            namespace=rec.key[0], name=rec.key[1], ips=rec.ips, node=rec.node,
            labels=rec.labels, containers=rec.containers, workload_kind=kind, workload_name=name,
            uid=rec.uid, host_network=rec.host_network,
        )

    def _workload(self, rec: PodRecord) -> tuple[str, str]:
        """The top controller: Deployment over ReplicaSet, CronJob over Job, else the owner."""
        if rec.owner is None:
            return ("", "")
        kind, name = rec.owner
        table = self._owners.get(kind)
        if table is None:
            return rec.owner  # StatefulSet, DaemonSet, Node (static pods), custom controllers
        okey = (rec.key[0], name)
        if okey in table:
            top = table[okey]
            return top if top is not None else rec.owner
        # not (yet) seen, or RBAC hides ReplicaSets: the Deployment controller
        # names its ReplicaSets "<deployment>-<pod-template-hash>"
        tmpl = rec.labels.get("pod-template-hash")
        if kind == "ReplicaSet" and tmpl and name.endswith("-" + tmpl):
            return ("Deployment", name[: -len(tmpl) - 1])
        return rec.owner

    # ----------------------------------------------------- owners (RS, Jobs)
    def _owner_sink(self, kind: str) -> Sink[OwnerRecord]:
        def replace(items: dict[Key, OwnerRecord]) -> None:
            with self._lock:
                table = self._owners[kind]
                for key in [k for k in table if k not in items]:
                    self._set_owner(kind, key, None, delete=True)
                for key, rec in items.items():
                    self._set_owner(kind, key, rec.owner)

        def upsert(key: Key, rec: OwnerRecord) -> None:
            with self._lock:
                self._set_owner(kind, key, rec.owner)

        def delete(key: Key) -> None:
            with self._lock:
                self._set_owner(kind, key, None, delete=True)

        return Sink(self._decode(decode_owner), replace, upsert, delete)

    def _set_owner(self, kind: str, key: Key, owner: tuple[str, str] | None,
                   delete: bool = False) -> None:
        table = self._owners[kind]
        if delete:
            if key not in table:
                return
            del table[key]
        else:
            if key in table and table[key] == owner:
                return
            table[key] = owner
        for pod_key in list(self._pods_by_owner.get((key[0], kind, key[1]), ())):
            self._refresh_pod(self._pods[pod_key])

    def _refresh_pod(self, rec: PodRecord) -> None:
        """Rebuild one pod's PodInfo in place (its workload changed)."""
        info = self._pod_info(rec)
        if info == rec.info:
            return
        old = rec.info
        if rec.uid:
            self._uids.changed(rec.uid, old, info, same=True)
        self.changes.note(("pod", rec.key))
        rec.info = info
        for ip in rec.ips:
            self._pod_ips.reinfo(ip, old, info)
        self._generation += 1

    # --------------------------------------------------------------- services
    def _replace_services(self, items: dict[Key, ServiceRecord]) -> None:
        with self._lock:
            for key in [k for k in self._services if k not in items]:
                self._delete_service_locked(key)
            for key, rec in items.items():
                self._upsert_service_locked(key, rec, compact=False)
            self._maybe_compact()
            self._started(self._service_ips.timeline)

    def _upsert_service(self, key: Key, rec: ServiceRecord) -> None:
        with self._lock:
            self._upsert_service_locked(key, rec)

    def _delete_service(self, key: Key) -> None:
        with self._lock:
            self._delete_service_locked(key)

    def _upsert_service_locked(self, key: Key, rec: ServiceRecord, compact: bool = True) -> None:
        old = self._services.get(key)
        if old is not None and old.same(rec):
            return
        self._sequence(old, rec)
        self._services[key] = rec
        self._service_ips.update(old, old.ips if old else (), rec, rec.ips)
        self._generation += 1
        if compact:  # not mid-relist: the table holds the whole listing's labels then
            self._maybe_compact()

    def _delete_service_locked(self, key: Key) -> None:
        old = self._services.pop(key, None)
        if old is not None:
            self._service_ips.update(old, old.ips, None, ())
            self._generation += 1

    # ------------------------------------------------------------------ nodes
    def _replace_nodes(self, items: dict[Key, NodeRecord]) -> None:
        with self._lock:
            for key in [k for k in self._nodes if k not in items]:
                self._delete_node_locked(key)
            for key, rec in items.items():
                self._upsert_node_locked(key, rec)
            self._started(self._node_ips.timeline)

    def _upsert_node(self, key: Key, rec: NodeRecord) -> None:
        with self._lock:
            self._upsert_node_locked(key, rec)

    def _delete_node(self, key: Key) -> None:
        with self._lock:
            self._delete_node_locked(key)

    def _upsert_node_locked(self, key: Key, rec: NodeRecord) -> None:
        old = self._nodes.get(key)
        if old is not None and old.same(rec):
            return
        self._sequence(old, rec)
        self._nodes[key] = rec
        self._node_ips.update(old, old.ips if old else (), rec, rec.ips)
        self._generation += 1

    def _delete_node_locked(self, key: Key) -> None:
        old = self._nodes.pop(key, None)
        if old is not None:
            self._node_ips.update(old, old.ips, None, ())
            self._generation += 1

    # ------------------------------------------------------------- namespaces
    def _replace_namespaces(self, items: dict[Key, NamespaceRecord]) -> None:
        with self._lock:
            self._namespaces = {k[1]: r.labels for k, r in items.items()}
            self._generation += 1

    def _upsert_namespace(self, key: Key, rec: NamespaceRecord) -> None:
        with self._lock:
            self._namespaces[key[1]] = rec.labels
            self._generation += 1

    def _delete_namespace(self, key: Key) -> None:
        with self._lock:
            self._namespaces.pop(key[1], None)
            self._generation += 1

    # ---------------------------------------------------------------- helpers
    def _sequence(self, old: ServiceRecord | NodeRecord | None,
                  rec: ServiceRecord | NodeRecord) -> None:
        if old is not None and old.uid == rec.uid:
            rec.seq = old.seq
        else:
            self._seq += 1
            rec.seq = self._seq

    def _maybe_compact(self) -> None:
        """Forget label sets no object uses, once the table is twice what is live."""
        live = len(self._pods) + len(self._services) + len(self._nodes) + len(self._namespaces)
        # not while a first listing is still being decoded: its labels are in
        # the table but not yet in the cache, and would stop being shared
        if len(self._interner) > 2 * live + 1024 and self.synced:
            self._interner.compact(
                [r.labels for r in self._pods.values()]
                + [r.info.selector for r in self._services.values()]
                + [r.info.labels for r in self._nodes.values()]
                + list(self._namespaces.values())
            )
