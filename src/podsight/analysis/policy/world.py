"""Who is who for the checker and the advisor: pods, namespaces, Services and nodes.

Built from Kubernetes objects (``--objects FILE``: ``kubectl get
namespaces,pods -A -o yaml``, Services and Nodes welcome too, and the lab's
inventory is such a file), from the API server (``--kubeconfig``, listed
once), or from nothing (then only what the records themselves say is known).

What is *not* known is kept apart from what is empty: a pod read from a
SQLite capture has labels nobody wrote down (``labels is None``), a pod
from JSON without container ports has ``ports is None``, and a world with
no Namespace objects knows only each namespace's
``kubernetes.io/metadata.name``. The checker refuses to guess past that
(see :class:`Unknown`), rather than give a verdict that is only maybe right.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from podsight.analysis.policy.documents import Document
from podsight.analysis.policy.model import NAMESPACE_NAME_LABEL
from podsight.errors import UserError

#: Labels controllers put on pods: never part of a selector the advisor writes.
GENERATED_LABELS = frozenset({
    "pod-template-hash", "controller-revision-hash", "pod-template-generation",
    "statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index",
    "job-name", "controller-uid", "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/controller-uid", "batch.kubernetes.io/job-completion-index",
})


class Unknown(UserError):
    """A verdict would depend on something neither the records nor the objects say."""


@dataclass(frozen=True, slots=True)
class ContainerPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class Pod:
    """A pod as policies see it. ``labels``/``ports`` None: not known (not: none)."""

    namespace: str
    name: str
    labels: Mapping[str, str] | None = field(default=None, hash=False)
    ips: tuple[str, ...] = ()
    ports: tuple[ContainerPort, ...] | None = None
    node: str = ""
    host_ip: str = ""
    host_network: bool = False
    workload_kind: str = ""
    workload_name: str = ""

    @cached_property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @cached_property
    def notation(self) -> str:
        return f"p/{self.namespace}/{self.name}"

    @property
    def workload(self) -> tuple[str, str]:
        """(kind, name) of its top controller, or ("Pod", its name)."""
        if self.workload_kind and self.workload_name:
            return (self.workload_kind, self.workload_name)
        return ("Pod", self.name)


@dataclass(frozen=True)
class ServicePort:
    name: str
    protocol: str
    port: int
    target: int | str  # a number, or a container port's name


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    ips: tuple[str, ...] = ()
    selector: Mapping[str, str] | None = field(default=None, hash=False, compare=False)
    ports: tuple[ServicePort, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def port(self, number: int, protocol: str) -> ServicePort | None:
        return next((p for p in self.ports if p.port == number and p.protocol == protocol),
                    None)


@dataclass
class World:
    """Everything known about the cluster; lookups are dict hits."""

    pods: dict[tuple[str, str], Pod] = field(default_factory=dict)
    pods_by_ip: dict[str, Pod] = field(default_factory=dict)
    namespaces: dict[str, Mapping[str, str]] = field(default_factory=dict)
    #: Namespace objects were given: labels beyond kubernetes.io/metadata.name are known.
    namespaces_known: bool = False
    services: dict[tuple[str, str], Service] = field(default_factory=dict)
    services_by_ip: dict[str, Service] = field(default_factory=dict)
    nodes_by_ip: dict[str, str] = field(default_factory=dict)
    #: Where it came from, for messages ("--objects lab.yaml", "the API at ...").
    origin: str = ""

    def add_pod(self, pod: Pod) -> None:
        old = self.pods.get((pod.namespace, pod.name))
        if old is not None:
            for ip in old.ips:
                if self.pods_by_ip.get(ip) is old:
                    del self.pods_by_ip[ip]
        self.pods[(pod.namespace, pod.name)] = pod
        if not pod.host_network:  # a host-network pod's IP is its node's
            for ip in pod.ips:
                self.pods_by_ip[ip] = pod
        elif pod.host_ip and pod.node:
            self.nodes_by_ip.setdefault(pod.host_ip, pod.node)
        if pod.host_ip and pod.node:
            self.nodes_by_ip.setdefault(pod.host_ip, pod.node)
        self.namespace_seen(pod.namespace)

    def add_service(self, svc: Service) -> None:
        self.services[(svc.namespace, svc.name)] = svc
        for ip in svc.ips:
            self.services_by_ip[ip] = svc
        self.namespace_seen(svc.namespace)

    def namespace_seen(self, name: str) -> None:
        if name not in self.namespaces:
            self.namespaces[name] = {NAMESPACE_NAME_LABEL: name}

    def namespace_labels(self, name: str) -> Mapping[str, str]:
        labels = self.namespaces.get(name)
        return labels if labels is not None else {NAMESPACE_NAME_LABEL: name}

    def backends(self, svc: Service) -> list[Pod]:
        """The pods behind a Service (its selector, in its namespace), in name order."""
        sel = svc.selector
        if not sel:
            return []
        return sorted((p for p in self.pods.values()
                       if p.namespace == svc.namespace and p.labels is not None
                       and all(p.labels.get(k) == val for k, val in sel.items())),
                      key=lambda p: p.name)

    def merge(self, other: World) -> None:
        for pod in other.pods.values():
            self.add_pod(pod)
        for svc in other.services.values():
            self.add_service(svc)
        for name, labels in other.namespaces.items():
            if other.namespaces_known or name not in self.namespaces:
                self.namespaces[name] = labels
        self.namespaces_known = self.namespaces_known or other.namespaces_known
        self.nodes_by_ip.update(other.nodes_by_ip)


# -- from Kubernetes objects ------------------------------------------------------------------

def from_documents(docs: Iterable[Document], origin: str) -> World:
    """A world from Namespace, Pod, Service and Node objects; other kinds are ignored."""
    world = World(origin=origin)
    namespaces: dict[str, Mapping[str, str]] = {}
    for doc in docs:
        kind = doc.kind
        try:
            if kind == "Namespace":
                name, labels = namespace_of(doc.obj)
                namespaces[name] = labels
            elif kind == "Pod":
                world.add_pod(pod_of(doc.obj))
            elif kind == "Service":
                world.add_service(service_of(doc.obj))
            elif kind == "Node":
                for name, ip in node_ips(doc.obj):
                    world.nodes_by_ip[ip] = name
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UserError(f"{doc.source}: not a valid {kind} ({_why(exc)})") from None
    if namespaces:
        world.namespaces_known = True
        world.namespaces.update(namespaces)
    return world


def _why(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"{exc.args[0]} is missing"
    return " ".join(str(exc).split()) or type(exc).__name__


def _labels(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TypeError("labels must be a mapping")
    return {str(k): str(v) for k, v in raw.items()}


def _ip(text: str) -> str:
    """The address as the kernel side prints it (IPv6 compressed)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None


def namespace_of(obj: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    md = obj["metadata"]
    name = str(md["name"])
    labels = _labels(md.get("labels"))
    labels.setdefault(NAMESPACE_NAME_LABEL, name)  # the API server sets it (1.21 and later)
    return name, labels


def pod_of(obj: Mapping[str, Any]) -> Pod:
    md = obj["metadata"]
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ips = [_ip(str(p["ip"])) for p in status.get("podIPs") or () if p.get("ip")]
    if not ips and status.get("podIP"):
        ips = [_ip(str(status["podIP"]))]
    ports = []
    for container in spec.get("containers") or ():
        for p in container.get("ports") or ():
            ports.append(ContainerPort(str(p.get("name", "")), int(p["containerPort"]),
                                       str(p.get("protocol", "TCP"))))
    labels = _labels(md.get("labels"))
    kind, name = workload_of(md, labels)
    host_ip = status.get("hostIP") or ""
    return Pod(
        namespace=sys.intern(str(md.get("namespace") or "default")),
        name=str(md["name"]),
        labels=labels,
        ips=tuple(dict.fromkeys(ips)),
        ports=tuple(ports),
        node=str(spec.get("nodeName") or ""),
        host_ip=_ip(str(host_ip)) if host_ip else "",
        host_network=bool(spec.get("hostNetwork")),
        workload_kind=kind,
        workload_name=name,
    )


def workload_of(md: Mapping[str, Any], labels: Mapping[str, str]) -> tuple[str, str]:
    """The pod's top controller from its ownerReference, without asking for the owner: a
    ReplicaSet named ``<deployment>-<pod-template-hash>`` is its Deployment's."""
    for ref in md.get("ownerReferences") or ():
        if not ref.get("controller"):
            continue
        kind, name = str(ref.get("kind", "")), str(ref.get("name", ""))
        template_hash = labels.get("pod-template-hash")
        if kind == "ReplicaSet" and template_hash and name.endswith("-" + template_hash):
            return ("Deployment", name[: -len(template_hash) - 1])
        return (kind, name)
    return ("", "")


def service_of(obj: Mapping[str, Any]) -> Service:
    md = obj["metadata"]
    spec = obj.get("spec") or {}
    raw_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    ports = []
    for p in spec.get("ports") or ():
        target = p.get("targetPort", p.get("port"))
        ports.append(ServicePort(str(p.get("name", "")), str(p.get("protocol", "TCP")),
                                 int(p["port"]),
                                 int(target) if isinstance(target, int) or str(target).isdigit()
                                 else str(target)))
    selector = spec.get("selector")
    return Service(
        namespace=str(md.get("namespace") or "default"),
        name=str(md["name"]),
        ips=tuple(_ip(str(ip)) for ip in raw_ips if ip and ip != "None"),
        selector=_labels(selector) if selector else None,
        ports=tuple(ports),
    )


def node_ips(obj: Mapping[str, Any]) -> list[tuple[str, str]]:
    name = str(obj["metadata"]["name"])
    return [(name, _ip(str(a["address"]))) for a in (obj.get("status") or {}).get("addresses")
            or () if a.get("type") in ("InternalIP", "ExternalIP") and a.get("address")]
