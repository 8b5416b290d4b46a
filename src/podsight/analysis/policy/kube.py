"""Who is who, and which policies exist, from the API server: listed once, no watches.

``policy check`` judges a finished capture, so one consistent listing is
what it needs: Namespaces, Pods (with container ports, which the identity
cache does not keep), Services, Nodes, and, for ``--diff cluster``, the
NetworkPolicies. Reached the way kubectl reaches it (``--kubeconfig``,
``--context``, ``$KUBECONFIG``, in-cluster), through the identity layer's
own client. A Namespace or Node listing that RBAC forbids is not fatal
(namespace labels beyond the name are then unknown, and said so when a
policy needs them); pods and Services are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from podsight.analysis.policy.documents import Document
from podsight.analysis.policy.world import World, from_documents
from podsight.errors import UserError

PAGE = 500


def _list(api: Any, path: str, resource: str) -> Iterator[dict[str, Any]]:
    from podsight.identity.kube.api import Call

    params: dict[str, str | int] = {"limit": PAGE}
    while True:
        resp = api.open(path, params, call=Call(), verb="list", resource=resource, gzip=True)
        try:
            body = json.loads(resp.read_body())
        except ValueError:
            raise UserError(f"the Kubernetes API sent a {resource} list that is not JSON"
                            ) from None
        finally:
            resp.close()
        yield from body.get("items") or ()
        token = (body.get("metadata") or {}).get("continue")
        if not token:
            return
        params = {"limit": PAGE, "continue": token}


def connect(kubeconfig: str | None, context: str | None) -> Any:
    from podsight.identity.kube.api import KubeAPI
    from podsight.identity.kube.config import load_config

    return KubeAPI(load_config(kubeconfig, context))


def world(api: Any) -> World:
    """Namespaces, Pods, Services and Nodes of the cluster, as a :class:`World`."""
    from podsight.identity.kube.api import KubeAPIError

    docs: list[Document] = []
    server = api.config.server
    for kind, path, resource, required in (
            ("Namespace", "/api/v1/namespaces", "namespaces", False),
            ("Pod", "/api/v1/pods", "pods", True),
            ("Service", "/api/v1/services", "services", True),
            ("Node", "/api/v1/nodes", "nodes", False)):
        try:
            for item in _list(api, path, resource):
                item.setdefault("kind", kind)
                docs.append(Document(f"the API at {server}: {resource}", item))
        except KubeAPIError as exc:
            if required or not exc.permanent:
                raise
    return from_documents(docs, f"the Kubernetes API at {server}")


def policies(api: Any) -> list[Document]:
    """Every NetworkPolicy of the cluster, as documents."""
    out = []
    server = api.config.server
    for item in _list(api, "/apis/networking.k8s.io/v1/networkpolicies",
                      "networkpolicies.networking.k8s.io"):
        item.setdefault("kind", "NetworkPolicy")
        item.setdefault("apiVersion", "networking.k8s.io/v1")
        name = (item.get("metadata") or {}).get("name", "?")
        ns = (item.get("metadata") or {}).get("namespace", "?")
        out.append(Document(f"the API at {server}: networkpolicy {ns}/{name}", item))
    return out
