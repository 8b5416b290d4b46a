"""`podsight trace tcplife` end to end: real kernel programs, real sockets in lab pods, and
the bytes each socket really sent as the oracle."""

from __future__ import annotations

import ctypes
import errno
import json
import re
import socket
import subprocess
import time

import pytest
from conns import Held, Server, exchange
from tracing import Trace, connect, run_cli

from podsight.lab import EXTERNAL_UNREACHABLE

pytestmark = pytest.mark.root

PORT = 7070
SUMMARY = re.compile(r"podsight: (\d+) connections, (\d+) lost, (\d+) pending")


def Life(*args: str) -> Trace:
    return Trace(*args, gadget="tcplife")


def records(t: Trace) -> list[dict]:
    """The complete JSON lines printed so far: a peek may end in the middle of a line."""
    complete = t.peek().split("\n")[:-1]
    return [json.loads(line) for line in complete if line.startswith("{")]


def summary(err: str) -> dict[str, int]:
    m = SUMMARY.search(err)
    assert m, err
    return {"connections": int(m[1]), "lost": int(m[2]), "pending": int(m[3])}


def by_side(events: list[dict], client_port: int, port: int = PORT) -> dict[str, dict]:
    """The client's and the server's record of the connection from ``client_port``."""
    out = {}
    for e in events:
        if e["state"] != "closed":
            continue
        if e["role"] == "client" and e["sport"] == client_port and e["dport"] == port:
            assert "client" not in out, f"two client records for {client_port}"
            out["client"] = e
        if e["role"] == "server" and e["dport"] == client_port and e["sport"] == port:
            assert "server" not in out, f"two server records for {client_port}"
            out["server"] = e
    return out


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_both_sides_with_exact_payload_bytes(lab, family):
    web, mypod = lab.pod("web"), lab.pod("mypod")
    host = web.ipv4 if family == "ipv4" else web.ipv6
    with Server(lab, "web", PORT), Life("-n", "default") as t:
        small = exchange(lab, "mypod", host, PORT, req=1000, resp=50_000, count=3)
        big = exchange(lab, "mypod", host, PORT, req=10, resp=3_000_000, count=2)
        want = len(small["sports"]) + len(big["sports"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if sum(len(by_side(records(t), p)) for p in small["sports"] + big["sports"]) \
                    == 2 * want:
                break
            time.sleep(0.1)
    res = t.stop()
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    for info, req, resp in ((small, 1000, 50_000), (big, 10, 3_000_000)):
        for sport in info["sports"]:
            sides = by_side(events, sport)
            c, s = sides["client"], sides["server"]
            assert (c["bytes_sent"], c["bytes_received"]) == (8 + req, resp)
            assert (s["bytes_sent"], s["bytes_received"]) == (resp, 8 + req)
            assert c["pid"] == info["pid"] and c["comm"] == info["comm"]
            assert c["ip"] == s["ip"] == (4 if family == "ipv4" else 6)
            assert c["saddr"] == (mypod.ipv4 if family == "ipv4" else mypod.ipv6)
            assert c["src"]["endpoint"] == f"p/default/mypod:{sport}"
            assert c["dst"]["endpoint"] == f"p/default/web:{PORT}"
            assert s["src"]["endpoint"] == f"p/default/web:{PORT}"
            assert s["dst"]["endpoint"] == f"p/default/mypod:{sport}"
            assert c["start_seen"] and s["start_seen"]
            assert c["duration_ns"] > 0 and s["duration_ns"] > 0
            assert c["segs_out"] > 0 and s["segs_in"] > 0 and c["cookie"] != s["cookie"]
    assert summary(res.stderr)["lost"] == 0


def test_open_connections_before_and_during_the_trace(lab):
    """Connections held open are read periodically (state open, bytes so far), including
    those opened before podsight started; their close gives the exact totals."""
    web = lab.pod("web")
    # Entered in order: the two connections are open before the trace starts.
    with Server(lab, "web", PORT), \
            Held(lab, "mypod", web.ipv4, PORT, req=100, resp=2000, count=2) as before, \
            Life("-n", "default", "--open-every", "200ms") as t, \
            Held(lab, "mypod", web.ipv4, PORT, req=300, resp=4000) as during:
        ports = before.info["sports"] + during.info["sports"]
        deadline = time.monotonic() + 30
        seen: dict[tuple[str, int], dict] = {}
        while time.monotonic() < deadline and len(seen) < 2 * len(ports):
            for e in records(t):
                if e["state"] == "open":
                    p = e["sport"] if e["role"] == "client" else e["dport"]
                    if p in ports:
                        seen[(e["role"], p)] = e
            time.sleep(0.1)
        assert len(seen) == 2 * len(ports), seen
        for p in before.info["sports"]:
            c, s = seen[("client", p)], seen[("server", p)]
            assert not c["start_seen"] and not s["start_seen"]
            assert (c["bytes_sent"], c["bytes_received"]) == (108, 2000)
            assert (s["bytes_sent"], s["bytes_received"]) == (2000, 108)
            assert c["src"]["endpoint"] == f"p/default/mypod:{p}"
        p = during.info["sports"][0]
        assert seen[("client", p)]["start_seen"]
        assert seen[("client", p)]["bytes_sent"] == 308
        before.close()
        during.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(len(by_side(records(t), p)) == 2 for p in ports):
                break
            time.sleep(0.1)
    res = t.stop()
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    for p, req, resp in [(p, 100, 2000) for p in before.info["sports"]] + [
            (during.info["sports"][0], 300, 4000)]:
        sides = by_side(events, p)
        assert (sides["client"]["bytes_sent"], sides["client"]["bytes_received"]) == \
            (8 + req, resp)
        assert (sides["server"]["bytes_sent"], sides["server"]["bytes_received"]) == \
            (resp, 8 + req)
    assert summary(res.stderr)["lost"] == 0


def _recv_exactly(sock: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        chunk = sock.recv(n - got)
        assert chunk, "peer closed early"
        got += len(chunk)


def _wait_records(t: Trace, want, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = records(t)
        if want(events):
            return events
        time.sleep(0.1)
    raise AssertionError(f"records not seen in {timeout}s")


def test_half_closed_connection_counts_fins_from_its_state(lab):
    """The FIN accounting is told from the TCP state (no runs at FIN_WAIT1, CLOSE_WAIT,
    LAST_ACK): open records of a half-closed connection (client in FIN_WAIT2, server in
    CLOSE_WAIT) and the records at close carry exact payload bytes, both sides."""
    srv = socket.create_server(("127.0.0.1", 0))
    with srv, Life("--open-every", "200ms") as t:
        port = srv.getsockname()[1]
        c = socket.create_connection(("127.0.0.1", port))
        a, _ = srv.accept()
        with c, a:
            sport = c.getsockname()[1]
            c.sendall(b"q" * 100)
            _recv_exactly(a, 100)
            a.sendall(b"r" * 2000)
            _recv_exactly(c, 2000)
            c.shutdown(socket.SHUT_WR)  # client FIN_WAIT2, server CLOSE_WAIT
            assert a.recv(1) == b""

            def half(events: list[dict]) -> bool:
                mine = {e["role"]: e for e in events if e["state"] == "open" and (
                    (e["role"] == "client" and e["sport"] == sport) or
                    (e["role"] == "server" and e["dport"] == sport))}
                return len(mine) == 2 and mine["client"]["bytes_sent"] == 100 and \
                    mine["server"]["bytes_received"] == 100

            events = _wait_records(t, half)
            opened = {e["role"]: e for e in events if e["state"] == "open" and sport in (
                e["sport"], e["dport"]) and port in (e["sport"], e["dport"])}
            assert (opened["client"]["bytes_sent"], opened["client"]["bytes_received"]) == \
                (100, 2000)
            assert (opened["server"]["bytes_sent"], opened["server"]["bytes_received"]) == \
                (2000, 100)
            a.sendall(b"s" * 500)
            _recv_exactly(c, 500)
            a.close()  # server LAST_ACK -> CLOSE; client FIN_WAIT2 -> CLOSE (time wait)
            assert c.recv(1) == b""
        _wait_records(t, lambda ev: len(by_side(ev, sport, port)) == 2)
    res = t.stop()
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    sides = by_side(events, sport, port)
    assert (sides["client"]["bytes_sent"], sides["client"]["bytes_received"]) == (100, 2500)
    assert (sides["server"]["bytes_sent"], sides["server"]["bytes_received"]) == (2500, 100)
    assert summary(res.stderr)["lost"] == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_loopback_once_reports_the_client_side_only(lab, host):
    """--loopback-once (what serve uses): a loopback connection gives its client's record,
    exact bytes, and nothing from its server side, open or closed (the kernel keeps no
    state for that side at all)."""
    srv = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host else
                               socket.AF_INET)
    with srv, Life("--loopback-once", "--open-every", "200ms") as t:
        port = srv.getsockname()[1]
        c = socket.create_connection((host, port))
        a, _ = srv.accept()
        with a:
            sport = c.getsockname()[1]
            with c:
                c.sendall(b"q" * 300)
                _recv_exactly(a, 300)
                a.sendall(b"r" * 7000)
                _recv_exactly(c, 7000)
                _wait_records(t, lambda ev: any(e["state"] == "open" and e["sport"] == sport
                                                and e["dport"] == port for e in ev))
        _wait_records(t, lambda ev: "client" in by_side(ev, sport, port))
    res = t.stop()
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    mine = [e for e in events if {e["sport"], e["dport"]} == {sport, port}]
    assert {(e["role"], e["state"]) for e in mine} <= {("client", "open"), ("client", "closed")}
    client = by_side(events, sport, port)["client"]
    assert (client["bytes_sent"], client["bytes_received"]) == (300, 7000)
    assert summary(res.stderr)["lost"] == 0


def _disconnect(sock: socket.socket) -> None:
    """connect(AF_UNSPEC): the kernel's tcp_disconnect, the socket back to CLOSE, reusable
    (Python's connect() cannot pass AF_UNSPEC)."""
    libc = ctypes.CDLL(None, use_errno=True)
    unspec = (ctypes.c_ubyte * 16)()  # sa_family 0 (AF_UNSPEC)
    if libc.connect(sock.fileno(), unspec, len(unspec)) != 0:
        raise OSError(ctypes.get_errno(), "connect(AF_UNSPEC)")


def test_one_socket_connecting_again_gives_one_record_per_connection(lab):
    """The kernel keeps a closed socket's state until the socket goes (no delete at close):
    one socket that fails to connect, connects, is disconnected and connects again gives
    exactly one record per attempt, each with its own bytes and start, as serve runs
    tcplife (--loopback-once --failed-connects)."""
    srv = socket.create_server(("127.0.0.1", 0))
    refused = socket.create_server(("127.0.0.1", 0))
    closed_port = refused.getsockname()[1]
    refused.close()
    with srv, Life("--loopback-once", "--failed-connects", "--open-every", "200ms") as t:
        port = srv.getsockname()[1]
        c = socket.socket()
        with c:
            assert c.connect_ex(("127.0.0.1", closed_port)) == errno.ECONNREFUSED
            sports = []
            for req, resp in ((111, 2222), (333, 4444)):
                c.connect(("127.0.0.1", port))
                sports.append(c.getsockname()[1])
                a, _ = srv.accept()
                with a:
                    c.sendall(b"q" * req)
                    _recv_exactly(a, req)
                    a.sendall(b"r" * resp)
                    _recv_exactly(c, resp)
                    _disconnect(c)  # an RST: the server side closes too
        _wait_records(t, lambda ev: all("client" in by_side(ev, p, port) for p in sports)
                      and any(e["state"] == "refused" for e in ev))
    res = t.stop()
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    failed = [e for e in events if e["state"] == "refused" and e["dport"] == closed_port]
    assert len(failed) == 1, failed
    cookie = failed[0]["cookie"]
    mine = [e for e in events if e["cookie"] == cookie and e["state"] != "open"]
    assert [e["state"] for e in mine] == ["refused", "closed", "closed"], mine
    first, second = mine[1], mine[2]
    assert (first["bytes_sent"], first["bytes_received"]) == (111, 2222)
    assert (second["bytes_sent"], second["bytes_received"]) == (333, 4444)
    assert first["role"] == second["role"] == "client"
    assert first["start_seen"] and second["start_seen"]
    assert second["duration_ns"] > 0 and first["duration_ns"] > 0
    assert summary(res.stderr)["lost"] == 0


@pytest.mark.parametrize("case", ["refused", "unreachable-blocking", "unreachable-nonblocking"])
def test_failed_connects_are_named_from_the_socket_error(lab, case):
    """--failed-connects (what serve uses instead of running tcpconnect beside): a connect
    that never got established gives one client record whose state says why, named as
    the errno the connecting process got; an ICMP error the process read with SO_ERROR
    before closing is kept by the error-report program."""
    web = lab.pod("web")
    with Life("-n", "default", "--failed-connects") as t:
        if case == "refused":
            c = connect(lab, "mypod", web.ipv4, 8099)
            host, port, want = web.ipv4, 8099, "refused"
        else:
            c = connect(lab, "mypod", EXTERNAL_UNREACHABLE, 80,
                        timeout=0 if case == "unreachable-blocking" else 5)
            host, port, want = EXTERNAL_UNREACHABLE, 80, "unreachable"
        _wait_records(t, lambda ev: any(e["pid"] == c["pid"] for e in ev))
    res = t.stop()
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    mine = [e for e in events if e["pid"] == c["pid"]]
    assert len(mine) == 1, mine
    e = mine[0]
    assert c["errno"] in ((errno.ECONNREFUSED,) if want == "refused" else
                          (errno.EHOSTUNREACH, errno.ENETUNREACH))
    assert e["state"] == want and e["role"] == "client" and e["comm"] == c["comm"]
    assert (e["daddr"], e["dport"]) == (host, port)
    assert e["src"]["endpoint"].startswith("p/default/mypod:")
    assert e["bytes_sent"] == e["bytes_received"] == 0 and e["duration_ns"] > 0
    assert summary(res.stderr)["lost"] == 0


def test_service_address_names_the_service_and_role_filter(lab):
    with Life("-n", "default", "--role", "client") as t:
        out = lab.exec("mypod", ["curl", "-s", "-o", "/dev/null", "http://10.96.0.10/"],
                       capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not [
                e for e in records(t) if e["dport"] == 80 and e["daddr"] == "10.96.0.10"]:
            time.sleep(0.1)
    res = t.stop()
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    mine = [e for e in events if e["daddr"] == "10.96.0.10"]
    assert len(mine) == 1 and mine[0]["dst"]["endpoint"] == "s/default/web:80"
    assert mine[0]["comm"] == "curl" and mine[0]["bytes_received"] > 0
    assert all(e["role"] == "client" for e in events)


def test_sqlite_and_summary_on_sigterm(lab, tmp_path):
    web = lab.pod("web")
    db = tmp_path / "life.db"
    with Server(lab, "web", PORT), Life("-n", "default", "--sqlite", str(db)) as t:
        info = exchange(lab, "mypod", web.ipv4, PORT, req=5, resp=6, count=4)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(
                len(by_side(records(t), p)) for p in info["sports"]) < 8:
            time.sleep(0.1)
        assert t.proc is not None
        t.proc.terminate()
    out = subprocess.run(["sqlite3", str(db), "select role, bytes_sent, bytes_received, "
                          "src_endpoint from tcplife where state = 'closed' and "
                          f"(sport = {PORT} or dport = {PORT}) order by role"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["client|13|6|p/default/mypod"] * 4 + ["server|6|13|p/default/web"] * 4


@pytest.mark.parametrize("args,message", [
    (["--role", "both"], "invalid choice"),
    (["--open-every", "soon"], "--open-every"),
    (["--ring-size", "1000"], "--ring-size"),
])
def test_bad_input_is_one_line(args, message):
    res = run_cli("trace", "tcplife", *args)
    assert res.returncode == 2 and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
