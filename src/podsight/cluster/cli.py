"""Entry point of ``kubectl-podsight`` (run by kubectl as ``kubectl podsight ...``).

Each subcommand registers itself from :data:`COMMANDS` (one line each): this
module knows only the shared flags (how to reach the cluster) and the error
boundary, which is podsight's own (one line, exit 2 for bad input).
"""

from __future__ import annotations

from podsight.runtime import STOP

STOP.install()  # as podsight's main: a signal during imports must not raise

import argparse  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402

from podsight import __version__  # noqa: E402
from podsight.cli.parser import OneLineParser  # noqa: E402
from podsight.cluster.deployment import NAMESPACE  # noqa: E402
from podsight.cluster.kubectl import Kubectl  # noqa: E402


def kubectl_of(args: argparse.Namespace) -> Kubectl:
    return Kubectl.find(args.kubeconfig, args.context)


def add_cluster_flags(p: argparse.ArgumentParser) -> None:
    """How to reach the cluster: kubectl's global flags, which kubectl keeps from plugins."""
    g = p.add_argument_group("cluster")
    g.add_argument("--kubeconfig", help="kubeconfig file (default: kubectl's: $KUBECONFIG, "
                                        "~/.kube/config)")
    g.add_argument("--context", help="kubeconfig context")


def _timeout(text: str) -> float:
    try:
        value = float(text.removesuffix("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def register_deploy(groups: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = groups.add_parser("deploy", help="run the podsight agent on every node (a DaemonSet)")
    p.add_argument("--image", help="agent image (default: the manifests' own)")
    p.add_argument("-k", "--kustomize", metavar="DIR",
                   help="apply this kustomization (an overlay of deploy/) instead of the "
                        "built-in manifests")
    p.add_argument("--timeout", type=_timeout, default=120.0, metavar="SECONDS",
                   help="how long to wait for every agent to be ready (default: 120)")
    add_cluster_flags(p)

    def run(args: argparse.Namespace) -> int:
        from podsight.cluster.deploy import run_deploy

        return run_deploy(kubectl_of(args), args.image, args.kustomize, args.timeout)

    p.set_defaults(func=run)


def register_undeploy(groups: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = groups.add_parser("undeploy", help="remove everything deploy created (by label)")
    p.add_argument("--timeout", type=_timeout, default=120.0, metavar="SECONDS",
                   help="how long to wait for the objects to be gone (default: 120)")
    add_cluster_flags(p)

    def run(args: argparse.Namespace) -> int:
        from podsight.cluster.deploy import run_undeploy

        return run_undeploy(kubectl_of(args), args.timeout)

    p.set_defaults(func=run)


def register_agents(groups: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = groups.add_parser("agents", help="list the agent pods per node; --check opens a "
                                         "port-forward to each")
    p.add_argument("--node", help="only these nodes (comma list)")
    p.add_argument("--check", action="store_true",
                   help="open the API server port-forward to each ready agent")
    p.add_argument("--agent-namespace", default=NAMESPACE, metavar="NS",
                   help=f"where the agents run (default: {NAMESPACE})")
    add_cluster_flags(p)

    def run(args: argparse.Namespace) -> int:
        from podsight.cluster.portforward import agent_endpoints, find_agents

        kubectl = kubectl_of(args)
        nodes = [n for n in args.node.split(",") if n] if args.node else None
        if not args.check:
            for a in find_agents(kubectl, args.agent_namespace, nodes):
                print(f"{a.node or '-':<24} {a.pod:<32} {'ready' if a.ready else a.reason}")
            return 0
        with agent_endpoints(kubectl, namespace=args.agent_namespace, nodes=nodes) as reach:
            for ep in reach.endpoints:
                print(f"{ep.node:<24} reachable through {ep.host}:{ep.port}")
            for node, why in sorted(reach.unreachable.items()):
                print(f"{node:<24} unreachable: {why}")
        return 0 if reach.endpoints and not reach.unreachable else 1

    p.set_defaults(func=run)


#: One registration per subcommand. Streaming subcommands (trace, flows, packets,
#: graph, serve, advise) register here the same way.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [  # type: ignore[type-arg]
    register_deploy,
    register_undeploy,
    register_agents,
]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="kubectl podsight",
                           description="podsight on a Kubernetes cluster: agents on every node, "
                                       "results merged here.")
    parser.add_argument("--version", action="version", version=f"podsight {__version__}")
    groups = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    groups.required = True
    for register in COMMANDS:
        register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from podsight.cli.main import _message

    try:
        args = build_parser().parse_args(argv)
        rc: int = args.func(args)
        return rc
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except BaseException as exc:  # podsight's boundary: one line
        import os
        import traceback

        text, code = _message(exc)
        if os.environ.get("PODSIGHT_DEBUG"):
            traceback.print_exc()
        sys.stderr.write(f"podsight: error: {text}\n")
        return code


if __name__ == "__main__":
    sys.exit(main())
