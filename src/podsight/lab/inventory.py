"""The lab's inventory: the pods and Services it runs, shaped like the Kubernetes API.

Identity code reads this file exactly as it would read ``kubectl get pods,svc
-A -o json``, so the lab exercises the same code path as a real cluster. The
only lab-specific field is the ``podsight.io/netns`` annotation, which stands in
for what a container runtime would tell us: which network namespace the pod's
sandbox lives in.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from podsight.lab.topology import GATEWAY4, LabPod, LabService

NETNS_ANNOTATION = "podsight.io/netns"
VETH_ANNOTATION = "podsight.io/host-veth"

_UID_NAMESPACE = uuid.UUID("5c4a7e1e-6f1b-4d3e-9a52-706f64736967")


def _uid(kind: str, node: str, namespace: str, name: str) -> str:
    """Stable per node and object, so two runs of a test see the same uid."""
    return str(uuid.uuid5(_UID_NAMESPACE, f"{node}/{kind}/{namespace}/{name}"))


def pod_object(pod: LabPod, node: str, created: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": _uid("Pod", node, pod.namespace, pod.name),
            "creationTimestamp": created,
            "labels": dict(pod.labels),
            "annotations": {NETNS_ANNOTATION: pod.netns, VETH_ANNOTATION: pod.veth},
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": pod.container,
                    "image": pod.image,
                    **(
                        {"ports": [{"containerPort": pod.http_port, "protocol": "TCP"}]}
                        if pod.http_port
                        else {}
                    ),
                }
            ],
        },
        "status": {
            "phase": "Running",
            "hostIP": GATEWAY4,
            "podIP": pod.ipv4,
            "podIPs": [{"ip": pod.ipv4}, {"ip": pod.ipv6}],
            "startTime": created,
            "containerStatuses": [
                {"name": pod.container, "image": pod.image, "ready": True, "started": True}
            ],
        },
    }


def service_object(service: LabService, node: str, created: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service.name,
            "namespace": service.namespace,
            "uid": _uid("Service", node, service.namespace, service.name),
            "creationTimestamp": created,
            "labels": {},
            "annotations": {},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": service.cluster_ip,
            "clusterIPs": [service.cluster_ip],
            "ipFamilies": ["IPv4"],
            "ports": [
                {
                    "name": "http",
                    "protocol": "TCP",
                    "port": service.port,
                    "targetPort": service.target_port,
                }
            ],
            "selector": dict(service.selector),
        },
    }


def build(
    pods: tuple[LabPod, ...] | list[LabPod],
    services: tuple[LabService, ...] | list[LabService],
    node: str,
) -> dict[str, Any]:
    """A ``v1 List`` of every Pod, then every Service."""
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    items = [pod_object(p, node, created) for p in pods]
    items += [service_object(s, node, created) for s in services]
    return {"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}


def dumps(inventory: dict[str, Any]) -> str:
    return json.dumps(inventory, indent=2, sort_keys=False) + "\n"
