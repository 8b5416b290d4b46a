"""Compact records decoded from raw Kubernetes JSON, keeping only what identity needs.

A pod as the API sends it is 5-10 KB of JSON and tens of KB as Python
objects; 40k of them would not fit the memory budget of a per-node agent.
Decoders here read the parsed ``dict`` once and keep a handful of fields in
slotted records. Strings that repeat across objects (namespaces, node names,
label keys and values, container names) are interned, and identical label
sets share one dict, so a Deployment's 500 pods hold one labels dict.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

Key = tuple[str, str]  # (namespace or "", name)
Raw = Mapping[str, Any]
_EMPTY: dict[str, str] = {}
_NOTHING: Mapping[str, Any] = {}

# ranks decide which object owns a contested IP: higher wins
LIVE, DELETING, TERMINAL = 2, 1, 0


class ServicePort(NamedTuple):
    """One port of a Service, as needed to name ``s/ns/svc:port`` and map it to pods."""

    name: str
    protocol: str
    port: int
    target_port: str  # a number or a named container port, as written in the spec
    node_port: int = 0


@dataclass(frozen=True)
class ServiceInfo:
    """What identity knows about one Service."""

    namespace: str
    name: str
    ips: tuple[str, ...] = ()  # clusterIPs (both families when dual-stack)
    ports: tuple[ServicePort, ...] = ()
    selector: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    type: str = "ClusterIP"


@dataclass(frozen=True)
class NodeInfo:
    """What identity knows about one Node: its name and its InternalIP addresses."""

    name: str
    ips: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


class Interner:
    """Shares equal strings and equal label dicts between records.

    Label dicts are shared, so nobody may mutate one; :meth:`compact` forgets
    label sets no live object uses any more, so churn (Job pods carry unique
    ``controller-uid`` labels) cannot grow the table forever.
    """

    def __init__(self) -> None:
        self._labels: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}

    def labels(self, raw: Mapping[str, str] | None) -> dict[str, str]:
        if not raw:
            return _EMPTY
        key = tuple(raw.items())
        shared = self._labels.get(key)
        if shared is None:
            shared = {sys.intern(k): sys.intern(v) for k, v in key}
            self._labels[key] = shared
        return shared

    def __len__(self) -> int:
        return len(self._labels)

    def compact(self, live: Iterable[dict[str, str]]) -> None:
        self._labels = {tuple(d.items()): d for d in live if d}


def _ip(text: str) -> str:
    """IPv6 addresses in the compressed form the kernel side prints; IPv4 untouched."""
    if ":" in text:
        try:
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            return text
    return text


def key_of(obj: Raw) -> Key:
    md = obj["metadata"]
    return (md.get("namespace") or "", md["name"])


def controller_of(md: Raw) -> tuple[str, str] | None:
    """The controlling owner (kind, name): the one ownerReference with controller=true."""
    for ref in md.get("ownerReferences") or ():
        if ref.get("controller"):
            return (sys.intern(ref.get("kind", "")), sys.intern(ref.get("name", "")))
    return None


class PodRecord:
    """One pod, as stored by the cache (``info`` is filled in when it is applied)."""

    __slots__ = ("containers", "created", "host_network", "info", "ips", "key", "labels",
                 "liveness", "node", "owner", "seq", "uid")

    def __init__(self, key: Key, uid: str, ips: tuple[str, ...], node: str, host_network: bool,
                 labels: dict[str, str], containers: tuple[str, ...],
                 owner: tuple[str, str] | None, liveness: int, created: str) -> None:
        self.key = key
        self.uid = uid
        self.ips = ips
        self.node = node
        self.host_network = host_network
        self.labels = labels
        self.containers = containers
        self.owner = owner
        self.liveness = liveness
        self.created = created
        self.seq = 0
        self.info: Any = None  # PodInfo; Any keeps this module free of the identity import

    def same(self, other: PodRecord) -> bool:
        """True when nothing identity shows changed (status heartbeats are ignored)."""
        return (self.uid == other.uid and self.ips == other.ips and self.node == other.node
                and self.host_network == other.host_network and self.labels == other.labels
                and self.containers == other.containers and self.owner == other.owner
                and self.liveness == other.liveness)

    @property
    def rank(self) -> tuple[int, str, int]:
        return (self.liveness, self.created, self.seq)


def decode_pod(obj: Raw, interner: Interner) -> PodRecord:
    md = obj["metadata"]
    spec = obj.get("spec") or _NOTHING
    status = obj.get("status") or _NOTHING
    ips: tuple[str, ...] = tuple(_ip(p["ip"]) for p in status.get("podIPs") or () if p.get("ip"))
    if not ips and status.get("podIP"):
        ips = (_ip(status["podIP"]),)
    if status.get("phase") in ("Succeeded", "Failed"):
        liveness = TERMINAL  # its IP went back to the pool; a new pod may hold it now
    elif md.get("deletionTimestamp"):
        liveness = DELETING
    else:
        liveness = LIVE
    return PodRecord(
        key=(sys.intern(md.get("namespace") or ""), md["name"]),
        uid=md.get("uid", ""),
        ips=ips,
        node=sys.intern(spec.get("nodeName") or ""),
        host_network=bool(spec.get("hostNetwork")),
        labels=interner.labels(md.get("labels")),
        containers=tuple(sys.intern(c["name"]) for c in spec.get("containers") or ()),
        owner=controller_of(md),
        liveness=liveness,
        created=md.get("creationTimestamp", ""),
    )


class ServiceRecord:
    __slots__ = ("created", "info", "key", "liveness", "seq", "uid")

    def __init__(self, key: Key, uid: str, info: ServiceInfo, liveness: int, created: str) -> None:
        self.key = key
        self.uid = uid
        self.info = info
        self.liveness = liveness
        self.created = created
        self.seq = 0

    @property
    def ips(self) -> tuple[str, ...]:
        return self.info.ips

    def same(self, other: ServiceRecord) -> bool:
        return (self.uid == other.uid and self.info == other.info
                and self.info.selector == other.info.selector and self.liveness == other.liveness)

    @property
    def rank(self) -> tuple[int, str, int]:
        return (self.liveness, self.created, self.seq)


def decode_service(obj: Raw, interner: Interner) -> ServiceRecord:
    md = obj["metadata"]
    spec = obj.get("spec") or _NOTHING
    raw_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    ips = tuple(_ip(ip) for ip in raw_ips if ip and ip != "None")
    ports = tuple(
        ServicePort(
            name=sys.intern(p.get("name", "")),
            protocol=sys.intern(p.get("protocol", "TCP")),
            port=int(p.get("port", 0)),
            target_port=sys.intern(str(p.get("targetPort", p.get("port", "")))),
            node_port=int(p.get("nodePort", 0)),
        )
        for p in spec.get("ports") or ()
    )
    ns = sys.intern(md.get("namespace") or "")
    info = ServiceInfo(
        namespace=ns,
        name=md["name"],
        ips=ips,
        ports=ports,
        selector=interner.labels(spec.get("selector")),
        type=sys.intern(spec.get("type", "ClusterIP")),
    )
    liveness = DELETING if md.get("deletionTimestamp") else LIVE
    return ServiceRecord((ns, info.name), md.get("uid", ""), info, liveness,
                         md.get("creationTimestamp", ""))


class NodeRecord:
    __slots__ = ("created", "info", "key", "liveness", "seq", "uid")

    def __init__(self, key: Key, uid: str, info: NodeInfo, created: str) -> None:
        self.key = key
        self.uid = uid
        self.info = info
        self.liveness = LIVE
        self.created = created
        self.seq = 0

    @property
    def ips(self) -> tuple[str, ...]:
        return self.info.ips

    def same(self, other: NodeRecord) -> bool:
        return (self.uid == other.uid and self.info == other.info
                and self.info.labels == other.info.labels)

    @property
    def rank(self) -> tuple[int, str, int]:
        return (self.liveness, self.created, self.seq)


def decode_node(obj: Raw, interner: Interner) -> NodeRecord:
    md = obj["metadata"]
    status = obj.get("status") or _NOTHING
    ips = tuple(
        _ip(a["address"]) for a in status.get("addresses") or ()
        if a.get("type") == "InternalIP" and a.get("address")
    )
    name = sys.intern(md["name"])
    info = NodeInfo(name=name, ips=ips, labels=interner.labels(md.get("labels")))
    return NodeRecord(("", name), md.get("uid", ""), info, md.get("creationTimestamp", ""))


class OwnerRecord:
    """A ReplicaSet or Job: only who controls it matters (the pod's top workload)."""

    __slots__ = ("key", "owner")

    def __init__(self, key: Key, owner: tuple[str, str] | None) -> None:
        self.key = key
        self.owner = owner


def decode_owner(obj: Raw, interner: Interner) -> OwnerRecord:
    md = obj["metadata"]
    return OwnerRecord((sys.intern(md.get("namespace") or ""), md["name"]), controller_of(md))


class NamespaceRecord:
    __slots__ = ("key", "labels")

    def __init__(self, key: Key, labels: dict[str, str]) -> None:
        self.key = key
        self.labels = labels


def decode_namespace(obj: Raw, interner: Interner) -> NamespaceRecord:
    md = obj["metadata"]
    return NamespaceRecord(("", sys.intern(md["name"])), interner.labels(md.get("labels")))
