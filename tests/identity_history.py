"""Test helpers for identity at an event's time: lab inventories the test writes (the lab's
own format, a Kubernetes ``v1 List``), and network namespaces it makes and removes."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import uuid
from pathlib import Path
from typing import Any

from podsight.identity.history import boot_ns

__all__ = ["Netns", "boot_ns", "lab_pod", "lab_service", "write_inventory"]


def lab_pod(name: str, *ips: str, namespace: str = "default", netns: str = "",
            labels: dict[str, str] | None = None, containers: tuple[str, ...] = ("app",),
            uid: str | None = None) -> dict[str, Any]:
    """A Pod item as ``podsight lab`` writes it; ``netns`` names it under /var/run/netns.
    The UID is the same for the same name (as the lab's), unless given."""
    annotations = {"podsight.io/netns": netns} if netns else {}
    uid = uid or str(uuid.uuid5(uuid.NAMESPACE_URL, f"podsight-test/{namespace}/{name}"))
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid,
                     "labels": labels or {}, "annotations": annotations},
        "spec": {"nodeName": "lab-node", "containers": [{"name": c} for c in containers]},
        "status": {"phase": "Running", "podIP": ips[0] if ips else "",
                   "podIPs": [{"ip": ip} for ip in ips]},
    }


def lab_service(name: str, cluster_ip: str, namespace: str = "default") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip]}}


def write_inventory(path: Path, items: list[dict[str, Any]]) -> None:
    """Replace the inventory whole (write, then rename), as the lab does."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(3)}")
    tmp.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    os.replace(tmp, path)


class Netns:
    """``ip netns add podsight-test-hist-*`` for the block, deleted on the way out."""

    def __init__(self, tag: str) -> None:
        self.name = f"podsight-test-hist-{tag}-{secrets.token_hex(3)}"
        self.inode = 0

    def __enter__(self) -> Netns:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        self.inode = os.stat(f"/var/run/netns/{self.name}").st_ino
        return self

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False, capture_output=True)

    def __exit__(self, *exc: object) -> None:
        self.delete()

