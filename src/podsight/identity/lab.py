"""Identity source: the inventory of `podsight lab` (Kubernetes-shaped Pod objects)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from podsight.identity.endpoint import PodInfo
from podsight.identity.netns import NETNS_DIR


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
    """The lab's pods and Services, reloaded when the inventory file changes."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or inventory_path()
        self._stamp: tuple[int, int] | None = None
        self.pods: list[PodInfo] = []
        self.services: dict[str, tuple[str, str]] = {}

    def refresh(self) -> bool:
        """Reload if the file changed; True when the pod list changed."""
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_ino)
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        self.pods, self.services = [], {}
        if stamp is None:
            return True
        try:
            doc = json.loads(self.path.read_text())
            self.pods = pods_from_inventory(doc)
            self.services = services_from_inventory(doc)
        except (OSError, ValueError):
            self.pods, self.services = [], {}
        return True
