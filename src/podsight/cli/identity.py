"""Identity flags every gadget takes: which cluster to ask, and which pods to trace.

``-n/--namespace``, ``-A/--all-namespaces``, ``-p/--podname``, ``-l/--selector``,
``-c/--containername``, ``--node`` and ``--host`` select pods the way kubectl
users already type them; ``--kubeconfig``/``--context`` (or KUBECONFIG, or
running in a pod) add the Kubernetes API as an identity source.
"""

from __future__ import annotations

import argparse
import os
import sys
from contextlib import ExitStack
from typing import Any

from podsight.errors import UserError
from podsight.identity import Resolver
from podsight.selectors import LabelSelector, NameList, PodSelector

IN_CLUSTER_ENV = "KUBERNETES_SERVICE_HOST"


def add_identity_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("pods (comma lists; !name excludes)")
    g.add_argument("-n", "--namespace", help="only pods in these namespaces")
    g.add_argument("-A", "--all-namespaces", action="store_true", help="pods in all namespaces")
    g.add_argument("-p", "--podname", help="only these pods")
    g.add_argument("-l", "--selector", help="only pods with these labels (k=v, k!=v, k in (a,b), "
                                            "k notin (a,b), k, !k)")
    g.add_argument("-c", "--containername", help="only these containers")
    g.add_argument("--node", help="only pods on these nodes")
    g.add_argument("--host", action="store_true",
                   help="also trace host processes (the default when no pod flag is given)")
    k = p.add_argument_group("kubernetes")
    k.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG; in a pod, the "
                                        "service account)")
    k.add_argument("--context", help="kubeconfig context")
    k.add_argument("--best-effort", action="store_true",
                   help="if the API server cannot be reached, warn and print raw addresses")


def pod_selector(ns: argparse.Namespace) -> PodSelector:
    if ns.all_namespaces and ns.namespace:
        raise UserError("-A/--all-namespaces and -n/--namespace exclude each other")
    return PodSelector(
        namespaces=NameList.parse("-n", ns.namespace),
        pods=NameList.parse("-p", ns.podname),
        containers=NameList.parse("-c", ns.containername),
        nodes=NameList.parse("--node", ns.node),
        labels=LabelSelector.parse(ns.selector),
        all_namespaces=ns.all_namespaces,
        host=ns.host,
    )


def wants_kubernetes(ns: argparse.Namespace) -> bool:
    return bool(ns.kubeconfig or ns.context or os.environ.get("KUBECONFIG")
                or os.environ.get(IN_CLUSTER_ENV))


def build_resolver(ns: argparse.Namespace, stack: ExitStack) -> Resolver:
    """The resolver for a command, with the Kubernetes API when configured.

    A dead or unreachable API server is a one-line error, or with
    ``--best-effort`` a warning, and identity falls back to local sources.
    """
    kube: Any = None
    if wants_kubernetes(ns):
        from podsight.identity.kube import KubeCache

        try:
            cache = KubeCache.connect(ns.kubeconfig, ns.context)
            stack.callback(cache.close)
            cache.start()
            cache.wait_synced(timeout=15.0)
            kube = cache
        except UserError as exc:
            if not ns.best_effort:
                raise
            sys.stderr.write(f"podsight: warning: {exc}; showing raw addresses\n")
            kube = None
    node = None
    return Resolver(kube=kube, node_name=node)
