"""``podsight agent``: serve gadget runs to ``kubectl podsight`` clients (one per node).

See docs/cluster.md for the protocol and the auth model; the work is in
:mod:`podsight.cluster.server`.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from typing import Any

from podsight.errors import UserError
from podsight.runtime import STOP


def register(groups: Any) -> None:
    p = groups.add_parser(
        "agent", help="serve gadget runs to kubectl podsight (one agent per node)",
        description="Run gadgets for authenticated clients and stream their records (gRPC). "
                    "Listens on loopback or the pod IP only. See docs/cluster.md.")
    p.add_argument("--listen", default="127.0.0.1:7750", metavar="HOST:PORT",
                   help="where to serve gRPC: loopback or $POD_IP (default 127.0.0.1:7750)")
    p.add_argument("--node-name", metavar="NAME",
                   help="this node's name (default: $NODE_NAME, else the host name)")
    p.add_argument("--auth", choices=("kubernetes", "none"), default="kubernetes",
                   help="kubernetes: TokenReview + SubjectAccessReview of the caller's bearer "
                        "token (default); none: anyone (loopback only)")
    p.add_argument("--health-listen", metavar="HOST:PORT",
                   help="plain HTTP /healthz and /readyz here (loopback or $POD_IP)")
    p.add_argument("--kubeconfig", help="the API server that checks callers (default: "
                                        "$KUBECONFIG; in a pod, the service account)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--netns", metavar="NAME[,NAME]", dest="scope_netns",
                   help="a simulated node: observe only these network namespaces unless a "
                        "request selects its own")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    import podsight.cli.main  # noqa: F401  (sessions parse with it; its import installs signals)
    from podsight.cluster.auth import Authorizer, KubernetesAuth, NoAuth
    from podsight.cluster.endpoints import check_listen, is_loopback
    from podsight.cluster.server import AgentService, Health, serve_grpc

    host, port = check_listen(ns.listen)
    node = (ns.node_name or os.environ.get("NODE_NAME") or socket.gethostname()).strip()
    if not node or any(c.isspace() for c in node):
        raise UserError(f"--node-name {node!r}: one word, the node's name")
    auth: Authorizer
    if ns.auth == "none":
        if not is_loopback(host):
            raise UserError("--auth none is for loopback only (tests, simulated nodes): "
                            f"{host} is not loopback")
        auth = NoAuth()
    else:
        from podsight.identity.kube.config import load_config

        kauth = KubernetesAuth(load_config(ns.kubeconfig, ns.context), node)
        auth = kauth
    health = None
    if ns.health_listen:
        hhost, hport = check_listen(ns.health_listen, "--health-listen")
        health = Health(hhost, hport)
    service = AgentService(node, auth, ns.scope_netns)
    server = serve_grpc(service, host, port)
    try:
        if isinstance(auth, KubernetesAuth):
            auth.probe()  # the agent's own credentials work: only then ready
        if health is not None:
            health.ready = True
        sys.stderr.write(f"podsight agent: node {node} serving on {host}:{port} "
                         f"(auth {ns.auth})\n")
        sys.stderr.flush()
        while not STOP.is_set():
            time.sleep(0.2)
    finally:
        if health is not None:
            health.ready = False
        server.stop(grace=5).wait(10)
        deadline = time.monotonic() + 10
        while service.active and time.monotonic() < deadline:
            time.sleep(0.05)
        if health is not None:
            health.close()
    sys.stderr.write("podsight agent: stopped\n")
    return 0
