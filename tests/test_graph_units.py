"""The traffic graph's aggregation and its renderings, without a kernel (no root)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from podsight.analysis.graph import (
    ConnectFailure,
    Connection,
    Graph,
    Query,
    TlsHello,
    data,
    fields,
    select,
)
from podsight.cli.graph import render
from podsight.identity.endpoint import Endpoint, PodInfo
from podsight.outputs.http import BadQuery, parse_query
from podsight.outputs.prometheus import GraphCollector, SourceStats, exposition, registry

S = 10**9
WEB = Endpoint.for_pod("10.0.0.3", PodInfo("shop", "web-7d9-abc", workload_kind="Deployment",
                                          workload_name="web"))
CLIENT = Endpoint.for_pod("10.0.0.2", PodInfo("shop", "front-1", workload_kind="Deployment",
                                             workload_name="front"))
OUTSIDE = Endpoint.raw("203.0.113.10")


def conn(key, local, remote, role, *, open=False, start=0, ts=S, sent=0, received=0,
         lport=40000, rport=8080):
    return Connection((key,), local, remote, lport, rport, role, open, start, ts, sent, received)


def test_each_connection_once_from_its_client_and_open_ones_by_delta():
    g = Graph(persistent_ns=10 * S)
    g.add([conn(1, CLIENT, WEB, "client", sent=100, received=2000),
           # the same connection from its server's side: not counted again
           conn(2, WEB, CLIENT, "server", sent=2000, received=100, lport=8080, rport=40000),
           # an open one, read twice, then closed after 12 s (persistent)
           conn(3, CLIENT, WEB, "client", open=True, ts=2 * S, sent=10, received=20),
           conn(3, CLIENT, WEB, "client", open=True, ts=5 * S, sent=30, received=50),
           conn(3, CLIENT, WEB, "client", ts=12 * S, sent=31, received=55)])
    (e,) = g.snapshot()
    assert (e.source.id, e.target.id, e.port) == ("w/shop/front", "w/shop/web", 8080)
    assert (e.opened, e.closed, e.active, e.persistent, e.short) == (2, 2, 0, 1, 1)
    assert (e.bytes_sent, e.bytes_received) == (131, 2055)
    assert e.duration_max == 12.0 and sum(e.buckets) == 2


def test_a_client_outside_the_cluster_is_counted_from_the_server():
    g = Graph()
    g.add([conn(1, WEB, OUTSIDE, "server", sent=500, received=40, lport=8080, rport=5555)])
    (e,) = g.snapshot()
    assert (e.source.id, e.target.id, e.port) == ("x/203.0.113.10", "w/shop/web", 8080)
    assert (e.bytes_sent, e.bytes_received) == (40, 500)


def test_external_peers_named_by_tls_or_network_when_read():
    g = Graph(aggregate_cidr=24)
    g.add([conn(1, CLIENT, OUTSIDE, "client", rport=443, sent=1, received=2),
           conn(2, CLIENT, Endpoint.raw("203.0.113.11"), "client", rport=443, sent=1),
           conn(3, CLIENT, Endpoint.raw("198.51.100.7"), "client", rport=443)])
    assert {e.target.id for e in g.snapshot()} == {"x/203.0.113.0/24", "x/198.51.100.0/24"}
    # The hello comes after the close: the edge is named by it all the same.
    g.add([TlsHello("203.0.113.10", 443, "shop.example.test", "TLS 1.3", "h2", "", 0)])
    names = {e.target.id: e.opened for e in g.snapshot()}
    assert names == {"x/shop.example.test": 1, "x/203.0.113.0/24": 1, "x/198.51.100.0/24": 1}


def test_failures_queries_and_arcs():
    g = Graph()
    g.add([conn(1, CLIENT, WEB, "client", sent=5),
           ConnectFailure(CLIENT, WEB, 8080, "refused", S),
           ConnectFailure(CLIENT, WEB, 9999, "timeout", S)])
    edges = g.snapshot()
    assert {e.port: dict(e.failures) for e in edges} == {8080: {"refused": 1},
                                                          9999: {"timeout": 1}}
    for stats in ("connection", "bytes", "duration"):
        out = data(edges, Query(stats=stats))
        for node in out["nodes"]:
            arcs = [v for k, v in node.items() if k.startswith("arc__")]
            assert abs(sum(arcs) - 1) < 1e-9
        names = {f["field_name"] for f in fields(stats)["nodes_fields"]}
        assert {k for n in out["nodes"] for k in n} <= names
    assert select(edges, parse_query("include=web&exclude=front")) == []
    assert len(select(edges, parse_query("namespace=shop"))) == 2
    assert select(edges, parse_query("namespace=other")) == []
    assert select(edges, parse_query("from=9999999999999")) == []
    for bad in ("stats-type=x", "include=(", "from=yesterday"):
        with pytest.raises(BadQuery):
            parse_query(bad)


def test_metrics_are_valid_and_carry_no_port_of_a_client(tmp_path):
    g = Graph()
    g.add([conn(i, CLIENT, WEB, "client", lport=30000 + i, sent=1) for i in range(500)])
    body = exposition(registry(GraphCollector(g, dict)))
    check = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    text = body.decode()
    assert "30001" not in text and "10.0.0.2" not in text
    assert re.search(r'podsight_tcp_connections_total\{[^}]*port="8080"[^}]*\} 500.0', text)


def test_dot_and_mermaid(tmp_path):
    g = Graph()
    g.add([conn(1, CLIENT, WEB, "client", sent=5), ConnectFailure(CLIENT, WEB, 81, "refused", S)])
    out = data(g.snapshot(), Query())
    dot = render(out, "dot")
    assert '"w/shop/front" -> "w/shop/web"' in dot and 'color="red"' in dot
    mermaid = render(out, "mermaid")
    assert mermaid.startswith("graph LR") and "-->|" in mermaid
    assert json.loads(render(out, "json")) == out


def test_the_dashboard_asks_for_metrics_that_exist():
    root = Path(__file__).resolve().parent.parent
    dash = root / "deploy/grafana/dashboards/podsight-traffic.json"
    exprs = [t["expr"] for p in json.loads(dash.read_text())["panels"]
             for t in p["targets"] if "expr" in t]
    g = Graph()
    g.add([conn(1, CLIENT, WEB, "client"), ConnectFailure(CLIENT, WEB, 81, "refused", S)])
    sources = {"tcplife": SourceStats(records=1, lost={"ringbuf": 0})}
    text = exposition(registry(GraphCollector(g, lambda: sources))).decode()
    for expr in exprs:
        for name in re.findall(r"podsight_[a-z_]+", expr):
            family = name.removesuffix("_total").removesuffix("_bucket")
            assert any(f"# TYPE {n} " in text for n in (name, family)), name


def test_flow_bytes_drops_and_dns_join_the_edges_connections_made():
    from podsight.analysis.graph import DnsResponse, Drop, FlowBytes

    g = Graph()
    g.add([conn(1, CLIENT, WEB, "client", sent=5),
           # both directions of the flow land on the client -> server edge
           FlowBytes(CLIENT, WEB, 40000, 8080, 300, 3, S),
           FlowBytes(WEB, CLIENT, 8080, 40000, 700, 2, S),
           Drop(CLIENT, WEB, 40000, 8080, "NETFILTER_DROP", 4, S),
           # no connection seen: the lower port is the server's
           FlowBytes(CLIENT, OUTSIDE, 53124, 53, 90, 1, S),
           DnsResponse(CLIENT, "NOERROR", S), DnsResponse(CLIENT, "NXDOMAIN", S),
           # one answer seen before and after a Service's DNAT: counted once
           DnsResponse(CLIENT, "NXDOMAIN", S, ("10.0.0.2", 5353, 7)),
           DnsResponse(CLIENT, "NXDOMAIN", S, ("10.0.0.2", 5353, 7))])
    by_port = {e.port: e for e in g.snapshot()}
    assert set(by_port) == {8080, 53}
    assert by_port[8080].flow_bytes == 1000 and by_port[8080].drops == {"NETFILTER_DROP": 4}
    assert by_port[53].target.id == "x/203.0.113.10" and by_port[53].flow_bytes == 90
    text = exposition(registry(GraphCollector(g, dict))).decode()
    assert re.search(r'podsight_drops_total\{[^}]*reason="NETFILTER_DROP"[^}]*\} 4.0', text)
    assert re.search(r'podsight_flow_bytes_total\{[^}]*port="8080"[^}]*\} 1000.0', text)
    assert re.search(r'podsight_dns_responses_total\{[^}]*rcode="NXDOMAIN"[^}]*\} 2.0', text)
    edge = next(e for e in data(g.snapshot(), Query())["edges"] if e["detail__port"] == 8080)
    assert edge["detail__dropped"] == 4


def test_tcplife_failed_connects_become_failures_of_their_edge():
    """tcplife's failed-connect records (``--failed-connects``, what serve uses instead of
    tcpconnect): named from the socket error in bulk decoding, failures in the graph, from
    the ring and from recorded JSON alike."""
    import errno

    import numpy as np

    from podsight.gadgets.tcplife.graph import observe, observe_recorded
    from podsight.gadgets.tcplife.tcplife import CONN_DTYPE, F_FAILED, F_START_SEEN, decode
    from podsight.net.addresses import AddressFormatter

    raw = np.zeros(4, CONN_DTYPE)
    raw["family"] = 2
    raw["role"] = 1
    raw["flags"] = [F_FAILED | F_START_SEEN] * 3 + [0]
    raw["err"] = [errno.ECONNREFUSED, errno.EHOSTUNREACH, 0, 0]
    raw["sport"] = [40000, 40001, 40002, 40003]
    raw["dport"] = 8080
    raw["srtt_us"][3] = 80
    raw["saddr"][:] = [bytes([10, 0, 0, 2]) + bytes(12)] * 4
    raw["daddr"][:] = [bytes([10, 0, 0, 3]) + bytes(12)] * 4
    recs = decode(raw, AddressFormatter())
    assert [r.state for r in recs] == ["refused", "unreachable", "aborted", "closed"]
    assert [r.rtt_us for r in recs] == [0, 0, 0, 10]
    obs = observe(recs)
    assert [type(o) for o in obs] == [ConnectFailure] * 3 + [Connection]
    g = Graph()
    g.add(obs)
    (edge,) = g.snapshot()
    assert dict(edge.failures) == {"refused": 1, "unreachable": 1, "aborted": 1}
    row = {"time": "2026-01-01T00:00:01.000000000Z", "duration_ns": 5, "role": "client",
           "state": "timeout", "saddr": "10.0.0.2", "daddr": "10.0.0.3", "sport": 40000,
           "dport": 8080, "bytes_sent": 0, "bytes_received": 0, "cookie": 7,
           "src": {"kind": "raw"}, "dst": {"kind": "raw"}}
    failure = observe_recorded(row)
    assert isinstance(failure, ConnectFailure) and failure.result == "timeout"


def test_serve_runs_no_gadget_whose_graph_feeds_another_covers():
    """tcplife feeds connections and failed connects; tcpconnect only failed connects:
    serve runs tcplife alone (tcpconnect's programs would run on the same state changes)."""
    import argparse

    from podsight.cli.serve import graph_specs

    names = [s.name for s in graph_specs(argparse.Namespace(tls=False, flows=False))]
    assert "tcplife" in names and "tcpconnect" not in names


def test_flow_records_read_back_as_flows_observations():
    """flows' recorded adapter (kubectl podsight serve --flows/--tls, graph --from): a JSON
    line and a SQLite row of the same flow give the observations observe() gives, and a
    record of another gadget is not a flow record."""
    from podsight.analysis.graph import DnsResponse, Drop, FlowBytes, TlsHello
    from podsight.gadgets.flows.graph import observe_recorded

    line = {"start": "2026-01-01T00:00:01.000000000Z", "end": "2026-01-01T00:00:02.5Z",
            "saddr": "10.0.0.2", "daddr": "203.0.113.10", "sport": 40000, "dport": 443,
            "src": {"kind": "pod", "namespace": "default", "pod": "mypod"},
            "dst": {"kind": "raw"}, "bytes": 900, "packets": 7, "tcp_flags": ["SYN"],
            "drops": {"packets": 2, "reason": "NO_SOCKET"},
            "tls": {"sni": "shop.example.test", "offered": ["TLS 1.3"], "alpn": ["h2"],
                    "server": "203.0.113.10", "port": 443}}
    obs = observe_recorded(line)
    assert [type(o) for o in obs] == [FlowBytes, Drop, TlsHello]
    assert (obs[0].bytes, obs[0].packets, obs[0].ts_ns) == (900, 7, 1767225602_500000000)
    assert obs[0].src.name == "mypod" and obs[1].reason == "NO_SOCKET"
    assert (obs[2].server_addr, obs[2].sni, obs[2].version, obs[2].alpn) == \
        ("203.0.113.10", "shop.example.test", "TLS 1.3", "h2")
    row = {"start_ns": 1, "end_ns": 2, "saddr": "10.0.0.3", "daddr": "10.96.0.53",
           "sport": 5353, "dport": 53, "src_kind": "pod", "src_namespace": "default",
           "src_name": "mypod", "dst_kind": "service", "bytes": 80, "packets": 1,
           "tcp_flags": None, "drop_packets": None, "dns_rcode": "NXDOMAIN", "dns_id": 9}
    obs = observe_recorded(row)
    assert [type(o) for o in obs] == [FlowBytes, DnsResponse]
    assert obs[1].client.name == "mypod" and obs[1].key == ("10.0.0.3", 5353, 9)
    assert observe_recorded({"role": "client", "bytes_sent": 1, "state": "closed"}) is None
    g = Graph()
    g.add(observe_recorded(line))
    assert {e.target.id for e in g.snapshot()} == {"x/shop.example.test"}
