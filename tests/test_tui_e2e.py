"""The live view end to end: the real command in a real terminal (tmux) against lab traffic.

What a person does, read back with ``tmux capture-pane``: a known transfer
appears, a typed filter hides it and Backspace brings it back, a view switch
shows the DNS column with a real answer, Ctrl-C (a key, in the view) and
SIGTERM (from outside) both end the run with a JSON file whose every line
parses and an SQLite file that passes its integrity check, holding the
transfer the screen showed.

Key-press latencies (send-keys to the screen showing the change) are printed
(``-s``), never asserted: bench/tui.py measures them under load.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from flowsrun import dns_query, send_udp
from tmuxterm import Terminal
from tracing import connect

pytestmark = [pytest.mark.root]

FRONTEND = "10.244.0.4"
BACKEND = "10.244.0.5"
DNS_SERVICE_IP = "10.96.0.53"
KNOWN_NAME = "web.default.svc.cluster.local"
BACKEND_HTTP = 9090
SPORT = 47321  # the known transfer's source port, away from ephemeral ports
DPORT = 47322


def rows_with(screen: str, text: str) -> list[str]:
    """Table rows (not the filter bar) that show ``text``."""
    return [line for line in screen.splitlines()
            if text in line and not line.lstrip().startswith(("filters:", "no filter"))]


def check_files(json_path: Path, db: Path, table: str) -> list[dict[str, Any]]:
    text = json_path.read_text()
    assert text == "" or text.endswith("\n"), "the JSON file ends in a cut line"
    records = [json.loads(line) for line in text.splitlines()]
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (rows,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        meta = dict(conn.execute("SELECT key, value FROM capture").fetchall())
    assert rows == len(records) == int(meta["records"]), (rows, len(records), meta)
    return records


def latency(term: Terminal, keys: list[str], cond: Any, what: str) -> float:
    at = term.keys(*keys)
    term.wait(cond, what)
    took = time.monotonic() - at
    print(f"key {keys} -> {what}: {took * 1000:.0f} ms")
    return took


def test_flows_view_shows_filters_switches_and_stops_with_complete_files(lab, tmp_path):
    if lab.nameserver is None:
        pytest.skip(f"the lab has no cluster DNS: {lab.dns_off_reason}")
    json_path, db = tmp_path / "flows.json", tmp_path / "flows.db"
    term = Terminal(["flows", "--dns", "--interval", "0.5", "-n", "shop",
                     "--json", str(json_path), "--sqlite", str(db)], tmp_path)
    try:
        term.wait(lambda s: "view: standard" in s and "SRC" in s, "the view's title and header")
        send_udp(lab, "shop/frontend", BACKEND, DPORT, 20, 100, sport=SPORT)
        mark = f"p/shop/frontend:{SPORT}"
        screen = term.wait(lambda s: bool(rows_with(s, mark)), "the known transfer's flow")
        row = rows_with(screen, mark)[0]
        assert f"p/shop/backend:{DPORT}" in row and "udp" in row

        # A typed filter hides it; Backspace on the empty line brings it back.
        term.text(f"!sport:{SPORT}")
        latency(term, ["Enter"], lambda s: not rows_with(s, mark) and f"[!sport:{SPORT}]" in s,
                "a typed filter hides the flow")
        latency(term, ["BSpace"], lambda s: bool(rows_with(s, mark)) and "filters:" not in s,
                "Backspace removes the filter")

        # Right to the DNS view: its column, with a real answer in it.
        reply = dns_query(lab, "shop/frontend", DNS_SERVICE_IP, KNOWN_NAME)
        assert reply["rcode_name"] == "NOERROR", reply
        latency(term, ["Right", "Right"], lambda s: "view: DNS" in s, "the DNS view")
        screen = term.wait(lambda s: f"A {KNOWN_NAME} NOERROR" in s, "a DNS answer in its column")
        header = next(line for line in screen.splitlines() if " DNS" in line and "SRC" in line)
        assert "BYTES" in header

        # Identity columns: page down to workload, then node.
        latency(term, ["PageDown"], lambda s: "ids: workload" in s and "SRC.WORKLOAD" in s,
                "the workload columns")
        # Rate mode aggregates per pod pair.
        latency(term, ["C-t"], lambda s: "rate by pod pair" in s and "BYTES/S" in s,
                "rate mode")

        # Ctrl-C: the run finishes its files, then the view closes.
        term.keys("C-c")
        assert term.wait_exit() == 0, term.stderr()
    finally:
        term.close()
    err = term.stderr()
    assert "Traceback" not in err, err
    assert "podsight: capturing flows" in err and "flow records" in err.splitlines()[-2], err
    records = check_files(json_path, db, "flows")
    ours = [r for r in records if r["sport"] == SPORT and r["dport"] == DPORT]
    assert ours and sum(r["packets"] for r in ours) == 20
    assert any(a.get("name") == KNOWN_NAME for r in records for a in r.get("dns", []))


def test_trace_tcpconnect_tui_shows_connects_with_details_and_sigterm_ends_it(lab, tmp_path):
    json_path, db = tmp_path / "connects.json", tmp_path / "connects.db"
    term = Terminal(["trace", "tcpconnect", "--tui", "-n", "shop", "--json", str(json_path),
                     "--sqlite", str(db)], tmp_path, height=70)
    try:
        term.wait(lambda s: "podsight tcpconnect" in s and "RESULT" in s, "the view")
        client = connect(lab, "shop/frontend", BACKEND, BACKEND_HTTP)
        assert client["errno"] == 0, client
        mark = f"p/shop/frontend:{client['sport']}"
        screen = term.wait(lambda s: bool(rows_with(s, mark)), "the connect")
        row = rows_with(screen, mark)[0]
        assert " ok" in row and str(client["pid"]) in row
        # Its details: the process and the pods on both sides.
        term.text(f"sport:{client['sport']}")
        term.keys("Enter")
        term.wait(lambda s: "shown 1 of 1" in s, "the filter narrowing to the connect")
        latency(term, ["C-d"], lambda s: "src: p/shop/frontend" in s and "dst: p/shop/backend"
                in s, "the detail pane")
        screen = term.screen()
        assert "container" in screen and "node" in screen  # the process's side, in full
        assert f"pid {client['pid']}".replace(" ", "") in screen.replace(" ", "")
        assert f"comm {client['comm']}".replace(" ", "") in screen.replace(" ", "")
        term.keys("C-p")
        term.wait(lambda s: "PAUSED" in s, "pause")
        # SIGTERM from outside, with the view open: same clean end as Ctrl-C.
        os.kill(term.command_pid(), signal.SIGTERM)
        assert term.wait_exit() == 0, term.stderr()
    finally:
        term.close()
    err = term.stderr()
    assert "Traceback" not in err, err
    assert err.splitlines()[-2].startswith("podsight: ") and " events, " in err, err
    records = check_files(json_path, db, "tcpconnect")
    assert any(r["sport"] == client["sport"] and r["result"] == "ok" for r in records)


STORM = r"""
import socket, sys
n = int(sys.argv[1])
for _ in range(n):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", 9))
    except OSError:
        pass
    s.close()
print(n, flush=True)
"""


def test_the_screen_samples_a_storm_and_the_json_file_has_every_connect(lab, tmp_path):
    """Thousands of connects a second: the screen decodes a sample, the file gets them all."""
    import subprocess
    import sys

    json_path = tmp_path / "storm.json"
    term = Terminal(["trace", "tcpconnect", "--tui", "--dport", "9", "--json", str(json_path)],
                    tmp_path)
    total = 40_000
    try:
        term.wait(lambda s: "podsight tcpconnect" in s and "RESULT" in s, "the view")
        done = subprocess.run([sys.executable, "-c", STORM, str(total)], capture_output=True,
                              text=True, timeout=300, check=True)
        assert int(done.stdout) == total
        term.wait(lambda s: f"{total} written" in s, "every connect written")
        screen = term.screen()
        print(next(line for line in screen.splitlines() if " written" in line))
        assert "screen samples 1 in" in screen
        latency(term, ["C-t"], lambda s: "EVENTS/S" in s, "rate mode during a storm")
        term.keys("C-c")
        assert term.wait_exit() == 0, term.stderr()
    finally:
        term.close()
    lines = json_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == total and all(r["dport"] == 9 for r in records)
    assert f"podsight: {total} events, 0 lost" in term.stderr(), term.stderr()


@pytest.mark.parametrize("snaplen", ["262144", "96"], ids=["stream", "slot"])
def test_packets_opens_the_view_with_decoded_headers_and_ctrl_c_leaves_the_pcapng(
        lab, tmp_path, snaplen):
    """`podsight packets` on a terminal: the view by default, a packet of a known transfer in
    it, its headers decoded in the detail pane; Ctrl-C leaves a file with every packet. Both
    capture programs: per-CPU streams (whole packets) and fixed-size slots (-s 96)."""
    from packetsrun import fields, statistics

    out = tmp_path / "view.pcapng"
    port, sport = 7231, 47331
    term = Terminal(["packets", "-n", "shop", "-s", snaplen, "-w", str(out),
                     f"udp port {port}"], tmp_path, height=70)
    try:
        term.wait(lambda s: "podsight packets" in s and "IFACE" in s, "the packets view")
        send_udp(lab, "shop/frontend", BACKEND, port, 10, 100, sport=sport)
        mark = f"p/shop/frontend:{sport}"
        screen = term.wait(lambda s: len(rows_with(s, mark)) == 20, "the transfer's packets")
        rows = rows_with(screen, mark)
        assert all(f"p/shop/backend:{port}" in r and "udp" in r and "142" in r.split()
                   for r in rows), screen
        assert any("p/shop/frontend " in r and "egress" in r for r in rows)
        assert any("p/shop/backend " in r and "ingress" in r for r in rows)
        assert "view.pcapng" in screen
        latency(term, ["C-d"], lambda s: f"UDP {sport} > {port} len 108" in s,
                "the detail pane's decoded headers")
        screen = term.screen()
        assert f"IPv4 {FRONTEND} > {BACKEND} udp len 128" in screen, screen
        assert "Ethernet 02:" in screen  # the hex dump follows, below the fold
        term.keys("C-c")
        assert term.wait_exit() == 0, term.stderr()
    finally:
        term.close()
    err = term.stderr()
    assert "Traceback" not in err, err
    assert "podsight: 20 packets captured, 20 received by filter on 2 interfaces" in err, err
    assert " 0 lost" in err, err
    got = fields(out, "udp.srcport", "udp.dstport", "frame.len", "frame.cap_len")
    assert got == [[str(sport), str(port), "142", str(min(142, int(snaplen)))]] * 20
    assert set(statistics(out)) == {0, 1}
