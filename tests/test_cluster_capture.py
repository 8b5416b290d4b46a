"""The gadget options that need the node's knowledge, through agents (simulated nodes:
agents on this machine each watching lab pods' network namespaces), checked with the
local command's oracles: ``packets --comments`` (named on each node, tshark reads
them), ``packets --tls-keylog FILE`` (read on the node, or inside a pod; tshark decrypts
the merged file with nothing else), and ``serve --flows`` / ``--tls`` (flow records
feed the client's graph: drops, DNS answers, TLS server names)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from clusterrun import agents, client, free_port, wait_for
from flowsrun import send_udp
from packetsrun import blocks, fields

from podsight.lab import EXTERNAL_WEB, Lab


def _addrs(running: list[Any]) -> list[str]:
    return [w for a in running for w in ("--agent-addr", a.addr)]


def _started(err: Path, n: int) -> None:
    wait_for(lambda: err.read_text().count(": capturing") >= n, f"{n} nodes capturing",
             timeout=60)


def _rows(path: Path, *names: str, display: str = "") -> list[list[str]]:
    """tshark's fields of the file so far ([] while it is still too short to read)."""
    try:
        return fields(path, *names, display=display)
    except (AssertionError, subprocess.CalledProcessError):
        return []


def test_packets_comments_are_named_on_each_node(lab: Lab, tmp_path: Path) -> None:
    """Both ends of frontend -> backend, captured on two nodes: every packet's comment
    names both ends as the local --comments does (the agent names them, the client's
    file carries them)."""
    out, err = tmp_path / "comments.pcapng", tmp_path / "client.err"
    nodes = {"node-a": lab.pod("frontend").netns, "node-b": lab.pod("backend").netns}
    with agents(nodes, tmp_path) as running:
        proc = client(*_addrs(running), "packets", "--comments", "-w", str(out),
                      "udp port 7204", stderr=err.open("w"))
        _started(err, 2)
        sport = send_udp(lab, "frontend", lab.pod("backend").ipv4, 7204, 3, 10)
        wait_for(lambda: len(_rows(out, "frame.comment")) >= 6, "6 packets in the file")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, err.read_text()
    rows = fields(out, "frame.interface_name", "frame.comment")
    assert sorted(r[0].split("/", 1)[0] for r in rows) == ["node-a"] * 3 + ["node-b"] * 3
    assert {r[1] for r in rows} == {f"p/shop/frontend:{sport} -> p/shop/backend:7204"}


def _curl_with_keys(lab: Lab, keys: str, uri: str) -> None:
    proc = lab.exec("mypod", ["curl", "-sk", "--http1.1", "-o", "/dev/null", "--resolve",
                              f"shop.example.test:443:{EXTERNAL_WEB}",
                              f"https://shop.example.test{uri}"],
                    env=dict(os.environ, SSLKEYLOGFILE=keys), capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_packets_tls_keylog_read_on_the_node(lab: Lab, tmp_path: Path) -> None:
    """--tls-keylog names a file on the node: the agent follows it and sends its lines
    ahead of the packets they decrypt; the merged file has a Decryption Secrets Block
    and tshark decrypts with nothing else."""
    out, err, keys = tmp_path / "tls.pcapng", tmp_path / "client.err", tmp_path / "keys.log"
    nodes = {"node-a": lab.pod("mypod").netns, "node-b": lab.pod("web").netns}
    with agents(nodes, tmp_path) as running:
        proc = client(*_addrs(running), "packets", "--tls-keylog", str(keys), "-w", str(out),
                      "tcp port 443", stderr=err.open("w"))
        _started(err, 2)
        _curl_with_keys(lab, str(keys), "/tls-check")
        assert keys.stat().st_size > 0
        want = [["GET", "/tls-check"]]
        wait_for(lambda: _rows(out, "http.request.method", "http.request.uri",
                               display="http.request") == want, "the request decrypted")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, err.read_text()
    kinds = [kind for kind, _ in blocks(out)]
    assert 0x0A in kinds and kinds.index(0x0A) < max(i for i, k in enumerate(kinds) if k == 6)
    assert fields(out, "http.request.method", "http.request.uri",
                  display="http.request") == want
    assert {r[0].split("/", 1)[0] for r in fields(out, "frame.interface_name")} == {"node-a"}


def test_keys_written_after_the_last_packet_go_before_the_mark_passes(
        lab: Lab, tmp_path: Path) -> None:
    """An application writes a TLS session's secrets after the packets they decrypt were
    captured (curl: after the server's handshake flight), often after the last packet of
    the exchange. The agent's session sends them at its next collect, in a batch of no
    frames, before its mark (the watermark of later batches and heartbeats) passes the
    moment they were written; the client's merge then holds the packets until the keys
    are in. Before, keys waited for the next packet and the mark was the clock: a short
    exchange's file had its packets but not their keys (a flaky CI decryption test)."""
    from podsight.cluster import agent_pb2 as pb
    from podsight.cluster.session import Session, parse_request

    keys = tmp_path / "keys.log"
    keys.write_bytes(b"")
    replies: list[pb.RunReply] = []
    request = parse_request(["packets", "--tls-keylog", str(keys), "udp port 7205"],
                            lab.pod("mypod").netns)
    session = Session(request, "node-a", replies.append)
    runner = threading.Thread(target=session.run)
    runner.start()
    try:
        wait_for(lambda: any(r.HasField("started") for r in replies), "the capture started",
                 timeout=60)
        send_udp(lab, "mypod", EXTERNAL_WEB, 7205, 1, 10)
        wait_for(lambda: any(r.frames.count for r in replies if r.HasField("frames")),
                 "the packet sent")
        line = b"CLIENT_RANDOM " + b"ab" * 32 + b" " + b"cd" * 48 + b"\n"
        written = time.time_ns()
        with keys.open("ab") as f:
            f.write(line)
        wait_for(lambda: any(r.frames.tls_keys for r in replies if r.HasField("frames")),
                 "the keys sent with no packet after them")
        wait_for(lambda: session.seq.mark > written, "the mark past the keys")
    finally:
        session.stop.set()
        runner.join(60)
    frames = [r.frames for r in replies if r.HasField("frames")]
    carrying = next(i for i, f in enumerate(frames) if f.tls_keys)
    assert frames[carrying].tls_keys == line and frames[carrying].count == 0
    assert all(f.watermark < written for f in frames[:carrying + 1])
    assert [f.count for f in frames] == [1, 0] and replies[-1].HasField("summary")


def test_packets_tls_keylog_inside_a_pod_through_the_agent(lab: Lab, tmp_path: Path) -> None:
    """A key log only the pod's processes see (their own mount namespace): the agent finds
    it through /proc/PID/root of a process in a network namespace it watches, as the
    local command does for a selected pod."""
    assert not Path("/mnt/podsight-keys.log").exists()
    out, err = tmp_path / "inpod.pcapng", tmp_path / "client.err"
    script = ("mount -t tmpfs podsight-test /mnt && "
              "SSLKEYLOGFILE=/mnt/podsight-keys.log curl -sk --http1.1 -o /dev/null "
              f"--resolve shop.example.test:443:{EXTERNAL_WEB} https://shop.example.test/in-pod"
              " && touch /mnt/done && sleep 30")
    with agents({"node-a": lab.pod("mypod").netns}, tmp_path) as running:
        proc = client(*_addrs(running), "packets", "--tls-keylog", "/mnt/podsight-keys.log",
                      "-w", str(out), "tcp port 443", stderr=err.open("w"))
        _started(err, 1)
        pod = lab.popen("mypod", ["unshare", "-m", "--propagation", "private", "sh", "-c",
                                  script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                        start_new_session=True)
        try:
            wait_for(lambda: _rows(out, "http.request.uri", display="http.request")
                     == [["/in-pod"]], "the in-pod request decrypted")
        finally:
            os.killpg(pod.pid, signal.SIGKILL)  # sh and sleep too: they hold /mnt alive
            pod.wait()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, err.read_text()
    assert fields(out, "http.request.uri", display="http.request") == [["/in-pod"]]


def test_serve_flows_and_tls_through_agents(lab: Lab, tmp_path: Path) -> None:
    """serve --flows --tls: flows runs on every node with the values those flags give it,
    and its merged records feed the graph as the local serve's do: drops with the
    kernel's reason, DNS answers per client, external peers named by TLS server name."""
    if lab.nameserver is None:
        pytest.skip(f"the lab has no cluster DNS: {lab.dns_off_reason}")
    port = free_port()
    err = tmp_path / "client.err"
    nodes = {"node-a": f"{lab.pod('mypod').netns},{lab.pod('web').netns}",
             "node-b": f"{lab.pod('frontend').netns},{lab.pod('backend').netns}"}
    with agents(nodes, tmp_path) as running:
        proc = client(*_addrs(running), "serve", "--listen", f"127.0.0.1:{port}", "--flows",
                      "--tls", stderr=err.open("w"))
        try:
            wait_for(lambda: "serving the traffic graph at" in err.read_text()
                     or proc.poll() is not None, "every gadget on every node", timeout=120)
            assert proc.poll() is None, err.read_text()
            assert "flows" in err.read_text().split("serving the traffic graph at")[1]

            def get(path: str) -> str:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}",
                                            timeout=30) as r:
                    return str(r.read().decode())
            send_udp(lab, "mypod", lab.pod("web").ipv4, 47999, 5, 100, sport=50123)
            query = lab.exec("mypod", [sys.executable, "-m", "podsight.lab.dnsquery",
                                       "10.96.0.53", "nosuch.default.svc.cluster.local"],
                             capture_output=True, text=True, timeout=30)
            assert query.returncode == 0, query.stderr
            out = lab.exec("mypod", ["curl", "-sk", "-o", "/dev/null", "--resolve",
                                     f"shop.example.test:443:{EXTERNAL_WEB}",
                                     "https://shop.example.test/"],
                           capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            drops = ('podsight_drops_total{.*peer_workload="web",port="47999",'
                     r'reason="NO_SOCKET".*\} 5\.0')
            dns = r'podsight_dns_responses_total{.*rcode="NXDOMAIN".*workload="mypod".*\} 1\.0'
            try:
                wait_for(lambda: re.search(drops, get("/metrics")) is not None, "5 drops")
            except AssertionError:
                m = get("/metrics")
                raise AssertionError("\n".join(
                    [line for line in m.splitlines() if "drop" in line or "dns" in line
                     or "flow" in line or "records" in line] + [err.read_text()]
                    + [a.log.read_text()[-3000:] for a in running]
                    + [get("/api/graph/data")[:3000]])) from None
            wait_for(lambda: re.search(dns, get("/metrics")) is not None, "1 DNS answer")

            def named() -> bool:
                data = json.loads(get("/api/graph/data"))
                return any(n["id"] == "x/shop.example.test" for n in data["nodes"])
            wait_for(named, "the external peer named by its TLS server name")
            metrics = get("/metrics")
            for node in nodes:
                assert f'gadget="{node}/flows"' in metrics, metrics
            check = subprocess.run(["promtool", "check", "metrics"], input=metrics.encode(),
                                   capture_output=True, check=False)
            assert check.returncode == 0, check.stdout + check.stderr
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(60)
    assert code == 0, err.read_text()
    assert "flows: node node-a" in err.read_text(), err.read_text()
