"""The identity resolver every gadget shares: address, netns or cgroup -> Endpoint.

Sources, in the order they answer: the lab inventory (pods of `podsight lab`),
the Kubernetes API (pods, services, nodes, kept current by watches), and the
host itself (its own addresses are the node). Hot-path calls are dict hits on
a memo that is dropped only when a source reports a change; :meth:`refresh`
is cheap (a stat and an integer compare) and runs once per batch.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import time
from typing import TYPE_CHECKING

from podsight.identity.endpoint import Endpoint, PodInfo
from podsight.identity.lab import LabInventory
from podsight.identity.netns import NetnsAddresses, host_netns

if TYPE_CHECKING:
    from podsight.identity.kube import KubeCache
    from podsight.selectors import PodSelector


def host_addresses() -> set[str]:
    """Addresses configured in this (the root) network namespace."""
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True,
                             timeout=5, check=False).stdout
        return {a["local"] for link in json.loads(out or "[]") for a in link.get("addr_info", [])
                if "local" in a}
    except (OSError, ValueError, subprocess.SubprocessError):
        return set()


def _is_loopback(addr: str) -> bool:
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
    ) -> None:
        self._lab = lab if lab is not None else LabInventory()
        self._kube = kube
        self.host_netns = host_netns()
        self._host_addrs = host_addresses()
        self.node_name = node_name or self._node_from_api() or socket.gethostname()
        self._lab_by_ip: dict[str, PodInfo] = {}
        self._lab_by_netns: dict[int, PodInfo] = {}
        self._netns_addrs = NetnsAddresses()
        self._memo: dict[str, Endpoint] = {}
        self._local_memo: dict[tuple[int, str], Endpoint] = {}
        self._kube_generation = -1
        self._refresh_interval = refresh_interval
        self._next_refresh = 0.0
        self.refresh(force=True)

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
        if self._kube is not None:
            if self._netns_addrs.refresh():
                changed = True
            if self._kube.generation != self._kube_generation:
                self._kube_generation = self._kube.generation
                changed = True
        if changed:
            self._memo.clear()
            self._local_memo.clear()
        return changed

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
        return bool(self._lab.pods) or self._kube is not None

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

    def local_endpoint(self, addr: str, netns: int) -> Endpoint:
        """The endpoint of the side that owns a socket, known by its network namespace."""
        key = (netns, addr)
        ep = self._local_memo.get(key)
        if ep is None:
            pod = self.local_pod(netns)
            if pod is not None:
                ep = Endpoint.for_pod(addr, pod)
            elif netns == self.host_netns:
                ep = Endpoint.for_node(addr, self.node_name)
            else:
                ep = self.endpoint(addr)
            self._local_memo[key] = ep
        return ep

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
        if selector.host:
            chosen.add(self.host_netns)
        return chosen

    def selects(self, selector: PodSelector, local: Endpoint, netns: int) -> bool:
        """Does the selector pick the socket owner? (The user-space half of a pod filter.)"""
        if not selector.selects_pods:
            return True
        if local.kind == "pod":
            containers = (local.container,) if local.container else ()
            return selector.matches(local.namespace, local.name, local.labels,
                                    local.node or self.node_name, containers)
        return selector.host and netns == self.host_netns
