"""A lab built from a file: ``podsight lab up --topology FILE``.

The file is what ``policy check --objects`` reads: a ``kind: List`` of
Namespace and Pod objects, as ``kubectl get namespaces,pods -A -o yaml``
prints it (YAML or JSON, several documents welcome). Every Pod becomes a lab
pod with its namespace, name and labels, its ``status.podIP`` (allocated
when absent), and a server answering on every ``spec.containers[].ports``
number over TCP and UDP (this kernel has no SCTP sockets). Namespace labels
go into the lab's inventory, so policies select namespaces as they would in
the cluster.

The lab is one node on one /24, so a pod's IPv4 address must be in
10.244.0.0/24 (2 to 254; .1 is the node) and its IPv6 address, if the file
gives one, is ``fd00:244::<that number in hex>``. What the lab cannot be
(a host-network pod, an address elsewhere) is refused with one line: a lab
that silently differs from the file would make every result about it wrong.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from podsight.analysis.policy import validation as v
from podsight.analysis.policy.documents import documents
from podsight.errors import UserError
from podsight.lab.topology import LabPod

FIRST_INDEX, LAST_INDEX = 2, 254
PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True)
class Topology:
    """Pods and namespace labels of a lab built from a file."""

    pods: tuple[LabPod, ...]
    namespaces: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    source: str = ""
    skipped: Mapping[str, int] = field(default_factory=dict)  # kinds not built -> count

    def to_state(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "namespaces": {k: dict(v) for k, v in self.namespaces.items()},
            "pods": [{"namespace": p.namespace, "name": p.name, "index": p.index,
                      "labels": dict(p.labels), "ports": [list(x) for x in p.ports]}
                     for p in self.pods],
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> Topology:
        pods = tuple(LabPod(p["namespace"], p["name"], int(p["index"]), dict(p["labels"]),
                            ports=tuple((str(n), int(num), str(proto))
                                        for n, num, proto in p["ports"]))
                     for p in data["pods"])
        return cls(pods, {k: dict(v) for k, v in data["namespaces"].items()},
                   str(data.get("source", "")))


def load(path: str) -> Topology:
    """The topology in ``path``, or a one-line error (exit status 2)."""
    namespaces: dict[str, dict[str, str]] = {}
    raw_pods: list[tuple[str, dict[str, Any]]] = []
    skipped: dict[str, int] = {}
    for doc in documents(path, "--topology"):
        if doc.kind == "Namespace":
            name, labels = _namespace(doc.source, doc.obj)
            namespaces[name] = labels
        elif doc.kind == "Pod":
            raw_pods.append((doc.source, doc.obj))
        else:
            kind = doc.kind or "object without a kind"
            skipped[kind] = skipped.get(kind, 0) + 1
    if not raw_pods:
        raise UserError(f"--topology {path}: no Pod objects (a lab needs at least one pod)")
    pods = _pods(raw_pods)
    for pod in pods:
        namespaces.setdefault(pod.namespace, {})
    return Topology(tuple(pods), namespaces, path, skipped)


def _namespace(source: str, obj: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    problems = v.Problems()
    md = v.mapping(problems, "metadata", obj.get("metadata"), _META)
    name = v.string(problems, "metadata.name", md.get("name")) or ""
    why = v.dns1123_label(name) if name else "Required value"
    if why:
        problems.add("metadata.name", f"Invalid value: {name!r}: {why}")
    labels = v.labels(problems, "metadata.labels", md.get("labels"))
    if problems:
        raise UserError(f"{source}: Namespace {name or '(no name)'} is invalid: "
                        f"{problems.summary()}")
    return name, labels


_META = ("name", "namespace", "labels", "annotations", "uid", "resourceVersion", "generation",
         "creationTimestamp", "managedFields", "selfLink", "ownerReferences", "finalizers",
         "generateName")


def _pods(raw: list[tuple[str, dict[str, Any]]]) -> list[LabPod]:
    parsed = []
    taken: dict[int, str] = {}
    seen: set[tuple[str, str]] = set()
    for source, obj in raw:
        ns, name, labels, index, ports = _pod(source, obj)
        if (ns, name) in seen:
            raise UserError(f"{source}: pod {ns}/{name} is given twice")
        seen.add((ns, name))
        if index is not None:
            if index in taken:
                raise UserError(f"{source}: pod {ns}/{name}: 10.244.0.{index} is also "
                                f"{taken[index]}'s address")
            taken[index] = f"{ns}/{name}"
        parsed.append((ns, name, labels, index, ports))
    free = (i for i in range(FIRST_INDEX, LAST_INDEX + 1) if i not in taken)
    pods = []
    for ns, name, labels, index, ports in parsed:
        if index is None:
            index = next(free, None)
            if index is None:
                raise UserError(f"--topology: more than {LAST_INDEX - FIRST_INDEX + 1} pods: "
                                "the lab's pod network is one /24")
        pods.append(LabPod(ns, name, index, labels, ports=ports))
    return pods


def _pod(source: str, obj: Mapping[str, Any]) -> tuple[str, str, dict[str, str], int | None,
                                                      tuple[tuple[str, int, str], ...]]:
    problems = v.Problems()
    md = v.mapping(problems, "metadata", obj.get("metadata"), _META)
    name = v.string(problems, "metadata.name", md.get("name")) or ""
    why = v.dns1123_subdomain(name) if name else "Required value"
    if why:
        problems.add("metadata.name", f"Invalid value: {name!r}: {why}")
    ns = v.string(problems, "metadata.namespace", md.get("namespace")) or "default"
    why = v.dns1123_label(ns)
    if why:
        problems.add("metadata.namespace", f"Invalid value: {ns!r}: {why}")
    labels = v.labels(problems, "metadata.labels", md.get("labels"))
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    assert isinstance(spec, dict)
    if spec.get("hostNetwork"):
        problems.add("spec.hostNetwork", "the lab cannot run host-network pods")
    ports: list[tuple[str, int, str]] = []
    for i, container in enumerate(v.listing(problems, "spec.containers", spec.get("containers"))):
        if not isinstance(container, dict):
            problems.add(f"spec.containers[{i}]", "expected an object")
            continue
        for j, p in enumerate(v.listing(problems, f"spec.containers[{i}].ports",
                                        container.get("ports"))):
            where = f"spec.containers[{i}].ports[{j}]"
            if not isinstance(p, dict):
                problems.add(where, "expected an object")
                continue
            number = v.integer(problems, f"{where}.containerPort", p.get("containerPort"))
            if number is None:
                problems.add(f"{where}.containerPort", "Required value")
                continue
            why = v.port_number(number)
            if why:
                problems.add(f"{where}.containerPort", f"Invalid value: {number}: {why}")
            proto = v.string(problems, f"{where}.protocol", p.get("protocol")) or "TCP"
            if proto not in PROTOCOLS:
                problems.add(f"{where}.protocol", f"Unsupported value: {proto!r}")
            pname = v.string(problems, f"{where}.name", p.get("name")) or ""
            why = v.port_name(pname) if pname else None
            if why:
                problems.add(f"{where}.name", f"Invalid value: {pname!r}: {why}")
            ports.append((pname, number, proto))
    index = _index(problems, obj.get("status"))
    if problems:
        raise UserError(f"{source}: pod {ns}/{name or '(no name)'} cannot be a lab pod: "
                        f"{problems.summary()}")
    return ns, name, labels, index, tuple(ports)


def _index(problems: v.Problems, status: Any) -> int | None:
    """The pod's number in 10.244.0.0/24 from ``status.podIP``/``podIPs``, None if absent."""
    if not isinstance(status, dict):
        return None
    addrs = [p.get("ip") for p in status.get("podIPs") or () if isinstance(p, dict)]
    if status.get("podIP"):
        addrs.insert(0, status["podIP"])
    index: int | None = None
    six: list[ipaddress.IPv6Address] = []
    for text in addrs:
        try:
            addr = ipaddress.ip_address(str(text))
        except ValueError:
            problems.add("status.podIP", f"Invalid value: {text!r}: not an IP address")
            continue
        if isinstance(addr, ipaddress.IPv6Address):
            six.append(addr)
            continue
        if addr not in ipaddress.ip_network("10.244.0.0/24") \
                or not FIRST_INDEX <= int(addr) & 0xFF <= LAST_INDEX:
            problems.add("status.podIP", f"Invalid value: {text!r}: lab pods live in "
                                         f"10.244.0.{FIRST_INDEX}-{LAST_INDEX}")
            continue
        if index is not None and index != int(addr) & 0xFF:
            problems.add("status.podIPs", "two IPv4 addresses: a lab pod has one")
        index = int(addr) & 0xFF
    for addr in six:
        expected = ipaddress.IPv6Address(f"fd00:244::{index:x}") if index is not None else None
        if expected is None or addr != expected:
            problems.add("status.podIPs", f"Invalid value: {str(addr)!r}: a lab pod's IPv6 "
                                          "address is fd00:244::<its IPv4 number in hex>"
                         + (f" ({expected})" if expected else ", and needs its IPv4 address"))
    return index
