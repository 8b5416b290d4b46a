"""Identity flags every gadget takes: which cluster to ask, and which pods to trace.

``-n/--namespace``, ``-A/--all-namespaces``, ``-p/--podname``, ``-l/--selector``,
``-c/--containername``, ``--node`` and ``--host`` select pods the way kubectl
users already type them; ``--kubeconfig``/``--context`` (or KUBECONFIG, or
running in a pod) add the Kubernetes API as an identity source. The container
runtimes on this host (``--runtimes`` and their ``--*-socketpath``, named as in
Inspektor Gadget) name containers, and pods when there is no API.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from podsight.cli import args
from podsight.errors import UserError
from podsight.runtime import STOP
from podsight.selectors import LabelSelector, NameList, PodSelector

if TYPE_CHECKING:
    from podsight.identity import Resolver
    from podsight.identity.local import LocalIdentity

IN_CLUSTER_ENV = "KUBERNETES_SERVICE_HOST"

# Runtime -> its default API socket (the same paths as podsight.identity.local.runtimes,
# repeated here so that building the parser imports no runtime client).
RUNTIMES = {
    "docker": "/var/run/docker.sock",
    "podman": "/run/podman/podman.sock",
    "containerd": "/run/containerd/containerd.sock",
}
LOCAL_POLL_INTERVAL = 5.0


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
    g.add_argument("--netns", type=args.names, metavar="NAME|INODE[,...]",
                   help="only these network namespaces: inode, or name under /var/run/netns "
                        "(as 'ip netns list' shows them)")
    k = p.add_argument_group("kubernetes")
    k.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG; in a pod, the "
                                        "service account)")
    k.add_argument("--context", help="kubeconfig context")
    k.add_argument("--best-effort", action="store_true",
                   help="if the API server cannot be reached, warn and print raw addresses")
    r = p.add_argument_group("container runtimes")
    r.add_argument("--runtimes", default=",".join(RUNTIMES),
                   help="runtimes to ask for container names and pod labels (comma list of "
                        f"{', '.join(RUNTIMES)}; 'none' for none; default: all)")
    for runtime, path in RUNTIMES.items():
        r.add_argument(f"--{runtime}-socketpath", metavar="PATH", default=path,
                       help=f"{runtime}'s API socket (default: {path})")


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
            _wait_synced(cache, 15.0)
            kube = cache
        except UserError as exc:
            if not ns.best_effort:
                raise
            sys.stderr.write(f"podsight: warning: {exc}; showing raw addresses\n")
            kube = None
    STOP.check()
    local = build_local_identity(ns, stack)
    STOP.check()
    from podsight.identity import Resolver

    resolver = Resolver(kube=kube, local=local, local_interval=LOCAL_POLL_INTERVAL)
    stack.callback(resolver.close)  # runs before local.close: the poller stops first
    return resolver


def _wait_synced(cache: Any, timeout: float) -> None:
    """Wait for the first listing of every informer, in short steps so that a Ctrl-C
    during startup stops the run at once; errors that will not fix themselves (a wrong
    server, missing RBAC) are raised as soon as the informers report them."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            cache.wait_synced(timeout=0.2)
            return
        except UserError:
            if any(i.error_before_sync is not None for i in cache.informers.values()):
                raise
            if time.monotonic() >= deadline:
                pending = ", ".join(i.resource.display for i in cache.informers.values()
                                    if not i.synced)
                raise UserError(f"timed out after {timeout:g}s waiting for the Kubernetes API "
                                f"to list {pending}") from None
        STOP.check()


def netns_flag(ns: argparse.Namespace) -> frozenset[int]:
    """``--netns`` as inodes (names are looked up under /var/run/netns)."""
    from podsight.net.netns import parse_netns

    return frozenset(parse_netns(v) for v in (ns.netns or ()))


def runtime_names(value: str) -> list[str]:
    names = [n.strip() for n in value.split(",") if n.strip()]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown or not names:
        raise UserError(f"--runtimes {value!r}: use a comma list of {', '.join(RUNTIMES)}, "
                        "or none")
    return names


def build_local_identity(ns: argparse.Namespace, stack: ExitStack) -> LocalIdentity:
    """cgroups, /proc and the runtimes, listed once now so that the first event is named."""
    from podsight.identity.local import (
        ContainerdClient,
        DockerClient,
        LocalIdentity,
        PodmanClient,
        RuntimeClient,
    )

    wanted = runtime_names(getattr(ns, "runtimes", None) or ",".join(RUNTIMES))
    clients: list[RuntimeClient] = []
    for name in wanted:
        path = getattr(ns, f"{name}_socketpath", None) or RUNTIMES[name]
        if name == "docker":
            clients.append(DockerClient(path))
        elif name == "podman":
            clients.append(PodmanClient(path))
        else:
            clients.append(ContainerdClient(path))
    local = LocalIdentity(runtimes=clients)
    stack.callback(local.close)
    local.refresh()
    return local
