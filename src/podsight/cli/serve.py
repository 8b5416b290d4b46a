"""``podsight serve``: the traffic graph over HTTP, fed by every gadget that has a graph
adapter (``GadgetSpec.extra["graph"]``), each in its own pipeline run.

Each run has its own thread and its own identity resolver (resolvers are not shared
between threads); they all stop on the one stop flag (Ctrl-C, SIGTERM, ``--max-time``),
each with its own final drain and summary line. This module knows no gadget: it asks
the registry which gadgets feed the graph.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

from podsight.cli import args as A
from podsight.cli.identity import add_identity_flags, netns_flag, pod_selector
from podsight.errors import UserError
from podsight.runtime import STOP, Stopped
from podsight.spec import GadgetSpec

DEFAULT_LISTEN = "127.0.0.1:9862"


def register(groups: Any) -> None:
    p = groups.add_parser(
        "serve", help="the traffic graph over HTTP: Prometheus /metrics, Grafana's Node Graph "
                      "API and a service-map page",
        description="Trace TCP connections (bytes, durations, failed connects) and serve them "
                    "aggregated per (source workload, destination, port): /metrics for "
                    "Prometheus, /api/graph/* for Grafana's nodegraph-api datasource, "
                    "/api/graph.json, and a service-map page at /.")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"where to listen (default {DEFAULT_LISTEN}); anything but loopback "
                        "needs --token-file")
    p.add_argument("--token-file", metavar="FILE",
                   help="a file holding the bearer token every request must carry")
    add_graph_flags(p)
    p.add_argument("--max-time", "--timeout", dest="max_time", type=lambda v: A.seconds(v),
                   metavar="SECONDS", help="stop after this long")
    add_identity_flags(p)
    p.set_defaults(func=run)


def add_graph_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("graph")
    g.add_argument("--persistent", type=lambda v: A.duration_ns(v, 1), default=10 * 10**9,
                   metavar="DURATION", help="connections open longer than this are persistent "
                                            "(default 10s)")
    g.add_argument("--aggregate-cidr", type=lambda v: A.integer(v, 0, 32), metavar="N",
                   help="group external IPv4 peers without a TLS name by their /N network")
    g.add_argument("--aggregate-cidr6", type=lambda v: A.integer(v, 0, 128), metavar="N",
                   help="the same for IPv6 peers")
    g.add_argument("--tls", action="store_true",
                   help="name external peers by the TLS server name their clients asked for "
                        "(runs the flows gadget with --tls on the selected pods' interfaces)")
    g.add_argument("--flows", action="store_true",
                   help="also bytes on the wire, drops with their reason and DNS answers "
                        "per edge (runs the flows gadget with --drops --dns)")
    g.add_argument("--open-every", type=lambda v: A.duration_ns(v, 10**8, 3600 * 10**9),
                   default=5 * 10**9, metavar="DURATION",
                   help="how often connections still open are read (default 5s)")
    g.add_argument("--per-connection", action="store_true",
                   help="send every closed connection from the kernel to podsight as its own "
                        "record, named when it closed (default: summed per edge in the "
                        "kernel and read every --edge-every, which costs less per "
                        "connection)")
    g.add_argument("--edge-every", type=lambda v: A.duration_ns(v, 10**7, 3600 * 10**9),
                   default=10**9, metavar="DURATION",
                   help="how often the kernel's per-edge sums are read (default 1s); an "
                        "address another pod takes within this long may name an edge by it")
    g.add_argument("--edge-entries", type=lambda v: A.integer(v, 1, 1 << 20),
                   default=16384, metavar="N",
                   help="edges the kernel can sum (default 16384); connections of edges "
                        "beyond it come as records, counted in the summary (edges_full)")
    g.add_argument("--max-open", type=lambda v: A.integer(v, 16, 1 << 24), default=131072,
                   metavar="N",
                   help="sockets the kernel follows at once, each side of a connection one "
                        "(default 131072, ~17 MiB of kernel memory); a connection beyond it "
                        "is counted lost (lost_full) and its fill is in "
                        "podsight_map_fill_ratio{map=\"states\"}")


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UserError(f"--listen {value!r}: use HOST:PORT, e.g. {DEFAULT_LISTEN}")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise UserError(f"--listen {value!r}: {host!r} is not an IP address") from None
        host = "127.0.0.1"
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def read_token(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as exc:
        raise UserError(f"--token-file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"--token-file {path}: not text") from None
    if not token or any(c.isspace() for c in token):
        raise UserError(f"--token-file {path}: the file must hold one token (no spaces)")
    return token


# -- the runs that feed the graph -----------------------------------------------------------

def graph_specs(ns: argparse.Namespace | None = None) -> list[GadgetSpec]:
    """Gadgets that feed the graph: those with an adapter, and of them those that ask for a
    flag (``extra["graph_flag"]``) only when it is given; less any whose feeds
    (``extra["graph_feeds"]``) another one chosen feeds as well, and more: its programs
    would run on the same kernel events for nothing."""
    from podsight.gadgets import specs

    chosen = [s for s in specs() if "graph" in s.extra and (
        "graph_flags" not in s.extra or any(getattr(ns, flag, False)
                                            for flag in s.extra["graph_flags"]))]
    feeds = {s.name: set(s.extra.get("graph_feeds", (s.name,))) for s in chosen}
    return [s for s in chosen
            if not any(feeds[s.name] < feeds[o.name] for o in chosen if o is not s)]


def _load(ref: str) -> Callable[..., Any]:
    module, _, attr = ref.partition(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    return fn


class _Sink:
    """A pipeline output that turns records into graph observations."""

    def __init__(self, graph: Any, adapter: Callable[[Sequence[Any]], Any]) -> None:
        self.graph = graph
        self.adapter = adapter
        self.records = 0

    def write(self, records: Sequence[Any]) -> None:
        self.records += len(records)
        self.graph.add(self.adapter(records))


class _RawSink(_Sink):
    """A sink for a gadget whose adapter also takes raw batches (``extra["graph_raw"]``):
    the pipeline hands it the kernel's records undecoded and it aggregates them before
    naming (decode and identity once per group, not per record)."""

    def __init__(self, graph: Any, adapter: Callable[[Sequence[Any]], Any],
                 raw_adapter: Callable[[Any, Any], tuple[Any, int]]) -> None:
        super().__init__(graph, adapter)
        self.raw_adapter = raw_adapter

    def write_raw(self, raw: Any, naming: Any) -> int:
        observations, kept = self.raw_adapter(raw, naming)
        self.records += kept
        self.graph.add(observations)
        return kept


class _Started:
    """Wraps a gadget to say when its programs are attached."""

    def __init__(self, gadget: Any, event: threading.Event) -> None:
        self._gadget = gadget
        self._event = event
        self.schema = gadget.schema

    def start(self, selection: Any) -> str:
        what: str = self._gadget.start(selection)
        self._event.set()
        return what

    def __getattr__(self, name: str) -> Any:
        return getattr(self._gadget, name)


class Feed:
    """One gadget's pipeline run in a thread, with what it did for the self-metrics."""

    def __init__(self, spec: GadgetSpec, ns: argparse.Namespace, graph: Any,
                 overrides: dict[str, Any]) -> None:
        self.spec = spec
        self.ns = ns
        self.graph = graph
        self.values = {p.key: p.default for p in spec.params}
        self.values.update({k: v for k, v in overrides.items() if k in self.values})
        self.values.update(spec.extra.get("graph_values", {}))
        # serve's own choices, for a gadget that asked for them in graph_values
        mine = {"aggregate": not getattr(ns, "per_connection", False),
                "persistent_ns": getattr(ns, "persistent", None),
                "edge_every": getattr(ns, "edge_every", None),
                "edge_entries": getattr(ns, "edge_entries", None),
                "max_open": getattr(ns, "max_open", None)}
        self.values.update({k: v for k, v in mine.items()
                            if k in self.values and v is not None})
        for flag, values in spec.extra.get("graph_flags", {}).items():
            if getattr(ns, flag, False):
                self.values.update(values)
        if spec.interval is not None:
            self.values.setdefault("interval", spec.interval)
        raw_ref = spec.extra.get("graph_raw")
        self.sink = (_Sink(graph, _load(spec.extra["graph"])) if raw_ref is None else
                     _RawSink(graph, _load(spec.extra["graph"]), _load(raw_ref)))
        self.started = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.run: Any = None
        self.gadget: Any = None
        self.thread = threading.Thread(target=self._main, name=f"podsight-{spec.name}",
                                       daemon=True)

    def _main(self) -> None:
        from podsight.cli.identity import build_resolver
        from podsight.pipeline import OutputOptions, Run, RunContext
        from podsight.timefmt import Clock

        try:
            with ExitStack() as stack:
                resolver = build_resolver(self.ns, stack)
                factory = _load(self.spec.factory)

                def make(ctx: Any) -> Any:
                    self.gadget = factory(ctx)
                    return _Started(self.gadget, self.started)

                ctx = RunContext(spec=self.spec, values=self.values, resolver=resolver,
                                 selector=pod_selector(self.ns), clock=Clock(),
                                 warn=_warn)
                options = OutputOptions(mode="none", sinks=(self.sink,),
                                        max_time=self.ns.max_time,
                                        command=" ".join(sys.argv))
                self.run = Run(ctx, make, options, netns_flag(self.ns), [])
                result = self.run.execute()
                if result.failure is not None:
                    raise result.failure
        except Stopped:
            pass
        except BaseException as exc:
            self.error = exc
            STOP.set()
        finally:
            self.done.set()

    def stats(self) -> Any:
        from podsight.outputs.prometheus import SourceStats

        stats = SourceStats(records=self.sink.records)
        gadget = self.gadget
        if gadget is not None and self.started.is_set() and not self.done.is_set():
            try:
                tally = gadget.tally(0.0)
                stats.lost = {k.removeprefix("lost_"): v.count for k, v in tally.losses.items()}
                fill = getattr(gadget, "fill", None)
                if fill is not None:
                    stats.fill = fill()
            except Exception:  # closing meanwhile: the counters are gone, not an error
                pass
        return stats


def _warn(text: str) -> None:
    sys.stderr.write(f"podsight: warning: {text}\n")
    sys.stderr.flush()


def _graph(ns: argparse.Namespace) -> Any:
    from podsight.analysis.graph import Graph
    from podsight.timefmt import Clock

    return Graph(persistent_ns=ns.persistent, aggregate_cidr=ns.aggregate_cidr,
                 aggregate_cidr6=ns.aggregate_cidr6, boot_offset_ns=Clock().offset_ns)


def feed(ns: argparse.Namespace, graph: Any, *, ready: Callable[[list[Feed]], None] =
         lambda feeds: None, collector: Callable[[list[Feed]], None] = lambda feeds: None
         ) -> None:
    """Run every gadget that feeds the graph until a stop (Ctrl-C, SIGTERM, --max-time),
    calling ``ready`` once all are attached; raises the first gadget's error."""
    pod_selector(ns)
    netns_flag(ns)
    overrides = {"open_every": ns.open_every}
    feeds = [Feed(spec, ns, graph, overrides) for spec in graph_specs(ns)]
    collector(feeds)
    STOP.set_deadline(ns.max_time)
    try:
        # One at a time: two threads opening and loading objects through libbpf at once
        # were seen to hang in it (its print callback re-enters Python).
        for f in feeds:
            f.thread.start()
            while not STOP.is_set() and not (f.started.is_set() or f.done.is_set()):
                time.sleep(0.02)
        if not STOP.is_set():
            ready(feeds)
        last_sweep = time.monotonic()
        while not STOP.is_set() and not all(f.done.is_set() for f in feeds):
            STOP.sleep(0.2)
            if time.monotonic() - last_sweep > 30:
                graph.forget_stale(time.time_ns())
                last_sweep = time.monotonic()
    finally:
        STOP.set()
        for f in feeds:
            if f.thread.is_alive():
                f.thread.join()
    for f in feeds:
        if f.error is not None:
            raise f.error


def trace_into(ns: argparse.Namespace, graph: Any) -> Any:
    """``podsight graph`` without ``--from``: trace for --max-time into ``graph``."""
    graph.offset_ns = _graph(ns).offset_ns
    feed(ns, graph)
    return graph


def run(ns: argparse.Namespace) -> int:
    from podsight.outputs.http import GraphServer
    from podsight.outputs.prometheus import GraphCollector

    host, port = parse_listen(ns.listen)
    token = read_token(ns.token_file)
    if token is None and not is_loopback(host):
        raise UserError(f"--listen {ns.listen}: serving beyond loopback needs --token-file "
                        "(a bearer token every request must carry)")
    pod_selector(ns)
    netns_flag(ns)
    graph = _graph(ns)
    feeds: list[Feed] = []
    collector = GraphCollector(graph, lambda: {f.spec.name: f.stats() for f in feeds})
    try:
        server = GraphServer(host, port, graph, collector, token)
    except OSError as exc:
        raise UserError(f"cannot listen on {ns.listen}: {exc.strerror}") from None

    def ready(started: list[Feed]) -> None:
        where = f"http://{'[' + host + ']' if ':' in host else host}:{server.address[1]}/"
        sys.stderr.write(f"podsight: serving the traffic graph at {where} "
                         f"({', '.join(f.spec.name for f in started)}; Ctrl-C to stop)\n")
        sys.stderr.flush()

    try:
        server.start()
        feed(ns, graph, ready=ready, collector=feeds.extend)
    finally:
        server.close()
    return 0


__all__ = ["feed", "register", "run", "trace_into"]
