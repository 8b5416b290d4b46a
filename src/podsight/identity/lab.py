"""Identity source: the inventory of `podsight lab` (Kubernetes-shaped Pod objects)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, TypeVar

from podsight.identity.endpoint import PodInfo
from podsight.identity.history import ChangeFeed, Timeline, boot_ns
from podsight.identity.netns import NETNS_DIR

K = TypeVar("K", str, int, tuple[str, str])


def lab_dir() -> Path:
    return Path(os.environ.get("PODSIGHT_LAB_DIR", "/run/podsight/lab"))


def inventory_path() -> Path:
    return lab_dir() / "inventory.json"


def pods_from_inventory(doc: dict[str, Any]) -> list[PodInfo]:
    """PodInfo for every Pod item of a v1 List; the netns annotation names the namespace."""
    pods: list[PodInfo] = []
    for item in doc.get("items", []):
        if item.get("kind") != "Pod":
            continue
        meta = item.get("metadata", {})
        spec = item.get("spec", {})
        status = item.get("status", {})
        ips = [p["ip"] for p in status.get("podIPs", []) if p.get("ip")]
        if not ips and status.get("podIP"):
            ips = [status["podIP"]]
        netns = 0
        netns_name = meta.get("annotations", {}).get("podsight.io/netns", "")
        if netns_name:
            try:
                netns = os.stat(NETNS_DIR / netns_name).st_ino
            except OSError:
                netns = 0
        pods.append(
            PodInfo(
                namespace=meta.get("namespace", "default"),
                name=meta.get("name", ""),
                ips=tuple(ips),
                netns=netns,
                node=spec.get("nodeName", ""),
                labels=dict(meta.get("labels", {})),
                containers=tuple(c.get("name", "") for c in spec.get("containers", [])),
                uid=meta.get("uid", ""),
            )
        )
    return pods


def services_from_inventory(doc: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """ClusterIP -> (namespace, name) for every Service item of a v1 List."""
    services: dict[str, tuple[str, str]] = {}
    for item in doc.get("items", []):
        if item.get("kind") != "Service":
            continue
        meta = item.get("metadata", {})
        spec = item.get("spec", {})
        for ip in spec.get("clusterIPs") or [spec.get("clusterIP")]:
            if ip and ip != "None":
                services[ip] = (meta.get("namespace", "default"), meta.get("name", ""))
    return services


class LabInventory:
    """The lab's pods and Services, reloaded when the inventory file changes, with a past.

    The inventory is the lab's API. A change is stamped with the moment it
    became visible: the file's modification time (the lab replaces the file
    whole), turned into CLOCK_BOOTTIME, but never earlier than podsight's
    previous look at the file, which did not see it yet. So a pod that took
    another's IP is named from the moment the file said so, however late
    podsight looked (``podsight flows`` looks once per interval).
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or inventory_path()
        self._stamp: tuple[int, int] | None = None
        self._looked_ns = 0
        self.pods: list[PodInfo] = []
        self.services: dict[str, tuple[str, str]] = {}
        self.by_ip: dict[str, PodInfo] = {}
        self.by_netns: dict[int, PodInfo] = {}
        self.by_name: dict[tuple[str, str], PodInfo] = {}
        #: Every key whose holder changed, for resolvers to drop what they derived from it.
        self.changes = ChangeFeed()
        self._ips: Timeline[str, PodInfo] = Timeline(self.changes, "ip")
        self._service_ips: Timeline[str, tuple[str, str]] = Timeline(self.changes, "ip")
        self._netns: Timeline[int, PodInfo] = Timeline(self.changes, "netns")
        self._names: Timeline[tuple[str, str], PodInfo] = Timeline(self.changes, "pod")
        self._timelines = (self._ips, self._service_ips, self._netns, self._names)
        for tl in self._timelines:
            tl.recording = False  # the first load is the initial state, with no past

    def refresh(self) -> bool:
        """Reload if the file changed; True when the pod list changed."""
        looked, now = self._looked_ns, boot_ns()  # now: taken before the file is read
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_ino)
        except OSError:
            stamp = None
        self._looked_ns = now
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        pods: list[PodInfo] = []
        services: dict[str, tuple[str, str]] = {}
        if stamp is not None:
            try:
                doc = json.loads(self.path.read_text())
                pods = pods_from_inventory(doc)
                services = services_from_inventory(doc)
            except (OSError, ValueError):
                pods, services = [], {}
        when = now
        if stamp is not None:  # the mtime on the boot clock, between the two looks
            when = min(now, max(looked, stamp[0] - (time.time_ns() - boot_ns())))
        self._install(pods, services, when)
        for tl in self._timelines:
            tl.recording = True
        return True

    def _install(self, pods: list[PodInfo], services: dict[str, tuple[str, str]],
                 when: int) -> None:
        """The pasts first, then the current maps (see podsight.identity.history)."""
        by_ip = {ip: pod for pod in pods for ip in pod.ips}
        by_netns = {pod.netns: pod for pod in pods if pod.netns}
        by_name = {(pod.namespace, pod.name): pod for pod in pods}
        _record(self._ips, self.by_ip, by_ip, when)
        _record(self._netns, self.by_netns, by_netns, when)
        _record(self._names, self.by_name, by_name, when)
        for ip in self.services.keys() | services.keys():
            old, new = self.services.get(ip), services.get(ip)
            if old != new:
                self._service_ips.changed(ip, old, new, stamp=when)
        self.pods, self.services = pods, services
        self.by_ip, self.by_netns, self.by_name = by_ip, by_netns, by_name

    # ``*_at``: ``(since, holder)`` at ``at_ns`` (boot ns); since is 0 before any change.
    def pod_by_ip_at(self, ip: str, at_ns: int) -> tuple[int, PodInfo | None]:
        return self._ips.held(ip, self.by_ip.get(ip), at_ns)

    def service_at(self, ip: str, at_ns: int) -> tuple[int, tuple[str, str] | None]:
        return self._service_ips.held(ip, self.services.get(ip), at_ns)

    def pod_by_netns_at(self, netns: int, at_ns: int) -> tuple[int, PodInfo | None]:
        return self._netns.held(netns, self.by_netns.get(netns), at_ns)

    def pod_by_name_at(self, namespace: str, name: str,
                       at_ns: int) -> tuple[int, PodInfo | None]:
        key = (namespace, name)
        return self._names.held(key, self.by_name.get(key), at_ns)


def _record(timeline: Timeline[K, PodInfo], old: dict[K, PodInfo], new: dict[K, PodInfo],
            when: int) -> None:
    """Put every key whose pod changed between two loads in its timeline."""
    for key in old.keys() | new.keys():
        was, now = old.get(key), new.get(key)
        if was == now and (was is None or now is None or was.labels == now.labels):
            continue
        same = (was is not None and now is not None and was.uid == now.uid
                and (was.namespace, was.name) == (now.namespace, now.name))
        timeline.changed(key, was, now, same=same, stamp=when)
