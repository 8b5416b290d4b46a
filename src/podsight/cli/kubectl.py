"""``kubectl-podsight`` (``kubectl podsight ...``): a gadget on every node, merged here.

The command line is the local command's (``kubectl podsight trace tcpconnect -n shop -o
json``) after where the agents are (``--agent-addr HOST:PORT``, repeatable) and how to
authenticate (the kubeconfig user's token, or ``--token-file``): cluster flags come
before the command, like kubectl's global flags. The gadget's flags are
checked here by podsight's own parser (bad input fails before any node is asked); output
flags (``-o``, ``--json``, ``--sqlite``, ``-w``, ``--force``, ``--summary``) stay here and
the rest goes to every agent. ``graph`` and ``advise network-policy`` run the gadget they
read (tcplife; flows or tcpconnect) on every node for ``--timeout`` seconds and hand the
merged records to the local ``graph --from`` / ``advise --from``, which read them as
they read a recorded file; ``serve`` is :mod:`podsight.cluster.serve`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from podsight.runtime import STOP

STOP.install()  # before anything else: Ctrl-C at any moment stops through the normal end

from podsight.errors import PodsightError, UserError  # noqa: E402

PROG = "kubectl-podsight"
USAGE = (f"usage: {PROG} [--agent-addr HOST:PORT ...] [--token-file FILE] [--kubeconfig FILE] "
         "[--summary FILE] trace GADGET|flows|packets|graph|serve|advise network-policy "
         "[FLAGS]")

#: Cluster flags (taken out before the gadget's flags are parsed), each with a value.
CLUSTER_FLAGS = {"--agent-addr": True, "--token-file": True, "--kubeconfig": True,
                 "--context": True, "--summary": True}
#: Output flags of gadget commands: kept on the client. flag -> takes a value.
OUTPUT_FLAGS = {"-o": True, "--output": True, "--json": True, "--sqlite": True, "-w": True,
                "--write": True, "--force": False, "--tui": False, "--no-tui": False,
                "--max-bytes": True, "--max-packets": True, "--ring": True, "--ring-size": True,
                "--page-cache": False}  # the client's file is always written through it
GRAPH_FLAGS = {"-o": True, "--output": True, "--stats-type": True, "--persistent": True,
               "--aggregate-cidr": True, "--aggregate-cidr6": True, "--tls": False,
               "--flows": False, "--open-every": True, "--timeout": True, "--max-time": True,
               "--from": True}
ADVISE_FLAGS = {"--gadget": True, "--objects": True, "--aggregate-cidr": True,
                "--output-dir": True, "--overwrite": False, "--timeout": True,
                "--max-time": True, "--from": True}


def take(words: Sequence[str], flags: dict[str, bool]) -> tuple[list[str], list[str]]:
    """Split ``words`` into (the flags named in ``flags`` with their values, the rest)."""
    taken: list[str] = []
    rest: list[str] = []
    i = 0
    words = list(words)
    while i < len(words):
        word = words[i]
        name = word.split("=", 1)[0] if word.startswith("--") else word
        if name in flags:
            if flags[name] and "=" not in word:
                if i + 1 >= len(words):
                    raise UserError(f"{name} needs a value")
                taken += [word, words[i + 1]]
                i += 2
                continue
            taken.append(word)
        else:
            rest.append(word)
        i += 1
    return taken, rest


def split_cluster(words: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the cluster flags before the command, the command line). Cluster flags go before
    the command, as kubectl's global flags do, so that a command's own flag of the same
    name (``serve --token-file``: the HTTP token) keeps its meaning."""
    words = list(words)
    i = 0
    while i < len(words) and words[i].startswith("-"):
        name = words[i].split("=", 1)[0]
        if name not in CLUSTER_FLAGS:
            raise UserError(f"{name}: not a kubectl-podsight flag (cluster flags: "
                            f"{', '.join(sorted(CLUSTER_FLAGS))}; the command comes next)")
        i += 1 if "=" in words[i] else 2
        if i > len(words):
            raise UserError(f"{name} needs a value")
    return words[:i], words[i:]


def _values(taken: Sequence[str], flag: str) -> list[str]:
    out = []
    for i, word in enumerate(taken):
        if word == flag and i + 1 < len(taken):
            out.append(taken[i + 1])
        elif word.startswith(flag + "="):
            out.append(word.split("=", 1)[1])
    return out


def _last(taken: Sequence[str], flag: str) -> str | None:
    values = _values(taken, flag)
    return values[-1] if values else None


def _token(cluster: Sequence[str]) -> str | None:
    files = _values(cluster, "--token-file")
    if files:
        from podsight.cli.serve import read_token

        return read_token(files[-1])
    kubeconfig = _last(cluster, "--kubeconfig")
    context = _last(cluster, "--context")
    if not kubeconfig and not os.environ.get("KUBECONFIG") and not os.path.exists(
            os.path.expanduser("~/.kube/config")):
        return None  # agents with --auth none (loopback) need none
    from podsight.identity.kube.config import load_config

    header = load_config(kubeconfig, context).headers().get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise UserError("the kubeconfig user has no bearer token: give --token-file FILE")
    return token.strip()


def _endpoints(cluster: Sequence[str]) -> list[Any]:
    from podsight.cluster.endpoints import parse_agent_addr

    addrs = _values(cluster, "--agent-addr")
    if not addrs:
        raise UserError("no agents: give --agent-addr HOST:PORT (repeatable)")
    endpoints = [parse_agent_addr(a) for a in addrs]
    if len({e.target for e in endpoints}) != len(endpoints):
        raise UserError("--agent-addr: the same agent is given twice")
    return endpoints


def _check(words: Sequence[str]) -> Any:
    """Parse a local command line with podsight's own parser (one-line errors, exit 2)."""
    from podsight.cli.main import build_parser

    return build_parser().parse_args(list(words))


def check(words: Sequence[str]) -> None:
    """The command line's own checks (cluster flags, the command's flags by podsight's
    parser), for the plugin to run before it asks the API server for agents: bad input
    fails in one line before any cluster is asked."""
    _, rest = split_cluster(words)
    _, rest = take(rest, {"--summary": True})
    if not rest:
        raise UserError("no command: " + USAGE)
    _check(rest)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        if not words or words[0] in ("-h", "--help"):
            sys.stdout.write(USAGE + "\n")
            return 0 if words else 2
        cluster, rest = split_cluster(words)
        summary, rest = take(rest, {"--summary": True})  # a client output: anywhere
        cluster += summary
        if not rest:
            raise UserError("no command: " + USAGE)
        if rest[0] == "graph":
            return _graph(cluster, rest)
        if rest[0] == "advise":
            return _advise(cluster, rest)
        if rest[0] == "serve":
            from podsight.cluster.serve import serve

            return serve(cluster, rest)
        return _gadget(cluster, rest)
    except KeyboardInterrupt:
        return 130
    except PodsightError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return exc.exit_code
    except OSError as exc:
        sys.stderr.write(f"{PROG}: error: {exc.strerror or exc}"
                         f"{': ' + str(exc.filename) if exc.filename else ''}\n")
        return 1


# -- gadgets ----------------------------------------------------------------------------------

def _gadget(cluster: list[str], rest: list[str]) -> int:
    from podsight.cli.gadget import _check_new_file, parse_output
    from podsight.cluster import sinks
    from podsight.cluster.client import Outputs
    from podsight.cluster.session import find_spec

    ns = _check(rest)
    spec = find_spec(rest)
    endpoints = _endpoints(cluster)
    _outs, agent_argv = take(rest, OUTPUT_FLAGS)
    outputs = Outputs()
    outputs.max_bytes = getattr(ns, "max_bytes", None)
    summary_file = _last(cluster, "--summary")
    for path in (getattr(ns, "sqlite", None), getattr(ns, "json_file", None), summary_file):
        if path:
            _check_new_file(path, "output")
    meta = {"command": " ".join([PROG, *(sys.argv[1:])]), "gadget": spec.name,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "nodes": ",".join(e.target for e in endpoints)}
    closers: list[Any] = []
    try:
        if "capture" in spec.flag_groups:
            from podsight.cli.gadget import _capture_output

            factory = _capture_output(ns)
            from podsight.outputs.pcapng import PcapngOutput

            # Through the page cache (no O_DIRECT: outputs/directio.py): the merged frames
            # come over the network in batches only as they arrive, with no idle turn to
            # end the file on its last block for a reader of the growing file.
            # -w checked; the merged file needs no identity callbacks: --comments are made
            # by each agent (it knows its node's pods), and --tls-keylog is read there.
            del factory
            keys = sinks.ForwardedKeys() if getattr(ns, "tls_keylog", None) else None
            outputs.capture = sinks.MergedCapture(PcapngOutput(
                ns.write, application=f"kubectl-podsight {spec.name}", force=ns.force,
                ring=ns.ring, ring_size=ns.ring_size, max_packets=ns.max_packets,
                keylog=keys), keys)
            outputs.records.append(outputs.capture)  # the merged blocks, in time order
            closers.append(outputs.capture)
        else:
            mode, columns = parse_output(getattr(ns, "output", "columns"))
            if columns is not None and not columns.replace(",", "").strip():
                raise UserError("-o columns= needs at least one column name")
            if mode == "json":
                outputs.records.append(sinks.JsonSink(1))
            else:
                width = min(max(len(e.node) for e in endpoints), 16)
                outputs.records.append(sinks.TableSink(sys.stdout, width))
                outputs.columns = columns or ""
            if getattr(ns, "json_file", None):
                fd = os.open(ns.json_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                outputs.records.append(sinks.JsonSink(fd))
                closers.append(outputs.records[-1])
            if getattr(ns, "sqlite", None):
                outputs.sqlite = sinks.SqliteSink(ns.sqlite, spec.name, meta)
                outputs.records.append(outputs.sqlite)
                closers.append(outputs.sqlite)
        return _run(endpoints, agent_argv, outputs, cluster, ns.max_time, summary_file)
    finally:
        for c in closers:
            c.close()


def _run(endpoints: list[Any], agent_argv: list[str], outputs: Any, cluster: list[str],
         max_time: float | None, summary_file: str | None) -> int:
    from podsight.cluster.client import node_report, run_cluster

    token = _token(cluster)
    result = run_cluster(endpoints, agent_argv, outputs, token=token, max_time=max_time)
    if result.nodes and all(n.bad_input for n in result.nodes):
        # Every node refused the request itself (a bad -o columns=, say): one line, exit 2.
        raise UserError(result.nodes[0].error.removesuffix(" (INVALID_ARGUMENT)"))
    for node in result.nodes:
        sys.stderr.write(f"{PROG}: {node_report(node)}\n")
    lost = sum(n.kernel_lost + n.ledger.gaps for n in result.nodes)
    failed = result.failed
    line = (f"{PROG}: {result.records} records from {len(result.nodes) - len(failed)} of "
            f"{len(result.nodes)} nodes, {lost} lost")
    if failed:
        line += f"; unreachable or failed: {', '.join(n.name for n in failed)}"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    report = {
        "records": result.records, "lost": lost, "stopped_by": result.stopped_by,
        "nodes": [{"node": n.name, "address": n.endpoint.target, "state": n.state,
                   "records": n.ledger.received, "lost_kernel": n.kernel_lost,
                   "lost_gaps": n.ledger.gaps, "duplicates": n.ledger.duplicates,
                   "summary": n.summary.line if n.summary is not None else "",
                   "error": n.error} for n in result.nodes]}
    if outputs.sqlite is not None:
        outputs.sqlite.set_nodes([n.row() for n in result.nodes])
        outputs.sqlite.set_meta({
            "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "records": str(result.records), "lost": str(lost),
            "stopped_by": result.stopped_by,
            "unreachable": ",".join(n.name for n in failed)})
    if summary_file:
        with open(summary_file, "x", encoding="utf-8") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
    if len(failed) == len(result.nodes):
        return 2 if any(n.bad_input for n in failed) else 1
    return 0


# -- graph and advise: a gadget on every node, then the local command on the merged file ---

def _merged_into_file(cluster: list[str], agent_argv: list[str], max_time: float | None,
                      path: str) -> int:
    from podsight.cluster import sinks
    from podsight.cluster.client import Outputs

    endpoints = _endpoints(cluster)
    outputs = Outputs()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    outputs.records.append(sinks.JsonSink(fd))
    try:
        return _run(endpoints, agent_argv, outputs, cluster, max_time, None)
    finally:
        outputs.records[0].close()


def _graph(cluster: list[str], rest: list[str]) -> int:
    ns = _check(rest)
    if ns.source is not None:
        raise UserError("graph --from reads a local file: run 'podsight graph --from' instead")
    if ns.max_time is None:
        raise UserError("give --timeout SECONDS: how long to trace on every node")
    local, pods = take(rest[1:], GRAPH_FLAGS)
    local = [w for w in local]
    _, local_only = take(local, {"--timeout": True, "--max-time": True})
    agent_argv = ["trace", "tcplife", *pods, "--max-time", f"{ns.max_time:g}"]
    _check(agent_argv)
    from podsight.cli.main import main as podsight_main

    with tempfile.TemporaryDirectory(prefix="kubectl-podsight-") as tmp:
        path = os.path.join(tmp, "tcplife.json")
        code = _merged_into_file(cluster, agent_argv, ns.max_time, path)
        if code:
            return code
        return podsight_main(["graph", "--from", path, *local_only])


def _advise(cluster: list[str], rest: list[str]) -> int:
    ns = _check(rest)
    if getattr(ns, "sources", None):
        raise UserError("advise --from reads local files: run 'podsight advise --from' instead")
    if ns.max_time is None:
        raise UserError("give --timeout SECONDS: how long to observe on every node")
    local, pods = take(rest[2:], ADVISE_FLAGS)
    _, local_only = take(local, {"--timeout": True, "--max-time": True, "--gadget": True})
    from podsight.cluster.session import find_spec
    from podsight.gadgets import specs

    spec = next(s for s in specs() if s.name == ns.gadget)
    agent_argv = [*spec.command, *pods, "--max-time", f"{ns.max_time:g}"]
    find_spec(agent_argv)
    _check(agent_argv)
    from podsight.cli.main import main as podsight_main

    with tempfile.TemporaryDirectory(prefix="kubectl-podsight-") as tmp:
        path = os.path.join(tmp, f"{spec.name}.json")
        code = _merged_into_file(cluster, agent_argv, ns.max_time, path)
        if code:
            return code
        return podsight_main(["advise", "network-policy", "--from", path, *local_only])


if __name__ == "__main__":
    sys.exit(main())
