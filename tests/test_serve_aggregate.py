"""`podsight serve`'s default mode, closed connections summed per edge in the kernel: exact
counts, bytes each way, persistent ones, failed connects and duration histogram buckets from
lab traffic of known shape; the per-connection mode beside it agrees; an edge table too
small for the traffic sends the rest as records, counted, with the graph still exact."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from conns import Held, Server, exchange
from servehelp import Serve
from tracing import connect

pytestmark = pytest.mark.root

PORT = 7071
PORT2 = 7072
EDGE = f"p/default/mypod->p/default/web:{PORT}"
EDGE2 = f"p/default/mypod->p/default/web:{PORT2}"


def _metrics(s: Serve, port: int) -> dict[str, float]:
    """The mypod -> web series of /metrics on ``port``: name{le or direction} -> value."""
    status, body = s.get("/metrics")
    assert status == 200
    want = {"workload": "mypod", "peer_workload": "web", "port": str(port)}
    out: dict[str, float] = {}
    for m in re.finditer(r"^(\w+)\{([^}]*)\} (\S+)$", body.decode(), re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m[2]))
        if any(labels.get(k) != v for k, v in want.items()):
            continue
        extra = ",".join(f'{k}="{labels[k]}"' for k in ("le", "direction") if k in labels)
        out[f"{m[1]}{{{extra}}}" if extra else m[1]] = float(m[3])
    return out


def _wait_metric(s: Serve, port: int, key: str, value: float, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = _metrics(s, port).get(key)
        if got == value:
            return
        time.sleep(0.1)
    raise AssertionError(f"{key} on port {port} never was {value}: {got}")


def test_aggregated_edge_counts_bytes_failures_and_buckets(lab):
    """Nothing is read open (--open-every 1h): every close is summed in the kernel, and
    per-connection serve, running beside it, sees the same edge."""
    web = lab.pod("web")
    with Server(lab, "web", PORT), \
            Serve("-n", "default", "--persistent", "1s", "--open-every", "1h",
                  "--edge-every", "200ms") as agg, \
            Serve("-n", "default", "--persistent", "1s", "--open-every", "1h",
                  "--per-connection") as per:
        exchange(lab, "mypod", web.ipv4, PORT, req=1000, resp=20_000, count=5)
        held = Held(lab, "mypod", web.ipv6, PORT, req=50, resp=7000, count=2)
        time.sleep(1.5)  # what is measured: they live past --persistent 1s (not a wait)
        held.close()
        refused = [connect(lab, "mypod", web.ipv4, 8099) for _ in range(3)]
        assert all(r["errno"] for r in refused)
        for s in (agg, per):
            edge = s.wait_edge(EDGE, connections=7, active=0, persistent=2)
            assert edge["detail__bytes_sent"] == 5 * 1008 + 2 * 58
            assert edge["detail__bytes_received"] == 5 * 20_000 + 2 * 7000
            failed = s.wait_edge("p/default/mypod->p/default/web:8099", failed=3)
            assert failed["detail__connections"] == 0
        m = _metrics(agg, PORT)
        hist = "podsight_tcp_connection_duration_seconds"
        # 5 short exchanges within 1 s, the 2 held ones between 1 and 5 s (cumulative)
        assert m[f'{hist}_bucket{{le="1"}}'] == 5
        assert m[f'{hist}_bucket{{le="5"}}'] == 7
        assert m[f'{hist}_bucket{{le="+Inf"}}'] == 7
        assert m[f"{hist}_count"] == 7
        assert m[f"{hist}_sum"] > 2 * 1.5
        assert m["podsight_tcp_persistent_connections_total"] == 2
        assert m['podsight_tcp_bytes_total{direction="sent"}'] == 5 * 1008 + 2 * 58
        # the per-connection graph's buckets: each connection's own duration
        p = _metrics(per, PORT)
        for le in ("0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "1", "5"):
            key = f'{hist}_bucket{{le="{le}"}}'
            assert m[key] == p[key], (le, m, p)
    assert agg.returncode == 0 and per.returncode == 0, agg.err + per.err
    counters = re.findall(r"connections, 0 lost", agg.err)
    assert counters, agg.err


def test_full_edge_table_sends_records_and_counts_them(lab):
    """--edge-entries 2: the first port's client and server sides take both entries; every
    connection to the second port goes out as a record (both sides: 2 x 4), counted, and
    both edges stay exact."""
    web = lab.pod("web")
    with Server(lab, "web", PORT), Server(lab, "web", PORT2), \
            Serve("-n", "default", "--open-every", "1h", "--edge-every", "200ms",
                  "--edge-entries", "2") as s:
        exchange(lab, "mypod", web.ipv4, PORT, req=100, resp=300, count=3)
        s.wait_edge(EDGE, connections=3)
        exchange(lab, "mypod", web.ipv4, PORT2, req=10, resp=40, count=4)
        edge = s.wait_edge(EDGE, connections=3)
        assert (edge["detail__bytes_sent"], edge["detail__bytes_received"]) == (3 * 108, 900)
        edge2 = s.wait_edge(EDGE2, connections=4)
        assert (edge2["detail__bytes_sent"], edge2["detail__bytes_received"]) == (4 * 18, 160)
        _wait_metric(s, PORT2, "podsight_tcp_connections_total", 4)
        status, body = s.get("/metrics")
        assert status == 200
        fill = re.search(r'podsight_map_fill_ratio\{gadget="tcplife",map="edges"\} (\S+)',
                         body.decode())
        assert fill and float(fill[1]) == 1.0
    assert s.returncode == 0, s.err
    note = re.search(r"(\d+) connections sent one by one: the kernel's edge table \(2\) was "
                     r"full", s.err)
    assert note and int(note[1]) == 2 * 4, s.err
    assert re.search(r"connections, 0 lost", s.err), s.err


REUSE = r"""
import ctypes, socket, struct, sys
host, port = sys.argv[1], int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)

def exactly(c, n):
    got = 0
    while got < n:
        d = c.recv(n - got)
        assert d, "peer closed early"
        got += len(d)

c = socket.socket()
for req, resp in ((100, 3000), (200, 5000)):
    c.connect((host, port))
    c.sendall(struct.pack("!II", req, resp) + b"q" * req)
    exactly(c, resp)
    print("exchanged", flush=True)
    sys.stdin.readline()
    if req == 100:  # connect(AF_UNSPEC): back to CLOSE, the same socket connects again
        assert libc.connect(c.fileno(), (ctypes.c_ubyte * 16)(), 16) == 0
c.close()
"""


def test_a_socket_read_open_then_connecting_again_is_summed_exactly(lab):
    """The kernel keeps a socket's state past its close (marked closed, not deleted): one
    socket whose first connection is read open (so it closes as a record, followed by its
    cookie) and then connects again (same cookie) has its second connection summed in the
    kernel; the edge counts both, with exact bytes."""
    web = lab.pod("web")
    with Server(lab, "web", PORT), \
            Serve("-n", "default", "--open-every", "200ms", "--edge-every", "200ms") as s:
        client = lab.popen("mypod", [sys.executable, "-c", REUSE, web.ipv4, str(PORT)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert client.stdin is not None and client.stdout is not None
        try:
            assert client.stdout.readline().strip() == "exchanged"
            s.wait_edge(EDGE, connections=1, active=1, bytes_sent=108, bytes_received=3000)
            client.stdin.write("\n")
            client.stdin.flush()
            assert client.stdout.readline().strip() == "exchanged"
            client.stdin.write("\n")
            client.stdin.close()
            assert client.wait(timeout=30) == 0
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
        edge = s.wait_edge(EDGE, connections=2, active=0)
        assert (edge["detail__bytes_sent"], edge["detail__bytes_received"]) == (108 + 208, 8000)
        _wait_metric(s, PORT, "podsight_tcp_connections_total", 2)
    assert s.returncode == 0, s.err
    assert re.search(r"connections, 0 lost", s.err), s.err


def _self_metric(s: Serve, name: str, **labels: str) -> float | None:
    """One self-metric of /metrics, by its labels (None if it is not there)."""
    status, body = s.get("/metrics")
    assert status == 200
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", body.decode(), re.M):
        got = dict(re.findall(r'(\w+)="([^"]*)"', m[1]))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m[2])
    return None


def _wait_self_metric(s: Serve, name: str, value: float, timeout: float = 30,
                      **labels: str) -> None:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = _self_metric(s, name, **labels)
        if got == value:
            return
        time.sleep(0.1)
    raise AssertionError(f"{name}{labels} never was {value}: {got}")


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_open_connection_is_in_the_graph_with_exact_bytes_before_it_closes(lab, family):
    """A persistent connection is read from the kernel's table of open connections (the
    socket read through its stored address): the edge has it active, with the bytes each
    side sent so far, before it closes; its close then counts it once, the bytes unchanged."""
    web = lab.pod("web")
    host = web.ipv4 if family == "ipv4" else web.ipv6
    with Server(lab, "web", PORT), \
            Serve("-n", "default", "--open-every", "200ms", "--edge-every", "200ms") as s, \
            Held(lab, "mypod", host, PORT, req=700, resp=9000) as held:
        s.wait_edge(EDGE, connections=1, active=1, bytes_sent=708, bytes_received=9000)
        _wait_self_metric(s, "podsight_map_fill_ratio", 2 / 131072, gadget="tcplife",
                          map="states")
        held.close()
        edge = s.wait_edge(EDGE, connections=1, active=0)
        assert (edge["detail__bytes_sent"], edge["detail__bytes_received"]) == (708, 9000)
    assert s.returncode == 0, s.err
    assert re.search(r"connections, 0 lost", s.err), s.err


def test_full_open_table_counts_each_connection_not_followed_once(lab):
    """--max-open 16 with 12 connections held open between two lab pods (24 sockets): the
    first 8 connections take the 16 entries, each side of the other 4 is counted lost once
    (lost_full, in the summary and /metrics), also when it closes; the table reads full,
    serve goes on, and the 8 followed connections are exact."""
    web = lab.pod("web")
    with Server(lab, "web", PORT), \
            Serve("-n", "default", "--open-every", "200ms", "--edge-every", "200ms",
                  "--max-open", "16") as s:
        with Held(lab, "mypod", web.ipv4, PORT, req=10, resp=20, count=12) as held:
            s.wait_edge(EDGE, active=8, bytes_sent=8 * 18, bytes_received=8 * 20)
            _wait_self_metric(s, "podsight_map_fill_ratio", 1.0, gadget="tcplife",
                              map="states")
            _wait_self_metric(s, "podsight_lost_events_total", 8, gadget="tcplife",
                              cause="full")
            held.close()
        edge = s.wait_edge(EDGE, connections=8, active=0)
        assert (edge["detail__bytes_sent"], edge["detail__bytes_received"]) == (8 * 18, 160)
        # the table is free again: a connection after them is followed
        exchange(lab, "mypod", web.ipv4, PORT, req=1, resp=2)
        s.wait_edge(EDGE, connections=9, bytes_sent=8 * 18 + 9, bytes_received=162)
        _wait_self_metric(s, "podsight_lost_events_total", 8, gadget="tcplife", cause="full")
    assert s.returncode == 0, s.err
    assert re.search(r"connections, 8 lost", s.err), s.err
    assert "the table of open connections was full (a larger --max-open helps)" in s.err, s.err
