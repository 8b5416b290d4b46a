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


class LabInventory:
    """The lab's pods, reloaded when the inventory file changes (checked per batch)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or inventory_path()
        self._stamp: tuple[int, int] | None = None
        self.pods: list[PodInfo] = []

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
        if stamp is None:
            self.pods = []
            return True
        try:
            self.pods = pods_from_inventory(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            self.pods = []
        return True
