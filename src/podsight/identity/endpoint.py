"""Endpoints in the notation Kubernetes users know: p/ns/pod, s/ns/svc, n/node, r/ip."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property

KIND_PREFIX = {"pod": "p", "service": "s", "node": "n", "raw": "r"}


@dataclass(frozen=True)
class PodInfo:
    """What identity knows about one pod (from the lab inventory or the API)."""

    namespace: str
    name: str
    ips: tuple[str, ...] = ()
    netns: int = 0  # network namespace inode, when known on this host
    node: str = ""
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    containers: tuple[str, ...] = ()
    workload_kind: str = ""
    workload_name: str = ""
    uid: str = ""
    host_network: bool = False


@dataclass(frozen=True)
class Endpoint:
    """The identity of one address, without the port (ports vary per event)."""

    kind: str  # pod | service | node | raw
    addr: str
    namespace: str = ""
    name: str = ""
    node: str = ""
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    container: str = ""
    workload_kind: str = ""
    workload_name: str = ""

    @cached_property
    def notation(self) -> str:
        """``p/default/mypod``; the caller appends ``:port``."""
        prefix = KIND_PREFIX[self.kind]
        if self.kind == "raw":
            return f"r/{self.addr}" if ":" not in self.addr else f"r/[{self.addr}]"
        if self.kind == "node":
            return f"n/{self.name}"
        return f"{prefix}/{self.namespace}/{self.name}"

    @cached_property
    def json_fragment(self) -> str:
        """The structured identity as JSON members, serialized once per endpoint."""
        members: dict[str, object] = {"kind": self.kind}
        if self.namespace:
            members["namespace"] = self.namespace
        if self.kind == "pod":
            members["pod"] = self.name
        elif self.kind == "service":
            members["service"] = self.name
        elif self.kind == "node":
            members["node"] = self.name
        if self.node and self.kind != "node":
            members["node"] = self.node
        if self.container:
            members["container"] = self.container
        if self.workload_kind:
            members["workload"] = {"kind": self.workload_kind, "name": self.workload_name}
        if self.labels:
            members["labels"] = self.labels
        return json.dumps(members, separators=(",", ":"))[1:-1]

    @classmethod
    def raw(cls, addr: str) -> Endpoint:
        return cls(kind="raw", addr=addr)

    @classmethod
    def for_node(cls, addr: str, node: str, labels: dict[str, str] | None = None) -> Endpoint:
        return cls(kind="node", addr=addr, name=node, node=node, labels=labels or {})

    @classmethod
    def for_service(cls, addr: str, namespace: str, name: str,
                    labels: dict[str, str] | None = None) -> Endpoint:
        return cls(kind="service", addr=addr, namespace=namespace, name=name,
                   labels=labels or {})

    @classmethod
    def for_pod(cls, addr: str, pod: PodInfo) -> Endpoint:
        return cls(
            kind="pod",
            addr=addr,
            namespace=pod.namespace,
            name=pod.name,
            node=pod.node,
            labels=pod.labels,
            container=pod.containers[0] if len(pod.containers) == 1 else "",
            workload_kind=pod.workload_kind,
            workload_name=pod.workload_name,
        )

    def with_port(self, port: int) -> str:
        return f"{self.notation}:{port}"
