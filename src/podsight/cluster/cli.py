"""Entry point of ``kubectl-podsight`` (run by kubectl as ``kubectl podsight ...``).

Two kinds of subcommands:

- the cluster's own (``deploy``, ``undeploy``, ``agents``), each registered from
  :data:`COMMANDS` (one line each) and parsed here;
- the streaming ones (``trace``, ``flows``, ``packets``, ``graph``, ``serve``, ``advise``),
  which belong to the merging client, ``podsight.cli.kubectl`` (issue 13 part A).
  Given ``--agent-addr``, they go to it as typed. Without, this module finds the
  agents first (:func:`discovered_addrs`): the agent pods on ``--node`` or on the
  nodes of the pods that ``-n/-A/-p/-l`` select, each reached through its own API
  server port-forward, handed to the client as ``--agent-addr 127.0.0.1:PORT``
  (the agent tells the client its node name). Nodes that cannot be reached are
  reported here, one line each, and the run goes on without them.
  ``--discover`` asks for both: the cluster's agents found as above, merged with
  the ``--agent-addr`` ones (agents outside the cluster's API, e.g. simulated
  nodes, or one reached through a tunnel of the user's own). It is an explicit
  flag rather than implied by ``-n``/``--node`` because those are also the
  gadget's own filters, which a user passes to direct agents as well: a run
  that asks the API server only when told keeps ``--agent-addr`` usable with
  no cluster at all.

The error boundary is podsight's own (one line, exit 2 for bad input).
"""

from __future__ import annotations

from podsight.runtime import STOP

STOP.install()  # as podsight's main: a signal during imports must not raise

import argparse  # noqa: E402
import contextlib  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402

from podsight import __version__  # noqa: E402
from podsight.cli.parser import OneLineParser  # noqa: E402
from podsight.cluster.deployment import NAMESPACE  # noqa: E402
from podsight.cluster.kubectl import Kubectl  # noqa: E402
from podsight.errors import EnvironmentProblem  # noqa: E402

PROG = "kubectl-podsight"
#: Flags before the command that this module handles (flag -> takes a value); the
#: client's own cluster flags (``--agent-addr``, ...) are passed on.
OWN_FLAGS = {"--agent-namespace": True, "--discover": False}
#: Every flag that may come before a streaming command, and whether it takes a value.
LEADING_FLAGS = {**OWN_FLAGS, "--agent-addr": True, "--token-file": True,
                 "--kubeconfig": True, "--context": True, "--summary": True}
#: The merging client's module (part A) and the subcommands it serves.
STREAMING_MODULE = "podsight.cli.kubectl"
STREAMING = ("trace", "flows", "packets", "graph", "serve", "advise")


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
                                       "results merged here. Streaming commands: "
                                       f"{', '.join(STREAMING)} (flags as the local podsight's;"
                                       " before the command: --kubeconfig, --context, "
                                       "--agent-namespace NS, --agent-addr HOST:PORT "
                                       "(repeatable: these agents instead of the cluster's), "
                                       "--discover (the cluster's agents as well as the "
                                       "--agent-addr ones, merged in one run))")
    parser.add_argument("--version", action="version", version=f"podsight {__version__}")
    groups = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    groups.required = True
    for register in COMMANDS:
        register(groups)
    return parser


def flag_values(words: Sequence[str], *names: str) -> list[str]:
    """The values of ``names`` in a command line (``-n X``, ``--namespace=X``)."""
    out = []
    for i, word in enumerate(words):
        if word == "--":
            break
        for name in names:
            if word == name and i + 1 < len(words):
                out.append(words[i + 1])
            elif name.startswith("--") and word.startswith(name + "="):
                out.append(word.split("=", 1)[1])
    return out


def last(values: list[str]) -> str | None:
    return values[-1] if values else None


def _names(values: list[str]) -> list[str]:
    return [n for v in values for n in v.split(",") if n and not n.startswith("!")]


def wanted_nodes(kubectl: Kubectl, words: Sequence[str]) -> tuple[list[str] | None, str]:
    """Where to run: ``--node``'s nodes, else those of the selected pods, else every agent.

    Returns (nodes or None for all, why), the why for the user's notice.
    """
    from podsight.cluster.portforward import nodes_of_pods

    nodes = _names(flag_values(words, "--node"))
    if nodes:
        return sorted(set(nodes)), "--node"
    namespaces = _names(flag_values(words, "-n", "--namespace"))
    selectors = flag_values(words, "-l", "--selector")
    pods = _names(flag_values(words, "-p", "--podname"))
    if not (namespaces or selectors or pods or "-A" in words or "--all-namespaces" in words):
        return None, "no pod selected"
    found: set[str] = set()
    scopes: list[str | None] = list(namespaces) or [None]
    for ns in scopes:
        found |= nodes_of_pods(kubectl, namespace=ns, all_namespaces=not namespaces,
                               selector=selectors[-1] if selectors else None,
                               pods=pods or None)
    if not found:
        return None, "the selected pods run nowhere yet"
    return sorted(found), "the selected pods"


@contextlib.contextmanager
def discovered_addrs(words: Sequence[str], namespace: str | None = None,
                     others: int = 0) -> Iterator[list[str]]:
    """``--agent-addr 127.0.0.1:PORT`` for each reachable agent, forwards open meanwhile.
    With ``others`` agents given directly, finding none in the cluster is said, not fatal."""
    from podsight.cluster.portforward import agent_endpoints

    kubeconfig = last(flag_values(words, "--kubeconfig"))
    context = last(flag_values(words, "--context"))
    namespace = namespace or NAMESPACE
    kubectl = Kubectl.find(kubeconfig, context)
    nodes, why = wanted_nodes(kubectl, words)
    with agent_endpoints(kubectl, namespace=namespace, nodes=nodes) as reach:
        for node, reason in sorted(reach.unreachable.items()):
            sys.stderr.write(f"{PROG}: node {node} unreachable: {reason}\n")
        if not reach.endpoints:
            where = "on " + ", ".join(nodes) if nodes else "anywhere"
            text = f"no ready podsight agent {where} ({why})"
            if not others:
                raise EnvironmentProblem(f"{text}; run 'kubectl podsight deploy' first")
            sys.stderr.write(f"{PROG}: --discover: {text}; going on with the "
                             f"{others} --agent-addr agent(s)\n")
        addrs = []
        for ep in reach.endpoints:
            addrs += ["--agent-addr", f"{ep.host}:{ep.port}"]
        yield addrs


def command_index(words: Sequence[str]) -> int:
    """Where the command starts: after the leading flags (and their values), as kubectl's
    global flags (``--agent-addr 127.0.0.1:7750 trace ...``); ``len(words)`` if none."""
    i = 0
    while i < len(words) and words[i].startswith("-"):
        name, eq, _ = words[i].partition("=")
        i += 2 if LEADING_FLAGS.get(name) and not eq else 1
    return i


def without_own_flags(words: Sequence[str]) -> tuple[list[str], bool]:
    """``words`` without this module's leading flags (the client does not know them), and
    whether ``--discover`` was among them. ``--agent-namespace`` is dropped anywhere,
    as before (it was accepted after the command too)."""
    at = command_index(words)
    out: list[str] = []
    discover = False
    i = 0
    while i < len(words):
        name, eq, _ = words[i].partition("=")
        if name == "--discover" and i < at:
            discover = True
        elif name == "--agent-namespace":
            i += 1 if eq else 2
            continue
        else:
            out.append(words[i])
        i += 1
    return out, discover


def stream(words: list[str]) -> int:
    """A streaming subcommand: the merging client, with discovered agents if none given
    (or if ``--discover`` asks for them too)."""
    try:
        client = importlib.import_module(STREAMING_MODULE)
    except ImportError:
        raise EnvironmentProblem(f"kubectl podsight {words[0]}: this build has no merging "
                                 f"client ({STREAMING_MODULE})") from None
    namespace = last(flag_values(words, "--agent-namespace"))
    words, discover = without_own_flags(words)
    given = flag_values(words[:command_index(words)], "--agent-addr")
    if given and not discover:
        rc: int = client.main(words)
        return rc
    client.check(words)  # bad input: one line, before the API server is asked
    with discovered_addrs(words, namespace, len(given)) as addrs:
        rc = client.main([*addrs, *words])
        return rc


def main(argv: Sequence[str] | None = None) -> int:
    from podsight.cli.main import _message

    words = list(sys.argv[1:] if argv is None else argv)
    try:
        at = command_index(words)
        first = words[at] if at < len(words) else None
        if first in STREAMING:
            return stream(words)
        args = build_parser().parse_args(words)
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
