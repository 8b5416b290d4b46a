"""`podsight serve` end to end: lab traffic of known shape, the graph it serves, and a real
Prometheus scraping it as the oracle of /metrics."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conns import Held, Server, exchange
from servehelp import Prometheus, Serve, free_port
from tracing import connect, run_cli

pytestmark = pytest.mark.root

PORT = 7070
EDGE = f"p/default/mypod->p/default/web:{PORT}"


def test_known_traffic_gives_exact_nodes_edges_counts_and_bytes(lab, tmp_path):
    web = lab.pod("web")
    with Server(lab, "web", PORT), \
            Serve("-n", "default", "--persistent", "1s", "--open-every", "200ms") as s, \
            Prometheus(f"127.0.0.1:{s.port}", tmp_path) as prom:
        short = exchange(lab, "mypod", web.ipv4, PORT, req=1000, resp=20_000, count=5)
        with Held(lab, "mypod", web.ipv6, PORT, req=50, resp=7000, count=2):
            # Open, and persistent once they lived past --persistent 1s.
            edge = s.wait_edge(EDGE, connections=7, active=2, persistent=2)
            assert edge["detail__bytes_sent"] == 5 * 1008 + 2 * 58
            assert edge["detail__bytes_received"] == 5 * 20_000 + 2 * 7000
        refused = [connect(lab, "mypod", web.ipv4, 8099) for _ in range(3)]
        assert all(r["errno"] for r in refused)
        edge = s.wait_edge(EDGE, connections=7, active=0, persistent=2)
        assert edge["detail__bytes_sent"] == 5 * 1008 + 2 * 58
        assert edge["detail__bytes_received"] == 5 * 20_000 + 2 * 7000
        failed = s.wait_edge("p/default/mypod->p/default/web:8099", failed=3)
        assert failed["detail__connections"] == 0
        assert len(short["sports"]) == 5

        graph = s.json("/api/graph/data?namespace=default&include=mypod|web"
                       "&exclude=coredns")
        ids = {n["id"] for n in graph["nodes"]}
        assert {"p/default/mypod", "p/default/web"} <= ids
        for node in graph["nodes"]:
            arcs = [v for k, v in node.items() if k.startswith("arc__")]
            assert len(arcs) == 2 and abs(sum(arcs) - 1) < 1e-9
        by_bytes = s.json("/api/graph/data?stats-type=bytes")
        assert any(e["id"] == EDGE and "sent" in e["mainStat"] for e in by_bytes["edges"])
        fields = s.json("/api/graph/fields")
        assert {f["field_name"] for f in fields["edges_fields"]} >= {
            "id", "source", "target", "mainStat", "secondaryStat"}
        assert {f["field_name"] for f in fields["nodes_fields"]} >= {
            "id", "title", "subTitle", "mainStat", "secondaryStat", "arc__ok", "arc__failed"}
        assert s.json("/api/health") == {"status": "ok"}
        assert s.get("/api/graph/data?stats-type=packets")[0] == 400
        assert s.get("/api/graph/data?include=(")[0] == 400

        labels = 'workload="mypod",peer_workload="web",port="7070"'
        prom.wait_value(f'podsight_tcp_bytes_total{{{labels},direction="sent"}}',
                        5 * 1008 + 2 * 58)
        prom.wait_value(f'podsight_tcp_bytes_total{{{labels},direction="received"}}',
                        5 * 20_000 + 2 * 7000)
        prom.wait_value(f"podsight_tcp_connections_total{{{labels}}}", 7)
        prom.wait_value(f"podsight_tcp_connection_duration_seconds_count{{{labels}}}", 7)
        prom.wait_value('podsight_tcp_connect_failures_total{workload="mypod",'
                        'peer_workload="web",port="8099",result="refused"}', 3)
        prom.wait_value('podsight_lost_events_total{gadget="tcplife",cause="ringbuf"}', 0)
        assert prom.query("podsight_scrape_duration_seconds")

        status, body = s.get("/metrics")
        assert status == 200
        check = subprocess.run(["promtool", "check", "metrics"], input=body,
                               capture_output=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        text = body.decode()
        assert "sport" not in text and lab.pod("mypod").ipv4 not in text
    assert s.returncode == 0, s.err


def _series(body: bytes) -> set[str]:
    return {line.rsplit(" ", 1)[0] for line in body.decode().splitlines()
            if line and not line.startswith("#")}


def test_series_count_stays_fixed_with_10k_client_ports(lab):
    web = lab.pod("web")
    with Server(lab, "web", PORT), Serve("-n", "default") as s:
        exchange(lab, "mypod", web.ipv4, PORT, req=1, resp=1, count=100)
        s.wait_edge(EDGE, connections=100)
        before = _series(s.get("/metrics")[1])
        ports: set[int] = set()
        made = 100
        while len(ports) < 10_000:
            ports |= set(exchange(lab, "mypod", web.ipv4, PORT, req=1, resp=1,
                                  count=2500)["sports"])
            made += 2500
        s.wait_edge(EDGE, timeout=120, connections=made, active=0)
        after = _series(s.get("/metrics")[1])
    series = {x for x in before if x.startswith("podsight_tcp_")}
    assert series == {x for x in after if x.startswith("podsight_tcp_")}


def test_off_loopback_needs_the_token(lab, tmp_path):
    res = run_cli("serve", "--listen", "10.244.0.1:9999")
    assert res.returncode == 2 and "--token-file" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    port = free_port("10.244.0.1")
    with Serve("--listen", f"10.244.0.1:{port}", "--token-file", str(token), port=port):
        url = f"http://10.244.0.1:{port}/api/graph.json"

        def curl(*extra: str) -> str:
            out = lab.exec("mypod", ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                     *extra, url], capture_output=True, text=True, timeout=30)
            return str(out.stdout)

        assert curl() == "401"
        assert curl("-H", "Authorization: Bearer wrong") == "401"
        assert curl("-H", "Authorization: Bearer s3cret-token") == "200"


@pytest.mark.parametrize("args,message", [
    (["--listen", "nowhere"], "HOST:PORT"),
    (["--listen", "127.0.0.1:0"], "HOST:PORT"),
    (["--token-file", "/nonexistent/token"], "No such file"),
    (["--persistent", "soon"], "--persistent"),
    (["--aggregate-cidr", "33"], "--aggregate-cidr"),
])
def test_bad_input_is_one_line(args, message):
    res = run_cli("serve", *args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_sigterm_stops_with_summaries(lab):
    """One summary line per gadget serve runs: tcplife alone, since it reports failed
    connects too (tcpconnect's programs would run on every state change for nothing)."""
    with Serve() as s:
        assert s.proc is not None
        s.proc.terminate()
        s.stop()
    assert s.returncode == 0, s.err
    running = re.search(r"serving the traffic graph at \S+ \(([^;]+);", s.err)
    assert running and running[1].split(", ") == ["tcplife"], s.err
    assert len(re.findall(r"podsight: \d+ (connections|events), 0 lost", s.err)) == 1


def _connstorm(tmp_path) -> str:
    """bench/connstorm, built here (gcc)."""
    src = Path(__file__).resolve().parent.parent / "bench" / "connstorm.c"
    exe = tmp_path / "connstorm"
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(exe), str(src)], check=True)
    return str(exe)


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"VmRSS:\s+(\d+)", status)
    assert m
    return int(m[1])


@pytest.mark.slow
def test_memory_stays_flat_over_200k_short_connections(tmp_path):
    storm = _connstorm(tmp_path)
    with Serve() as s:
        assert s.proc is not None
        made, port, rss_at = 0, free_port(), {}
        while made < 200_000:
            out = subprocess.run([storm, "-t", "2", "-d", "2", "-p", str(port)],
                                 capture_output=True, text=True, check=True)
            made += int(json.loads(out.stdout)["connects"])
            if "first" not in rss_at and made >= 50_000:
                rss_at["first"] = (made, _rss_kib(s.proc.pid))
        deadline = time.monotonic() + 120
        got = 0
        while time.monotonic() < deadline and got < made:
            got = sum(e["detail__connections"] for e in s.json("/api/graph.json")["edges"]
                      if e["detail__port"] == port)
            time.sleep(0.2)
        assert got == made
        rss_at["end"] = (made, _rss_kib(s.proc.pid))
    first, end = rss_at["first"][1], rss_at["end"][1]
    assert end <= first * 1.10, rss_at


def test_flows_add_drops_and_dns_answers(lab):
    """serve --flows: drops with the kernel's reason and DNS answers per client."""
    from flowsrun import send_udp

    if lab.nameserver is None:
        pytest.skip(f"the lab has no cluster DNS: {lab.dns_off_reason}")
    web = lab.pod("web")
    with Serve("-n", "default", "--flows") as s:
        send_udp(lab, "mypod", web.ipv4, 47999, 5, 100, sport=50123)  # no socket there
        out = lab.exec("mypod", [sys.executable, "-m", "podsight.lab.dnsquery", "10.96.0.53",
                                 "nosuch.default.svc.cluster.local"],
                       capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        drops = 'podsight_drops_total{.*peer_workload="web",port="47999",reason="NO_SOCKET"'
        dns = 'podsight_dns_responses_total{.*rcode="NXDOMAIN".*workload="mypod"'
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            text = s.get("/metrics")[1].decode()
            if re.search(drops + r".*\} 5\.0", text) and re.search(dns + r".*\} 1\.0", text):
                break
            time.sleep(0.2)
        assert re.search(drops + r".*\} 5\.0", text), text
        assert re.search(dns + r".*\} 1\.0", text), text
        edge = s.wait_edge("p/default/mypod->p/default/web:47999", dropped=5)
        assert edge["detail__connections"] == 0
