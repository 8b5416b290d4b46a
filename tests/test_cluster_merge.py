"""Cluster mode on simulated nodes: three agents, each its own node and network namespace,
merged by kubectl-podsight through --agent-addr. Real kernel, real sockets, real gRPC."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clusterrun import (
    agents,
    bpftool_links,
    build_connstorm,
    client,
    connects,
    held_links,
    json_lines,
    namespaces,
    storm,
    wait_for,
)

from podsight.lab import Lab

N = 1500
NODES = {"node-a": "ps-cl-a", "node-b": "ps-cl-b", "node-c": "ps-cl-c"}


@contextlib.contextmanager
def _three_tracing(tmp_path: Path, *extra: str) -> Iterator[tuple[list[Any], Any, Path, Path]]:
    """Three agents, each its own node and namespace, and the client tracing connects on
    all of them (``-o json`` to a file, plus ``extra``): (agents, client, out, err)."""
    out, err = tmp_path / "merged.json", tmp_path / "client.err"
    with namespaces(*NODES.values()), agents(NODES, tmp_path) as running:
        proc = client(*[w for a in running for w in ("--agent-addr", a.addr)],
                      "trace", "tcpconnect", "-o", "json", *extra,
                      stdout=out.open("w"), stderr=err.open("w"))
        wait_for(lambda: err.read_text().count("tracing TCP connects") == 3, "3 nodes tracing")
        yield running, proc, out, err



def _ours(rows: list[dict[str, object]], ports: dict[str, int]) -> dict[str, list[object]]:
    out: dict[str, list[object]] = {}
    for r in rows:
        node = str(r["node"])
        if r.get("dport") == ports.get(node):
            out.setdefault(node, []).append(r)
    return out


def test_three_agents_merge_without_loss_or_duplicates(lab: Lab, tmp_path: Path) -> None:
    nodes = NODES
    with _three_tracing(tmp_path) as (running, proc, out, err):
        ports = {node: connects(ns, N) for node, ns in nodes.items()}
        wait_for(lambda: all(len(v) == N for v in _ours(json_lines(out), ports).values())
                 and len(_ours(json_lines(out), ports)) == 3, f"{N} connects from each node")
        links = held_links({a.proc.pid for a in running})
        assert links and links <= bpftool_links(), "the agents' gadgets hold links (bpftool)"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, err.read_text()
        # Ctrl-C on the client stopped every agent's gadget: bpftool lists none of their links.
        wait_for(lambda: not links & bpftool_links(), "agents' BPF links gone")
        assert all(a.proc.poll() is None for a in running), "agents keep serving"
    rows = json_lines(out)
    mine = _ours(rows, ports)
    for node, records in mine.items():
        keys = Counter((r["sport"], r["time"]) for r in records)  # type: ignore[index]
        assert len(records) == N and max(keys.values()) == 1, node
    # Each node's records come from its own namespace only.
    assert {r["node"] for r in rows} <= set(nodes)
    # Interleaved by time across nodes (the merge's order), not node after node.
    times = [r["time"] for r in rows]
    assert times == sorted(times)
    text = err.read_text()
    for node in nodes:
        assert f"node {node} (" in text and "0 lost on the way, 0 duplicates dropped" in text
    assert "from 3 of 3 nodes, 0 lost" in text, text


def test_paced_storms_with_refused_connects_merge_exactly(lab: Lab, tmp_path: Path) -> None:
    """bench/cluster.py's load, small: each node's connstorm paced (-r) with a share of its
    connects refused (-x). Every attempt it made is merged once, refused ones as
    ``refused``: the bench's offered/made/merged counts rest on this."""
    exe = build_connstorm(tmp_path)
    rate, seconds = 4000, 2.0
    nodes = NODES
    with _three_tracing(tmp_path) as (_agents, proc, out, err):
        storms = {n: storm(exe, ns, "-t", "2", "-r", str(rate), "-x", "40", "-d", str(seconds))
                  for n, ns in nodes.items()}
        made = {n: json.loads(s.communicate()[0]) for n, s in storms.items()}
        for r in made.values():
            assert r["errors"] == 0 and r["connects"] and r["refused"], r
            # Paced: never ahead of the rate by more than a batch (a millisecond's worth
            # per thread, at most one attempt per thread past the stop).
            assert r["connects"] + r["refused"] <= rate * r["seconds"] + 2 * (rate // 2000 + 1)
            # 40% of the attempts, spread evenly: at most one off per thread.
            assert abs(r["refused"] - 0.4 * (r["connects"] + r["refused"])) <= 2
        total = sum(r["connects"] + r["refused"] for r in made.values())
        wait_for(lambda: len(json_lines(out)) >= total, f"{total} records merged")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, err.read_text()
    rows = json_lines(out)
    for node, r in made.items():
        mine = [x for x in rows if x["node"] == node]
        results = Counter((x["dport"], x["result"]) for x in mine)
        assert results == {(r["port"], "ok"): r["connects"],
                           (r["closed_port"], "refused"): r["refused"]}, (node, results)
        assert len({(x["sport"], x["time"]) for x in mine}) == len(mine), node
    assert len(rows) == total
    text = err.read_text()
    assert text.count("0 lost on the way, 0 duplicates dropped") == 3, text
    assert "from 3 of 3 nodes, 0 lost" in text, text


def test_agent_killed_mid_stream_is_reported_and_others_go_on(lab: Lab, tmp_path: Path) -> None:
    nodes = NODES
    with _three_tracing(tmp_path, "--sqlite", str(tmp_path / "c.db")) as (running, proc, out, err):
        running[1].proc.kill()  # SIGKILL node-b's agent
        wait_for(lambda: "node node-b" in err.read_text() and "mid-stream" in err.read_text(),
                 "node-b reported")
        ports = {n: connects(nodes[n], 200) for n in ("node-a", "node-c")}
        wait_for(lambda: all(len(_ours(json_lines(out), ports).get(n, [])) == 200 for n in ports),
                 "the other nodes go on")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, err.read_text()
    text = err.read_text()
    assert "from 2 of 3 nodes" in text and "failed: node-b" in text, text
    db = subprocess.run(["sqlite3", str(tmp_path / "c.db"),
                         "select node, state from nodes order by node; "
                         "select value from capture where key = 'unreachable'"],
                        capture_output=True, text=True, check=True).stdout.split()
    assert db == ["node-a|done", "node-b|failed", "node-c|done", "node-b"], db


@pytest.mark.parametrize("addr,want", [
    ("nonsense", "use HOST:PORT"),
    ("127.0.0.1:99999", "use HOST:PORT"),
])
def test_bad_agent_addr_is_one_line(addr: str, want: str) -> None:
    proc = client("--agent-addr", addr, "trace", "tcpconnect", stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and err.count("\n") == 1 and want in err, err


def test_unreachable_agent_is_one_line_and_fails(tmp_path: Path) -> None:
    from clusterrun import free_port

    proc = client("--agent-addr", f"127.0.0.1:{free_port()}", "trace", "tcpconnect",
                  "--summary", str(tmp_path / "s.json"), stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "cannot connect" in err and "Traceback" not in err
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["nodes"][0]["state"] == "unreachable"


@pytest.mark.parametrize("argv,want", [
    (["--listen", "0.0.0.0:7750", "--auth", "none"], "loopback or the pod IP"),
    (["--listen", "198.51.100.7:7750", "--auth", "none"], "loopback or the pod IP"),
    (["--listen", "nohost"], "use HOST:PORT"),
])
def test_agent_refuses_other_addresses(argv: list[str], want: str) -> None:
    import sys

    from clusterrun import ENV

    p = subprocess.run([sys.executable, "-m", "podsight.cli.main", "agent", *argv], env=ENV,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and want in p.stderr, p.stderr


@pytest.mark.parametrize("argv,want", [
    (["trace", "tcpconnect", "--sqlite", "/tmp/x.db"], "--sqlite: names a file on the node"),
    (["trace", "tcpconnect", "--tui"], "--tui: outputs are written by the client"),
    (["packets", "-w", "/tmp/x.pcapng"], "-w: outputs are written by the client"),
    (["trace", "tcpconnect", "--no-such-flag"], "unrecognized arguments"),
    (["packets", "--tls-keylog", " "], "--tls-keylog needs a file name"),
    (["trace", "tcpconnect", "--kubeconfig", "/tmp/k"], "its own ServiceAccount"),
    (["packets", "--ring-size", "1M"], "the client's capture file's"),
])
def test_agent_refuses_output_files_and_bad_requests(tmp_path: Path, argv: list[str],
                                                     want: str) -> None:
    """Asked directly (the client strips output flags before it asks): one line, the
    gRPC status INVALID_ARGUMENT, nothing run."""
    import io

    from podsight.cluster.client import Outputs, run_cluster
    from podsight.cluster.endpoints import NodeEndpoint

    with agents({"node-a": None}, tmp_path) as running:
        err = io.StringIO()
        result = run_cluster([NodeEndpoint("node-a", "127.0.0.1", running[0].port)], argv,
                             Outputs(), err=err)
    node = result.nodes[0]
    assert node.state == "failed" and want in node.error, err.getvalue()
    assert "INVALID_ARGUMENT" in node.error


@pytest.mark.parametrize("argv,want", [
    (["--bogus", "trace", "tcpconnect"], "--bogus: not a kubectl-podsight flag"),
    (["--agent-addr"], "--agent-addr needs a value"),
    (["--agent-addr", "127.0.0.1:1"], "no command"),
    (["--agent-addr", "127.0.0.1:1", "serve", "--listen", "0.0.0.0:9999"],
     "serving beyond loopback needs --token-file"),
    (["--agent-addr", "127.0.0.1:1", "trace", "tcpconnect", "-o", "columns=,"],
     "needs at least one column name"),
])
def test_client_bad_input_is_one_line(argv: list[str], want: str) -> None:
    """Checked on the client before any node is asked: one line, exit 2."""
    proc = client(*argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and err.count("\n") == 1 and want in err, err


@pytest.mark.parametrize("argv,want", [
    (["--agent-addr", "127.0.0.1:1", "serve", "--listen", "0.0.0.0:9999"],
     "serving beyond loopback needs --token-file"),
    (["--agent-namespace", "x", "--agent-addr=127.0.0.1:1", "--discover", "trace",
      "tcpconnect", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_plugin_entry_point_finds_the_command_after_cluster_flags(argv: list[str],
                                                                  want: str) -> None:
    """``kubectl podsight --agent-addr HOST:PORT trace ...`` (kubectl runs the
    ``kubectl-podsight`` entry point): the command comes after the cluster flags and their
    values, and the plugin's own flags (--discover, --agent-namespace) are not passed to
    the client. Bad input is still one line, exit 2, before any cluster is asked."""
    import sys

    from clusterrun import ENV

    proc = subprocess.run([sys.executable, "-m", "podsight.cluster.cli", *argv], env=ENV,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and want in proc.stderr, \
        proc.stderr
