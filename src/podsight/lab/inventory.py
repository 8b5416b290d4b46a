"""The lab's inventory: its namespaces, pods and Services, shaped like the Kubernetes API.

Identity code reads this file exactly as it would read ``kubectl get pods,svc
-A -o json``, so the lab exercises the same code path as a real cluster. The
only lab-specific field is the ``podsight.io/netns`` annotation, which stands in
for what a container runtime would tell us: which network namespace the pod's
sandbox lives in.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from podsight.lab.topology import GATEWAY4, LabPod, LabService

NETNS_ANNOTATION = "podsight.io/netns"
VETH_ANNOTATION = "podsight.io/host-veth"
#: On a pod whose server could not run (the DNS pod without dnsmasq): why not.
NOT_READY_ANNOTATION = "podsight.io/not-ready"

_UID_NAMESPACE = uuid.UUID("5c4a7e1e-6f1b-4d3e-9a52-706f64736967")


def _uid(kind: str, node: str, namespace: str, name: str) -> str:
    """Stable per node and object, so two runs of a test see the same uid."""
    return str(uuid.uuid5(_UID_NAMESPACE, f"{node}/{kind}/{namespace}/{name}"))


def _container_ports(pod: LabPod) -> list[dict[str, Any]]:
    ports: list[dict[str, Any]] = []
    if pod.http_port:
        ports.append({"containerPort": pod.http_port, "protocol": "TCP"})
    if pod.dns_port:  # named as in the kube-dns/CoreDNS manifests
        ports.append({"name": "dns", "containerPort": pod.dns_port, "protocol": "UDP"})
        ports.append({"name": "dns-tcp", "containerPort": pod.dns_port, "protocol": "TCP"})
    for name, number, protocol in pod.ports:  # a --topology pod's, as its file gave them
        ports.append({**({"name": name} if name else {}), "containerPort": number,
                      "protocol": protocol})
    return ports


def pod_object(
    pod: LabPod, node: str, created: str, not_ready: str | None = None
) -> dict[str, Any]:
    """A Running pod; ``not_ready`` (a reason) marks its container as not ready, as kubectl
    shows a pod whose server is down."""
    annotations = {NETNS_ANNOTATION: pod.netns, VETH_ANNOTATION: pod.veth}
    if not_ready:
        annotations[NOT_READY_ANNOTATION] = not_ready
    ports = _container_ports(pod)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": _uid("Pod", node, pod.namespace, pod.name),
            "creationTimestamp": created,
            "labels": dict(pod.labels),
            "annotations": annotations,
        },
        "spec": {
            "nodeName": node,
            "containers": [
                {
                    "name": pod.container,
                    "image": pod.image,
                    **({"ports": ports} if ports else {}),
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
                {
                    "name": pod.container,
                    "image": pod.image,
                    "ready": not not_ready,
                    "started": True,
                }
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
                    "name": service.port_name if i == 0 else f"{service.port_name}-{proto.lower()}",
                    "protocol": proto,
                    "port": service.port,
                    "targetPort": service.target_port,
                }
                for i, proto in enumerate(service.protocols)
            ],
            "selector": dict(service.selector),
        },
    }


def namespace_object(name: str, labels: Mapping[str, str], node: str,
                     created: str) -> dict[str, Any]:
    """A Namespace with its labels (and ``kubernetes.io/metadata.name``, as the API sets it),
    so that ``policy check --objects`` and the policy enforcer read namespace selectors."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "uid": _uid("Namespace", node, "", name),
            "creationTimestamp": created,
            "labels": {**labels, "kubernetes.io/metadata.name": name},
        },
    }


def build(
    pods: tuple[LabPod, ...] | list[LabPod],
    services: tuple[LabService, ...] | list[LabService],
    node: str,
    not_ready: dict[str, str] | None = None,
    namespaces: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """A ``v1 List`` of every Namespace, Pod, then Service; ``not_ready`` maps pod refs to
    why; ``namespaces`` gives namespace labels (the pods' namespaces are listed anyway)."""
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    reasons = not_ready or {}
    labels = dict(namespaces or {})
    for p in pods:
        labels.setdefault(p.namespace, {})
    items = [namespace_object(n, labels[n], node, created) for n in sorted(labels)]
    items += [pod_object(p, node, created, reasons.get(p.ref)) for p in pods]
    items += [service_object(s, node, created) for s in services]
    return {"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}


def dumps(inventory: dict[str, Any]) -> str:
    return json.dumps(inventory, indent=2, sort_keys=False) + "\n"
