"""``kubectl podsight serve``: the traffic graph of every node, served on the user's machine.

The local ``podsight serve`` runs each gadget that feeds the graph in this process; here
the same gadgets run on every node's agent, with the values ``serve`` gives them
(``GadgetSpec.extra["graph_values"]``, ``--open-every``) passed as their flags, and the
merged stream goes into one :class:`~podsight.analysis.graph.Graph` through the adapter
each gadget declares for recorded records (``extra["graph_recorded"]``, what ``podsight
graph --from`` reads). The HTTP side is the local command's
(:class:`~podsight.outputs.http.GraphServer`, the Prometheus collector), so ``/metrics``
and ``/api/graph/*`` answer the same; the self-metrics have one source per node.

A gadget without a recorded adapter cannot feed the graph through agents (its records
carry nothing the graph could rebuild from JSON); such gadgets are named on stderr.
Every gadget that feeds the local ``serve`` has one today (tcplife, tcpconnect, and
flows for ``--tls`` / ``--flows``, with the values those flags give it). This module
knows no gadget: it asks the registry.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from podsight.errors import UserError
from podsight.runtime import STOP
from podsight.spec import GadgetSpec

#: serve's own flags (flag -> takes a value): they stay here; the rest (pod selection)
#: goes to every agent.
LOCAL_FLAGS = {"--listen": True, "--token-file": True, "--persistent": True,
               "--aggregate-cidr": True, "--aggregate-cidr6": True, "--tls": False,
               "--flows": False, "--open-every": True, "--max-time": True, "--timeout": True}


def agent_argv(spec: GadgetSpec, values: dict[str, Any], pods: Sequence[str]) -> list[str]:
    """The gadget's command line that sets ``values`` (param key -> value) by its flags."""
    argv = [*spec.command, *pods]
    for param in spec.params:
        if param.key not in values or not param.flags[0].startswith("-"):
            continue
        value = values[param.key]
        flag = next((f for f in param.flags if f.startswith("--")), param.flags[0])
        if param.kind.name == "flag":
            if value:
                argv.append(flag)
        elif param.kind.name == "duration":
            argv += [flag, f"{int(value)}ns"]
        else:
            argv += [flag, str(value)]
    return argv


class GraphFeed:
    """A client output: merged JSON lines into the graph, through the recorded adapters."""

    def __init__(self, graph: Any, adapters: Sequence[Callable[[dict[str, Any]], Any]]) -> None:
        self.graph = graph
        self.adapters = list(adapters)
        self.records = 0
        self.lock = threading.Lock()

    def write(self, lines: Sequence[bytes]) -> None:
        observations = []
        for line in lines:
            row = orjson.loads(line)
            for adapt in self.adapters:
                o = adapt(row)
                if o is not None:  # one observation, or a list (a flow record: several)
                    if isinstance(o, list):
                        observations.extend(o)
                    else:
                        observations.append(o)
                    break
        with self.lock:
            self.records += len(lines)
        self.graph.add(observations)

    def close(self) -> None:
        pass


def serve(cluster: list[str], rest: list[str]) -> int:
    """``kubectl podsight [cluster flags] serve [serve flags]``; the exit status."""
    from podsight.cli.kubectl import PROG, _check, _endpoints, _token, take
    from podsight.cli.serve import (
        _graph,
        _load,
        graph_specs,
        is_loopback,
        parse_listen,
        read_token,
    )
    from podsight.cluster.client import NodeRun, Outputs, node_report, run_cluster
    from podsight.outputs.http import GraphServer
    from podsight.outputs.prometheus import GraphCollector, SourceStats

    ns: argparse.Namespace = _check(rest)
    host, port = parse_listen(ns.listen)
    http_token = read_token(ns.token_file)
    if http_token is None and not is_loopback(host):
        raise UserError(f"--listen {ns.listen}: serving beyond loopback needs --token-file "
                        "(a bearer token every request must carry)")
    wanted = graph_specs(ns)
    usable = [s for s in wanted if "graph_recorded" in s.extra]
    skipped = [s.name for s in wanted if "graph_recorded" not in s.extra]
    if not usable:
        raise UserError("no gadget that feeds the graph can do so through agents (none has "
                        "a recorded-records adapter)")
    _, pods = take(rest[1:], LOCAL_FLAGS)
    argvs = []
    for spec in usable:
        values = {**spec.extra.get("graph_values", {}), "open_every": ns.open_every}
        for flag, more in spec.extra.get("graph_flags", {}).items():  # --tls, --flows
            if getattr(ns, flag, False):
                values.update(more)
        argvs.append(agent_argv(spec, values, pods))
        _check(argvs[-1])  # bad pod flags fail here, before any node is asked
    endpoints = _endpoints(cluster)
    token = _token(cluster)

    graph = _graph(ns)
    graph.offset_ns = 0  # recorded records carry wall-clock times
    feeds = [GraphFeed(graph, [_load(spec.extra["graph_recorded"])]) for spec in usable]
    started: dict[str, list[NodeRun]] = {spec.name: [] for spec in usable}
    settled: dict[str, set[int]] = {spec.name: set() for spec in usable}
    lock = threading.Lock()

    def sources() -> dict[str, SourceStats]:
        with lock:
            runs = [(name, n) for name, nodes in started.items() for n in nodes]
        return {f"{n.name}/{name}": SourceStats(
            records=n.ledger.received,
            lost={"kernel": n.kernel_lost, "on_the_way": n.ledger.gaps}) for name, n in runs}

    collector = GraphCollector(graph, sources)
    try:
        server = GraphServer(host, port, graph, collector, http_token)
    except OSError as exc:
        raise UserError(f"cannot listen on {ns.listen}: {exc.strerror}") from None
    where = f"http://{'[' + host + ']' if ':' in host else host}:{server.address[1]}/"
    if skipped:
        sys.stderr.write(f"{PROG}: not through agents: {', '.join(skipped)} (no recorded "
                         "adapter); the graph has no edges from them\n")
    results: list[Any] = []
    done = [threading.Event() for _ in usable]

    def one(i: int) -> None:
        spec, outputs = usable[i], Outputs()
        outputs.records.append(feeds[i])

        def node_started(node: NodeRun) -> None:
            with lock:
                started[spec.name].append(node)
                settled[spec.name].add(node.index)

        def node_ended(node: NodeRun) -> None:
            with lock:
                settled[spec.name].add(node.index)
        try:
            results.append(run_cluster(endpoints, argvs[i], outputs, token=token,
                                       max_time=ns.max_time, on_started=node_started,
                                       on_ended=node_ended))
        finally:
            done[i].set()

    server.start()
    threads = []
    try:
        # One gadget at a time is started on the agents: libbpf was seen to hang when two
        # threads of one process load objects at once (cli/serve.py starts its feeds so).
        for i, spec in enumerate(usable):
            threads.append(threading.Thread(target=one, args=(i,), daemon=True,
                                            name=f"serve-{spec.name}"))
            threads[-1].start()
            # Every node started this gadget, or ended (unreachable, refused) first.
            while not STOP.is_set() and not done[i].is_set() and (
                    len(settled[spec.name]) < len(endpoints)):
                STOP.sleep(0.05)
        if not STOP.is_set():
            sys.stderr.write(f"{PROG}: serving the traffic graph at {where} "
                             f"({', '.join(s.name for s in usable)} on every node; Ctrl-C "
                             "to stop)\n")
            sys.stderr.flush()
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    finally:
        STOP.set()
        for t in threads:
            t.join()
        server.close()
    code = 0
    for spec, result in zip(usable, results, strict=False):
        for node in result.nodes:
            sys.stderr.write(f"{PROG}: {spec.name}: {node_report(node)}\n")
        if len(result.failed) == len(result.nodes):
            code = 1
    return code
