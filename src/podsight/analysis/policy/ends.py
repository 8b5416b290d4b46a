"""The two ends of an observed connection, resolved against a :class:`World`.

Shared by the checker and the advisor so that both read a record the same
way: the record's own identity first (a pod, a Service, a node, as the
capture named it at the event's time; the labels it carries win over the
objects' current ones), then the address through the objects (pod IPs,
Service ClusterIPs, node addresses), else an address outside the cluster.
A host-network pod is its node's traffic.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace

from podsight.analysis.policy.records import Hint
from podsight.analysis.policy.world import Pod, Service, World


class End:
    """One end of a connection: a pod, a Service, a node, an outside address, or loopback.

    Compared by identity: :class:`Ends` makes one per distinct (address, record identity),
    so a verdict cache can be keyed on them.
    """

    __slots__ = ("addr", "cls", "kind", "node", "notation", "pod", "service")

    def __init__(self, kind: str, addr: str, notation: str, pod: Pod | None = None,
                 service: Service | None = None, node: str = "") -> None:
        self.kind = kind  # pod | service | node | external | loopback
        self.addr = addr
        self.notation = notation
        self.pod = pod
        self.service = service
        self.node = node
        #: The checker's class of this end (-1 until it is asked): ends alike in what a
        #: policy can tell about them share one.
        self.cls = -1

    @property
    def is_policy_pod(self) -> bool:
        """A pod policies apply to (host-network pods are the node's traffic)."""
        return self.pod is not None and not self.pod.host_network


class Ends:
    """(address, record identity) -> :class:`End`, memoised."""

    LIMIT = 1 << 20

    def __init__(self, world: World) -> None:
        self.world = world
        self._ends: dict[tuple[str, Hint | None], End] = {}
        #: (address, id(hint)) -> (hint, end): read by the checker's hot path directly.
        self.fast: dict[tuple[str, int], tuple[Hint | None, End]] = {}
        self._pod_ends: dict[tuple[Pod, str], End] = {}

    def __call__(self, addr: str, hint: Hint | None) -> End:
        # By the hint's identity first: readers hand out the same hint object for the
        # records of one pod, and hashing a hint (labels and all) costs more than the rest.
        fast = self.fast.get((addr, id(hint)))
        if fast is not None and fast[0] is hint:
            return fast[1]
        end = self._ends.get((addr, hint))
        if end is None:
            end = self._make(addr, hint)
            if len(self._ends) > self.LIMIT:
                self._ends.clear()
            self._ends[(addr, hint)] = end
        if len(self.fast) > self.LIMIT:
            self.fast.clear()  # the same dict: the checker holds it
        self.fast[(addr, id(hint))] = (hint, end)  # the hint is held: its id stays its own
        return end

    def _make(self, addr: str, hint: Hint | None) -> End:
        world = self.world
        if ipaddress.ip_address(addr).is_loopback:
            return End("loopback", addr, f"r/{addr}")
        if hint is not None and hint.kind == "pod":
            pod = world.pods.get((hint.namespace, hint.name))
            labels = dict(hint.labels) if hint.labels is not None else None
            if pod is None:
                pod = Pod(hint.namespace, hint.name, labels, (addr,), None, hint.node,
                          workload_kind=hint.workload_kind, workload_name=hint.workload_name)
            elif labels is not None and labels != pod.labels:
                pod = replace(pod, labels=labels)  # the record's, at the event's time
            return self.pod(pod, addr)
        if hint is not None and hint.kind == "service":
            svc = world.services.get((hint.namespace, hint.name))
            return End("service", addr, f"s/{hint.namespace}/{hint.name}",
                       service=svc or Service(hint.namespace, hint.name, (addr,)))
        if hint is not None and hint.kind == "node":
            return End("node", addr, f"n/{hint.name}", node=hint.name)
        pod = world.pods_by_ip.get(addr)
        if pod is not None:
            return self.pod(pod, addr)
        svc = world.services_by_ip.get(addr)
        if svc is not None:
            return End("service", addr, f"s/{svc.namespace}/{svc.name}", service=svc)
        node = world.nodes_by_ip.get(addr)
        if node is not None:
            return End("node", addr, f"n/{node}", node=node)
        return End("external", addr, f"r/[{addr}]" if ":" in addr else f"r/{addr}")

    def pod(self, pod: Pod, addr: str) -> End:
        """The end for ``pod`` at ``addr`` (a host-network pod is its node)."""
        key = (pod, addr)
        end = self._pod_ends.get(key)
        if end is None:
            if pod.host_network:
                end = End("node", addr, pod.notation, pod=pod, node=pod.node)
            else:
                end = End("pod", addr, pod.notation, pod=pod)
            self._pod_ends[key] = end
        return end


def same_pod(a: End, b: End) -> bool:
    return a.pod is not None and b.pod is not None and a.pod.ref == b.pod.ref
