"""The identity resolver every gadget shares: address or netns -> Endpoint, as dict hits."""

from __future__ import annotations

import time

from podsight.identity.endpoint import Endpoint, PodInfo
from podsight.identity.lab import LabInventory


class Resolver:
    """Resolves addresses and network namespaces to endpoints.

    Caches are rebuilt only when a source changes; :meth:`refresh` is cheap
    (a stat) and is called once per batch, not per event.
    """

    def __init__(self, lab: LabInventory | None = None, refresh_interval: float = 1.0) -> None:
        self._lab = lab if lab is not None else LabInventory()
        self._by_ip: dict[str, PodInfo] = {}
        self._by_netns: dict[int, PodInfo] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._refresh_interval = refresh_interval
        self._next_refresh = 0.0
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_refresh:
            return
        self._next_refresh = now + self._refresh_interval
        if self._lab.refresh() or force:
            self._rebuild(self._lab.pods)

    def _rebuild(self, pods: list[PodInfo]) -> None:
        self._by_ip = {ip: pod for pod in pods for ip in pod.ips}
        self._by_netns = {pod.netns: pod for pod in pods if pod.netns}
        self._endpoints = {}

    @property
    def pods(self) -> list[PodInfo]:
        return list({(p.namespace, p.name): p for p in self._by_ip.values()}.values())

    def pod_for_netns(self, netns: int) -> PodInfo | None:
        return self._by_netns.get(netns)

    def endpoint(self, addr: str) -> Endpoint:
        """The endpoint for an address: a known pod, else raw."""
        ep = self._endpoints.get(addr)
        if ep is None:
            pod = self._by_ip.get(addr)
            ep = Endpoint.for_pod(addr, pod) if pod else Endpoint.raw(addr)
            self._endpoints[addr] = ep
        return ep

    def local_endpoint(self, addr: str, netns: int) -> Endpoint:
        """The endpoint of the side that owns a socket: its netns says which pod, if any."""
        pod = self._by_netns.get(netns)
        if pod is not None and (addr in pod.ips or not addr or addr in ("0.0.0.0", "::")):
            key = f"{netns}/{addr}"
            ep = self._endpoints.get(key)
            if ep is None:
                ep = Endpoint.for_pod(addr, pod)
                self._endpoints[key] = ep
            return ep
        return self.endpoint(addr)
