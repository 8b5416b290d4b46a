"""The traffic graph and podsight's own counters in the Prometheus exposition format.

A prometheus_client collector reads the graph when scraped. Labels are bounded by
construction: ``namespace``, ``workload``, ``kind`` of both ends and the destination
``port`` (a well-known service port), never a source port or a pod IP; external peers
are their TLS name, their address, or the ``--aggregate-cidr`` network of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry

from podsight.analysis.graph import DURATION_BUCKETS, Edge, Graph

LABELS = ["namespace", "workload", "kind", "peer_namespace", "peer_workload", "peer_kind",
          "port"]


@dataclass
class SourceStats:
    """What one gadget feeding the graph has done so far (self-metrics)."""

    records: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    fill: dict[str, float] = field(default_factory=dict)  # map name -> used / capacity


def _labels(e: Edge) -> list[str]:
    s, t = e.source, e.target
    return [s.namespace, s.title, s.kind, t.namespace, t.title, t.kind, str(e.port)]


class GraphCollector:
    """Collects the graph's metrics and the self-metrics at scrape time."""

    def __init__(self, graph: Graph, sources: Callable[[], Mapping[str, SourceStats]]) -> None:
        self.graph = graph
        self.sources = sources
        self.last_scrape_seconds = 0.0
        self.scrapes = 0

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        edges = self.graph.snapshot()
        opened = CounterMetricFamily("podsight_tcp_connections",
                                     "TCP connections opened, per source, destination and "
                                     "destination port", labels=LABELS)
        active = GaugeMetricFamily("podsight_tcp_connections_open",
                                   "TCP connections open now", labels=LABELS)
        persistent = CounterMetricFamily("podsight_tcp_persistent_connections",
                                         "TCP connections that stayed open longer than "
                                         "--persistent", labels=LABELS)
        sent = CounterMetricFamily("podsight_tcp_bytes",
                                   "TCP payload bytes, direction=sent: client to server, "
                                   "received: server to client", labels=[*LABELS, "direction"])
        failures = CounterMetricFamily("podsight_tcp_connect_failures",
                                       "TCP connects that failed, per result",
                                       labels=[*LABELS, "result"])
        duration = HistogramMetricFamily("podsight_tcp_connection_duration_seconds",
                                         "How long closed TCP connections lived",
                                         labels=LABELS)
        for e in edges:
            labels = _labels(e)
            opened.add_metric(labels, e.opened)
            active.add_metric(labels, e.active)
            persistent.add_metric(labels, e.persistent)
            sent.add_metric([*labels, "sent"], e.bytes_sent)
            sent.add_metric([*labels, "received"], e.bytes_received)
            for result, n in sorted(e.failures.items()):
                failures.add_metric([*labels, result], n)
            cumulative, buckets = 0, []
            for le, n in zip(DURATION_BUCKETS, e.buckets, strict=True):
                cumulative += n
                buckets.append((_le(le), cumulative))
            buckets.append(("+Inf", e.closed))
            duration.add_metric(labels, buckets, e.duration_sum)
        flow = CounterMetricFamily("podsight_flow_bytes",
                                   "bytes on the wire (headers included) of the flows of "
                                   "each edge, both directions (serve --flows)",
                                   labels=LABELS)
        drops = CounterMetricFamily("podsight_drops",
                                    "packets the kernel dropped, per edge and drop reason "
                                    "(serve --flows)", labels=[*LABELS, "reason"])
        for e in edges:
            if e.flow_bytes:
                flow.add_metric(_labels(e), e.flow_bytes)
            for reason, n in sorted(e.drops.items()):
                drops.add_metric([*_labels(e), reason], n)
        dns = CounterMetricFamily("podsight_dns_responses",
                                  "DNS answers to each client, per response code "
                                  "(serve --flows)",
                                  labels=["namespace", "workload", "kind", "rcode"])
        for node, counts in sorted(self.graph.dns_snapshot().items(), key=lambda x: x[0].id):
            for rcode, n in sorted(counts.items()):
                dns.add_metric([node.namespace, node.title, node.kind, rcode], n)
        yield from (opened, active, persistent, sent, failures, duration, flow, drops, dns)
        yield from self._self_metrics(len(edges))
        self.scrapes += 1
        self.last_scrape_seconds = time.perf_counter() - started

    def _self_metrics(self, edges: int) -> Iterator[Metric]:
        events = CounterMetricFamily("podsight_events", "records each gadget delivered",
                                     labels=["gadget"])
        lost = CounterMetricFamily("podsight_lost_events",
                                   "events the kernel saw that podsight could not deliver, "
                                   "per gadget and cause", labels=["gadget", "cause"])
        fill = GaugeMetricFamily("podsight_map_fill_ratio",
                                 "how full each bounded table is (1: full)",
                                 labels=["gadget", "map"])
        for name, stats in sorted(self.sources().items()):
            events.add_metric([name], stats.records)
            for cause, n in sorted(stats.lost.items()):
                lost.add_metric([name, cause], n)
            for table, ratio in sorted(stats.fill.items()):
                fill.add_metric([name, table], ratio)
        yield from (events, lost, fill)
        yield GaugeMetricFamily("podsight_graph_edges", "edges in the traffic graph",
                                value=edges)
        yield GaugeMetricFamily("podsight_graph_open_connections_tracked",
                                "open connections followed between reads",
                                value=self.graph.open_connections)
        yield GaugeMetricFamily("podsight_scrape_duration_seconds",
                                "how long the previous scrape of /metrics took",
                                value=self.last_scrape_seconds)


def _le(value: float) -> str:
    return f"{value:g}" if value < 1e6 else repr(value)


def registry(collector: GraphCollector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    from prometheus_client.exposition import generate_latest

    return bytes(generate_latest(reg))


__all__ = ["GraphCollector", "SourceStats", "exposition", "registry"]
