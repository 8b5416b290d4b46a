"""Every gadget through agents: lab pods as simulated nodes (each agent watches the network
namespaces of some pods), merged by kubectl-podsight, checked with the same oracles as the
local command (tshark/capinfos, sqlite3, the real HTTP endpoints) and against the local
command's own output on the same traffic."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clusterrun import ENV, Agent, agents, client, free_port, json_lines, wait_for
from conns import Server, exchange
from packetsrun import fields, tshark
from tracing import connect

from podsight.cli.serve import graph_specs
from podsight.lab import Lab

PORT_WEB, PORT_BACKEND = 7070, 7071
EDGES = {"p/default/mypod->p/default/web:7070", "p/shop/frontend->p/shop/backend:7071"}


def _nodes(lab: Lab) -> dict[str, str]:
    """node-a: mypod (the client of web); node-b: web; node-c: frontend and backend."""
    return {"node-a": lab.pod("mypod").netns, "node-b": lab.pod("web").netns,
            "node-c": f"{lab.pod('frontend').netns},{lab.pod('backend').netns}"}


def _addrs(running: list[Agent]) -> list[str]:
    return [w for a in running for w in ("--agent-addr", a.addr)]


def _traffic(lab: Lab, count: int = 3) -> None:
    exchange(lab, "mypod", lab.pod("web").ipv4, PORT_WEB, req=100, resp=2000, count=count)
    exchange(lab, "frontend", lab.pod("backend").ipv4, PORT_BACKEND, req=200, resp=3000,
             count=count)


def _servers(lab: Lab) -> Iterator[None]:
    with Server(lab, "web", PORT_WEB), Server(lab, "backend", PORT_BACKEND):
        yield


servers = pytest.fixture(_servers)


def _local(*argv: str, **kw: Any) -> subprocess.Popen[str]:
    import sys

    return subprocess.Popen([sys.executable, "-m", "podsight.cli.main", *argv], env=ENV,
                            text=True, **kw)



def _tracing(err: Path, n: int) -> None:
    wait_for(lambda: err.read_text().count(": tracing") + err.read_text().count(": capturing")
             >= n, f"{n} nodes started", timeout=60)


# -- packets: one merged pcapng -------------------------------------------------------------

def test_packets_merge_into_one_pcapng(lab: Lab, tmp_path: Path, servers: None) -> None:
    out, err = tmp_path / "merged.pcapng", tmp_path / "client.err"
    nodes = _nodes(lab)
    with agents(nodes, tmp_path) as running:
        proc = client(*_addrs(running), "packets", "-w", str(out), stderr=err.open("w"))
        _tracing(err, 3)
        _traffic(lab)

        def per_node() -> set[str]:
            try:
                names = fields(out, "frame.interface_name")
            except (AssertionError, subprocess.CalledProcessError):
                return set()
            return {row[0].split("/", 1)[0] for row in names if row and row[0]}
        wait_for(lambda: per_node() >= set(nodes), "packets from every node in the file")
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the file must be complete and valid
        assert proc.wait(60) == 0, err.read_text()
    info = subprocess.run(["capinfos", "-M", str(out)], capture_output=True, text=True)
    assert info.returncode == 0, info.stderr
    assert "pcapng" in info.stdout
    # One interface block per (node, interface): names and descriptions carry the node.
    idbs = tshark(out, "-T", "fields", "-e", "frame.interface_id", "-e",
                  "frame.interface_name", "-e", "frame.interface_description")
    seen: dict[str, tuple[str, str]] = {}
    for line in idbs.splitlines():
        iface, name, desc = [*line.split("\t"), "", ""][:3]
        assert seen.setdefault(iface, (name, desc)) == (name, desc), "one IDB, one identity"
    names = {name for name, _ in seen.values()}
    assert len(names) == len(seen), f"one interface block per node and interface: {seen}"
    for name, desc in seen.values():
        node = name.split("/", 1)[0]
        assert node in nodes and f"node {node}" in desc, (name, desc)
    # The pod's identity travels too: each pod's interface, named by its node's agent.
    by_name = dict(seen.values())
    for node, pod in (("node-a", "default/mypod"), ("node-b", "default/web"),
                      ("node-c", "shop/frontend"), ("node-c", "shop/backend")):
        desc = by_name.get(f"{node}/p/{pod}", "")
        assert f"k8s.podName={pod.split('/')[1]}" in desc, (node, pod, seen)
    # Both ends of mypod -> web:7070 were captured, once on each node's interface.
    ports = fields(out, "frame.interface_name", "tcp.dstport", display="tcp.dstport == 7070")
    assert {row[0].split("/", 1)[0] for row in ports} >= {"node-a", "node-b"}
    text = err.read_text()
    assert "from 3 of 3 nodes, 0 lost" in text, text


def test_packets_max_packets_stops_the_cluster_run(lab: Lab, tmp_path: Path,
                                                  servers: None) -> None:
    """--max-packets is the client's: once the merged file holds N packets the run stops
    (every agent's gadget too) instead of merging what nothing would write."""
    out, err = tmp_path / "first.pcapng", tmp_path / "client.err"
    with agents(_nodes(lab), tmp_path) as running:
        proc = client(*_addrs(running), "packets", "-w", str(out), "--max-packets", "5",
                      stderr=err.open("w"))
        _tracing(err, 3)
        _traffic(lab)
        assert proc.wait(60) == 0, err.read_text()
    info = subprocess.run(["capinfos", "-c", "-M", str(out)], capture_output=True, text=True)
    assert info.returncode == 0 and "Number of packets:   5" in info.stdout, info.stdout


def test_max_bytes_stops_the_cluster_run(lab: Lab, tmp_path: Path, servers: None) -> None:
    out, err, summary = tmp_path / "c.json", tmp_path / "client.err", tmp_path / "s.json"
    with agents(_nodes(lab), tmp_path) as running:
        proc = client(*_addrs(running), "trace", "tcplife", "--json", str(out),
                      "--max-bytes", "2K", "--summary", str(summary),
                      stdout=subprocess.DEVNULL, stderr=err.open("w"))
        _tracing(err, 3)
        for _ in range(10):
            if proc.poll() is not None:
                break
            _traffic(lab)
        assert proc.wait(60) == 0, err.read_text()
    assert out.stat().st_size >= 2048
    assert out.read_text().endswith("\n")  # the limit stopped it between whole lines
    assert all(r["node"] in _nodes(lab) for r in json_lines(out))  # valid JSON
    assert json.loads(summary.read_text())["stopped_by"] == "--max-bytes reached"


# -- tcplife and flows: JSON lines, the gadget's table and SQLite ----------------------------

def test_tcplife_json_table_and_sqlite_like_the_local_command(lab: Lab, tmp_path: Path,
                                                             servers: None) -> None:
    nodes = _nodes(lab)
    table, err = tmp_path / "table.txt", tmp_path / "client.err"
    db, local_db = tmp_path / "cluster.db", tmp_path / "local.db"
    with agents(nodes, tmp_path) as running:
        proc = client(*_addrs(running), "trace", "tcplife", "--sqlite", str(db),
                      "--json", str(tmp_path / "all.json"), stdout=table.open("w"),
                      stderr=err.open("w"))
        _tracing(err, 3)
        _traffic(lab)

        def ours() -> list[dict[str, Any]]:
            return [r for r in json_lines(tmp_path / "all.json")
                    if r.get("dport") in (PORT_WEB, PORT_BACKEND)
                    or r.get("sport") in (PORT_WEB, PORT_BACKEND)]
        # Client and server side of mypod -> web (node-a, node-b); both sides of
        # frontend -> backend on node-c: 3 connections each.
        wait_for(lambda: len(ours()) >= 12, "tcplife records from every node")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, err.read_text()
    by_node: dict[str, int] = {}
    for r in json_lines(tmp_path / "all.json"):
        if r.get("dport") == PORT_WEB or r.get("sport") == PORT_WEB:
            by_node[r["node"]] = by_node.get(r["node"], 0) + 1
    assert by_node.get("node-a") == 3 and by_node.get("node-b") == 3, by_node

    # The local command on the same kind of traffic: its table header and SQLite columns.
    local = _local("trace", "tcplife", "--netns", lab.pod("mypod").netns, "--sqlite",
                   str(local_db), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: local_db.exists(), "local run started")
    time.sleep(0.5)
    exchange(lab, "mypod", lab.pod("web").ipv4, PORT_WEB, req=100, resp=2000, count=1)
    time.sleep(1.5)
    local.send_signal(signal.SIGINT)
    local_out, local_err = local.communicate(timeout=60)
    assert local.returncode == 0, local_err
    local_header = local_out.splitlines()[0].split()
    lines = table.read_text().splitlines()
    assert lines[0].split() == ["NODE", *local_header], (lines[0], local_header)
    assert any(line.startswith("node-b ") and "7070" in line for line in lines[1:])

    def columns(path: Path, table_name: str) -> list[str]:
        with sqlite3.connect(path) as conn:
            return [r[1] for r in conn.execute(f'pragma table_info("{table_name}")')]
    mine, theirs = columns(db, "tcplife"), columns(local_db, "tcplife")
    assert mine == ["id", "node", *theirs[1:]], (mine, theirs)
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master "
                                             "where type = 'table'")}
        assert {"tcplife", "columns", "capture", "nodes"} <= tables
        rows = conn.execute("select node, count(*) from tcplife where dport = 7070 or "
                            "sport = 7070 group by node order by node").fetchall()
        assert rows == [("node-a", 3), ("node-b", 3)], rows
        nodes_rows = conn.execute("select node, state, lost_gaps, duplicates from nodes "
                                  "order by node").fetchall()
        assert nodes_rows == [(n, "done", 0, 0) for n in sorted(nodes)], nodes_rows
    # The cluster file reads back like the local one: podsight graph --from reads it.
    graph = subprocess.run([sys.executable, "-m", "podsight.cli.main",
                            "graph", "--from", str(db)], env=ENV, capture_output=True,
                           text=True, timeout=60)
    assert graph.returncode == 0, graph.stderr
    ids = {e["id"] for e in json.loads(graph.stdout)["edges"]}
    assert ids >= EDGES, ids


def test_flows_through_agents(lab: Lab, tmp_path: Path, servers: None) -> None:
    nodes = _nodes(lab)
    out, err = tmp_path / "flows.json", tmp_path / "client.err"
    with agents(nodes, tmp_path) as running:
        proc = client(*_addrs(running), "flows", "-o", "json", "--interval", "0.5",
                      stdout=out.open("w"), stderr=err.open("w"))
        _tracing(err, 3)
        _traffic(lab)

        def ports() -> set[tuple[str, int]]:
            return {(r["node"], int(r.get("dport", 0))) for r in json_lines(out)}
        wait_for(lambda: {("node-a", PORT_WEB), ("node-b", PORT_WEB),
                          ("node-c", PORT_BACKEND)} <= ports(), "flows from every node")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, err.read_text()
    assert "from 3 of 3 nodes, 0 lost" in err.read_text(), err.read_text()


# -- graph and advise: the merged stream against the local command ----------------------------

def _edges(graph: dict[str, Any]) -> set[tuple[str, int]]:
    return {(e["id"], e["detail__connections"]) for e in graph["edges"] if e["id"] in EDGES}


def _both(lab: Lab, tmp_path: Path, cluster_argv: list[str], local_argv: list[str],
          seconds: int, local_gadgets: int) -> tuple[str, str]:
    """The cluster command and then the local one (once its ``local_gadgets`` gadgets are
    attached), each with the same traffic during its run; their stdout."""
    nodes = _nodes(lab)
    outs = []
    with agents(nodes, tmp_path) as running:
        err = tmp_path / "client.err"
        proc = client(*_addrs(running), *cluster_argv, "--timeout", str(seconds),
                      stdout=subprocess.PIPE, stderr=err.open("w"))
        _tracing(err, 3)
        _traffic(lab)
        out, _ = proc.communicate(timeout=seconds + 60)
        assert proc.returncode == 0, err.read_text()
        outs.append(out)
    netns = ",".join(nodes.values())
    err = tmp_path / "local.err"
    local = _local(*local_argv, "--timeout", str(seconds), "--netns", netns,
                   stdout=subprocess.PIPE, stderr=err.open("w"))
    wait_for(lambda: err.read_text().count("(Ctrl-C to stop)") >= local_gadgets,
             "the local run's gadgets attached", timeout=60)
    _traffic(lab)
    out, _ = local.communicate(timeout=seconds + 60)
    assert local.returncode == 0, err.read_text()
    outs.append(out)
    return outs[0], outs[1]


def test_graph_from_agents_equals_the_local_graph(lab: Lab, tmp_path: Path,
                                                  servers: None) -> None:
    cluster, local = _both(lab, tmp_path, ["graph", "-o", "json"], ["graph", "-o", "json"], 8,
                           local_gadgets=len(graph_specs()))  # tcplife (it feeds failures too)
    mine, theirs = _edges(json.loads(cluster)), _edges(json.loads(local))
    assert mine == theirs == {(e, 3) for e in EDGES}, (mine, theirs)


def test_advise_from_agents_equals_the_local_advice(lab: Lab, tmp_path: Path,
                                                    servers: None) -> None:
    argv = ["advise", "network-policy", "--gadget", "tcpconnect"]
    cluster, local = _both(lab, tmp_path, argv, argv, 8, local_gadgets=1)

    def policies(text: str) -> list[str]:
        # The comments say when each connection was seen: compare the policies' bodies.
        return sorted(d.strip() for d in "\n".join(
            line for line in text.splitlines() if not line.lstrip().startswith("#")
        ).split("---") if d.strip())
    mine, theirs = policies(cluster), policies(local)
    assert mine and mine == theirs, (cluster, local)
    assert "name: web" in cluster and "port: 7070" in cluster, cluster


# -- serve: the merged stream behind the real HTTP endpoints -----------------------------------

def test_serve_through_agents(lab: Lab, tmp_path: Path, servers: None) -> None:
    nodes = _nodes(lab)
    served = [s.name for s in graph_specs()]  # what the local serve runs (tcplife alone now)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    err = tmp_path / "client.err"
    with agents(nodes, tmp_path) as running:
        proc = client(*_addrs(running), "serve", "--listen", f"127.0.0.1:{port}",
                      "--persistent", "1s", "--open-every", "200ms", stderr=err.open("w"))
        wait_for(lambda: "serving the traffic graph at" in err.read_text(),
                 "every gadget attached on every node", timeout=90)
        _traffic(lab)
        refused = [connect(lab, "mypod", lab.pod("web").ipv4, 8099) for _ in range(3)]
        assert all(r["errno"] for r in refused)

        def get(path: str) -> bytes:
            with urllib.request.urlopen(base + path, timeout=30) as resp:
                assert resp.status == 200
                body: bytes = resp.read()
                return body

        def edges() -> dict[str, Any]:
            data = json.loads(get("/api/graph/data"))
            return {e["id"]: e for e in data["edges"]}
        wait_for(lambda: all(e in edges() and edges()[e]["detail__connections"] == 3
                             for e in EDGES), "edges of several nodes, 3 connections each")
        # Failed connects come from the gadgets serve runs, as the local serve has them.
        wait_for(lambda: edges().get("p/default/mypod->p/default/web:8099", {}).get(
            "detail__failed") == 3, "3 refused connects on their edge")
        metrics = get("/metrics").decode()
        check = subprocess.run(["promtool", "check", "metrics"], input=metrics.encode(),
                               capture_output=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        for labels in ({'workload="mypod"', 'peer_workload="web"', 'port="7070"'},
                       {'workload="frontend"', 'peer_workload="backend"', 'port="7071"'}):
            assert any(line.startswith("podsight_tcp_connections_total{")
                       and line.endswith("} 3.0") and all(x in line for x in labels)
                       for line in metrics.splitlines()), metrics
        for node in nodes:  # one self-metrics source per node and gadget
            for gadget in served:
                assert f'gadget="{node}/{gadget}"' in metrics, metrics
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, err.read_text()
    assert err.read_text().count(": ok: ") == len(nodes) * len(served), err.read_text()


def test_serve_with_an_unreachable_node_serves_the_others(lab: Lab, tmp_path: Path) -> None:
    port = free_port()
    err = tmp_path / "client.err"
    with agents({"node-a": lab.pod("mypod").netns}, tmp_path) as running:
        proc = client(*_addrs(running), "--agent-addr", f"127.0.0.1:{free_port()}", "serve",
                      "--listen", f"127.0.0.1:{port}", stderr=err.open("w"))
        wait_for(lambda: "serving the traffic graph at" in err.read_text(),
                 "serving with one node of two", timeout=90)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            assert r.status == 200 and b'gadget="node-a/tcplife"' in r.read()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, err.read_text()
    assert "cannot connect" in err.read_text(), err.read_text()


def test_bad_columns_on_every_node_is_one_line(lab: Lab, tmp_path: Path) -> None:
    """Only the agents know the gadget's columns: every node refusing them is bad input,
    said once (exit 2), not once per node."""
    with agents({"node-a": lab.pod("mypod").netns, "node-b": lab.pod("web").netns},
                tmp_path) as running:
        proc = client(*_addrs(running), "trace", "tcpconnect", "-o", "columns=pid,nosuch",
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=90)
    assert proc.returncode == 2 and err.count("\n") == 1 and "nosuch" in err, err
    assert "Traceback" not in err and not out
