"""`podsight flows` end to end: tc programs on the lab's veths, real traffic between pods.

Counts are checked against what the test itself sent (headers included),
filters against a traffic mix where each rule must take some flows and
leave the others, and every output file is read back with an independent
reader (json, the sqlite3 CLI).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flowsrun import FlowsRun, flows_of, run_flows, send_udp
from tracing import connect

from podsight.gadgets.flows.schema import schema
from podsight.timefmt import Clock

pytestmark = pytest.mark.root

FRONTEND, BACKEND, WEB = "10.244.0.4", "10.244.0.5", "10.244.0.3"
FRONTEND6, BACKEND6 = "fd00:244::4", "fd00:244::5"
ETH, IPV4, IPV6, UDP = 14, 20, 40, 8

JSON_KEYS = {"start", "end", "ip", "proto", "saddr", "sport", "daddr", "dport", "src", "dst",
             "bytes", "packets", "tcp_flags", "dscp", "interfaces"}


def one(records: list[dict], **want: object) -> dict:
    found = flows_of(records, **want)
    assert len(found) == 1, f"expected one record matching {want}, got {found}"
    return found[0]


def test_udp_counts_match_what_was_sent_and_a_flow_on_two_veths_counts_once(lab):
    """frontend -> backend crosses pslh4 (ingress) and pslh5 (egress): one record, both named."""
    with FlowsRun("-n", "shop") as run:
        sport = send_udp(lab, "frontend", BACKEND, 7101, 10, 100)
        sport6 = send_udp(lab, "frontend", BACKEND6, 7101, 7, 300)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    v4 = one(result.records, proto="udp", saddr=FRONTEND, sport=sport, daddr=BACKEND, dport=7101)
    assert v4["packets"] == 10
    assert v4["bytes"] == 10 * (100 + UDP + IPV4 + ETH)
    assert {(i["name"], i["direction"]) for i in v4["interfaces"]} == {
        ("pslh4", "ingress"), ("pslh5", "egress")}
    assert v4["src"]["pod"] == "frontend" and v4["dst"]["pod"] == "backend"
    assert v4["src"]["namespace"] == "shop" and v4["ip"] == 4
    assert v4.keys() >= JSON_KEYS
    v6 = one(result.records, proto="udp", saddr=FRONTEND6, sport=sport6, daddr=BACKEND6)
    assert (v6["packets"], v6["bytes"]) == (7, 7 * (300 + UDP + IPV6 + ETH))
    assert v6["ip"] == 6 and v6["dst"]["pod"] == "backend"
    assert result.summary["lost"] == 0
    assert result.summary["records"] == len(result.records)


EXT_SENDER = r"""
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
# An 8-byte destination options header (PadN only) between IPv6 and UDP.
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, bytes([0, 0, 1, 4, 0, 0, 0, 0]))
s.bind(("::", 0))
for _ in range(3):
    s.sendto(b"e" * 40, (sys.argv[1], 7111))
print(s.getsockname()[1])
"""


def test_ipv6_extension_headers_are_walked_to_the_transport(lab):
    """A datagram behind a destination options header is still udp with its ports."""
    with FlowsRun("--podname", "frontend", "-n", "shop", "--dport", "7111") as run:
        proc = lab.exec("frontend", [sys.executable, "-c", EXT_SENDER, BACKEND6],
                        capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
    record = one(run.stop().records, saddr=FRONTEND6, sport=int(proc.stdout))
    assert record["proto"] == "udp" and record["packets"] == 3
    assert record["bytes"] == 3 * (40 + UDP + 8 + IPV6 + ETH)


TIMED_SENDER = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 0))
marks = []
for _ in range(2):
    before = time.time_ns()
    s.sendto(b"t" * 10, (sys.argv[1], 7112))
    marks.append((before, time.time_ns()))
    time.sleep(0.3)
print(json.dumps({"sport": s.getsockname()[1], "marks": marks}))
"""


def _epoch_ns(rfc3339: str) -> int:
    """'2026-11-22T10:11:12.123456789Z' -> ns since the epoch (datetime stops at us)."""
    import calendar
    whole, _, frac = rfc3339.rstrip("Z").partition(".")
    secs = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    return secs * 1_000_000_000 + int(frac.ljust(9, "0")[:9])


def test_start_and_end_are_the_first_and_last_packet(lab):
    """start is exact; end comes from the coarse clock: within one tick (4 ms) of the packet."""
    with FlowsRun("--podname", "frontend", "-n", "shop", "--dport", "7112") as run:
        proc = lab.exec("frontend", [sys.executable, "-c", TIMED_SENDER, BACKEND],
                        capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
    sent = json.loads(proc.stdout)
    record = one(run.stop().records, saddr=FRONTEND, sport=sent["sport"])
    assert record["packets"] == 2
    (first_before, first_after), (last_before, last_after) = sent["marks"]
    start, end = _epoch_ns(record["start"]), _epoch_ns(record["end"])
    first, last = (first_before + first_after) // 2, (last_before + last_after) // 2
    # 300 ms apart: start belongs to the first packet, end to the last (the coarse clock of
    # end is a tick early at most, far less than the gap), whatever the machine's load.
    assert abs(start - first) < abs(start - last), (record, sent)
    assert abs(end - last) < abs(end - first), (record, sent)
    assert end - start >= 250_000_000


def test_tcp_flags_and_both_directions(lab):
    with FlowsRun("--podname", "frontend", "-n", "shop") as run:
        client = connect(lab, "frontend", WEB, 8080)
    result = run.stop()
    fwd = one(result.records, proto="tcp", saddr=FRONTEND, sport=client["sport"], dport=8080)
    back = one(result.records, proto="tcp", daddr=FRONTEND, dport=client["sport"], sport=8080)
    assert "SYN" in fwd["tcp_flags"] and "SYN_ACK" not in fwd["tcp_flags"]
    assert "SYN_ACK" in back["tcp_flags"]
    assert "FIN" in fwd["tcp_flags"] or "RST" in fwd["tcp_flags"]
    assert fwd["dst"]["pod"] == "web" and back["src"]["pod"] == "web"


def test_a_service_address_is_named_as_the_service(lab):
    """Before DNAT the client talks to the ClusterIP: that end is s/default/web, not raw."""
    with FlowsRun("--podname", "frontend", "-n", "shop", "--protocol", "tcp") as run:
        client = connect(lab, "frontend", "10.96.0.10", 80)
    records = run.stop().records
    fwd = one(records, saddr=FRONTEND, sport=client["sport"], daddr="10.96.0.10")
    assert fwd["dst"]["endpoint"] == "s/default/web:80" and fwd["dst"]["kind"] == "service"


def test_icmp_type_and_code(lab):
    with FlowsRun("--podname", "frontend", "-n", "shop", "--protocol", "icmp") as run:
        lab.exec("frontend", ["ping", "-c", "2", "-i", "0.2", "-W", "1", BACKEND],
                 capture_output=True, check=True, timeout=10)
    records = run.stop().records
    request = one(records, saddr=FRONTEND, daddr=BACKEND)
    reply = one(records, saddr=BACKEND, daddr=FRONTEND)
    assert request["proto"] == "icmp" and request["packets"] == 2
    assert request["icmp"] == {"type": 8, "code": 0}
    assert reply["icmp"] == {"type": 0, "code": 0}


# -- filters --------------------------------------------------------------------------
#
# One traffic mix from frontend, every filter run side by side (which also proves
# several runs share one clsact qdisc). Flows are named by letter:
#   A udp frontend:41001 -> backend:7001      B udp frontend:41002 -> web:7002
#   C tcp frontend -> web:8080                D icmp echo frontend -> backend
#   E udp [frontend]:41003 -> [backend]:7003

MIX_FLOWS = {
    "A": {"proto": "udp", "saddr": FRONTEND, "daddr": BACKEND, "dport": 7001},
    "B": {"proto": "udp", "saddr": FRONTEND, "daddr": WEB, "dport": 7002},
    "C": {"proto": "tcp", "saddr": FRONTEND, "daddr": WEB, "dport": 8080},
    "C-reply": {"proto": "tcp", "saddr": WEB, "daddr": FRONTEND, "sport": 8080},
    "D": {"proto": "icmp", "saddr": FRONTEND, "daddr": BACKEND},
    "D-reply": {"proto": "icmp", "saddr": BACKEND, "daddr": FRONTEND},
    "E": {"proto": "udp", "saddr": FRONTEND6, "daddr": BACKEND6, "dport": 7003},
}

FILTERS: list[tuple[str, str, str]] = [
    # (flags, flows it must show, flows it must not show)
    ("--dport 7001", "A", "B C D E"),
    ("--sport 41002", "B", "A C D E"),
    ("--port 7001-7002", "A B", "C D E"),
    ("--protocol icmp", "D D-reply", "A B C E"),
    ("--protocol tcp", "C C-reply", "A B D E"),
    ("--cidr 10.244.0.5/32", "A D D-reply", "B C E"),
    ("--cidr 10.244.0.4/32 --peer-ip 10.244.0.3", "B C C-reply", "A D E"),
    ("--peer-cidr 10.244.0.5/32", "A D", "B C E"),
    ("--cidr fd00:244::/64", "E", "A B C D"),
    ("--icmp-type 8", "D", "D-reply A C"),
    ("--icmp-type 0 --icmp-code 0", "D-reply", "D A"),
    ("--tcp-flags SYN-ACK", "C-reply", "C A D"),
    ("--dport 7001 or --dport 7002 or --protocol icmp --icmp-type 8", "A B D", "C D-reply E"),
    ("--protocol udp --dport 7003", "E", "A B C D"),
]


def _mix(lab) -> None:
    send_udp(lab, "frontend", BACKEND, 7001, 3, 50, sport=41001)
    send_udp(lab, "frontend", WEB, 7002, 3, 50, sport=41002)
    send_udp(lab, "frontend", BACKEND6, 7003, 3, 50, sport=41003)
    connect(lab, "frontend", WEB, 8080)
    lab.exec("frontend", ["ping", "-c", "1", "-W", "1", BACKEND], capture_output=True,
             check=True, timeout=10)


def test_each_filter_takes_what_it_should_and_leaves_the_rest(lab):
    runs = []
    try:
        for flags, _, _ in FILTERS:
            run = FlowsRun("--podname", "frontend", "-n", "shop", *flags.split())
            runs.append(run.__enter__())
        direction = FlowsRun("--podname", "frontend", "-n", "shop", "--direction", "egress")
        runs.append(direction.__enter__())
        _mix(lab)  # synchronous: the final harvest, after detach, reads all of it
    finally:
        results = [run.stop() for run in runs]
    problems = []
    for (flags, want, unwanted), result in zip(FILTERS, results, strict=False):
        assert result.returncode == 0, f"{flags}: {result.stderr}"
        for name in want.split():
            if not flows_of(result.records, **MIX_FLOWS[name]):
                problems.append(f"{flags!r} missed {name}")
        for name in unwanted.split():
            if flows_of(result.records, **MIX_FLOWS[name]):
                problems.append(f"{flags!r} let {name} through")
    assert not problems, problems
    # Egress of the frontend's host-side veth is traffic *to* the pod: replies only.
    egress = results[-1].records
    assert flows_of(egress, **MIX_FLOWS["C-reply"]) and flows_of(egress, **MIX_FLOWS["D-reply"])
    assert not flows_of(egress, **MIX_FLOWS["A"])
    assert all(i["direction"] == "egress" for r in egress for i in r["interfaces"])


def test_tcp_flags_filter_keeps_only_matching_packets(lab):
    """--tcp-flags SYN counts the SYN and the SYN-ACK (both carry SYN), nothing else."""
    with FlowsRun("--podname", "frontend", "-n", "shop", "--tcp-flags", "SYN") as run:
        client = connect(lab, "frontend", WEB, 8080)
    records = run.stop().records
    fwd = one(records, proto="tcp", sport=client["sport"], dport=8080)
    back = one(records, proto="tcp", sport=8080, dport=client["sport"])
    assert fwd["packets"] == 1 and fwd["tcp_flags"] == ["SYN"]
    assert back["packets"] == 1 and "SYN_ACK" in back["tcp_flags"]


# -- outputs ---------------------------------------------------------------------------


def sqlite3(path: Path, sql: str) -> str:
    """The Debian sqlite3 CLI, an independent reader of what podsight wrote."""
    return subprocess.run(["sqlite3", "-readonly", str(path), sql], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_sqlite_file_read_back_with_sqlite3(lab, tmp_path):
    db = tmp_path / "flows.db"
    with FlowsRun("--podname", "frontend", "-n", "shop", "--sqlite", str(db)) as run:
        sport = send_udp(lab, "frontend", BACKEND, 7201, 5, 64)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    assert sqlite3(db, "PRAGMA integrity_check") == "ok"
    names = sqlite3(db, "SELECT name FROM pragma_table_info('flows') ORDER BY cid").split()
    assert names == ["id", *(c.name for c in schema(Clock()).sql_columns)]
    row = sqlite3(db, "SELECT packets, bytes, src_namespace, src_name, dst_kind, dst_name, "
                      f"interfaces FROM flows WHERE sport = {sport} AND dport = 7201")
    assert row == f"5|{5 * (64 + UDP + IPV4 + ETH)}|shop|frontend|pod|backend|pslh4"
    assert int(sqlite3(db, "SELECT count(*) FROM flows")) == len(result.records)
    documented = sqlite3(db, "SELECT name FROM columns ORDER BY rowid").split()
    assert documented == names[1:]
    assert sqlite3(db, "SELECT value FROM capture WHERE key = 'gadget'") == "flows"
    assert "podsight" in sqlite3(db, "SELECT value FROM capture WHERE key = 'command'")


def test_sqlite_refuses_to_overwrite_a_file(tmp_path):
    db = tmp_path / "keep.db"
    db.write_text("precious")
    proc = run_flows("--sqlite", str(db), "--max-time", "1")
    assert proc.returncode != 0
    assert "exists" in proc.stderr and "Traceback" not in proc.stderr
    assert db.read_text() == "precious"


FLOOD = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + float(sys.argv[2])
port = 20000
while time.monotonic() < end:
    for _ in range(200):
        s.sendto(b"y" * 32, (sys.argv[1], port))
        port = 20000 + (port - 19999) % 2000
    time.sleep(0.01)
"""


def test_ctrl_c_during_traffic_leaves_complete_files(lab, tmp_path):
    db = tmp_path / "flows.db"
    flood = lab.popen("frontend", [sys.executable, "-c", FLOOD, BACKEND, "30"])
    try:
        with FlowsRun("--podname", "frontend", "-n", "shop", "--protocol", "udp",
                      "--sqlite", str(db), "--interval", "0.2") as run:
            deadline = time.monotonic() + 30
            while run.peek().count("\n") < 150 and time.monotonic() < deadline:
                time.sleep(0.05)
            result = run.stop(signal.SIGINT)
    finally:
        flood.kill()
        flood.wait()
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    for line in result.stdout.splitlines():
        json.loads(line)  # every line a whole object
    assert sqlite3(db, "PRAGMA integrity_check") == "ok"
    assert int(sqlite3(db, "SELECT count(*) FROM flows")) == len(result.records) > 100
    assert sqlite3(db, "SELECT count(*) FROM capture WHERE key = 'ended'") == "1"


def test_max_time_and_max_bytes_stop_the_run(lab, tmp_path):
    timed = run_flows("--no-tui", "-o", "json", "--max-time", "1.5", "--host")
    assert timed.returncode == 0, timed.stderr
    assert "stopped: --max-time reached" in timed.stderr
    flood = lab.popen("frontend", [sys.executable, "-c", FLOOD, BACKEND, "30"])
    try:
        capped = run_flows("--no-tui", "-o", "json", "--max-bytes", "20K", "--interval", "0.2",
                           "--podname", "frontend", "-n", "shop", "--max-time", "30")
    finally:
        flood.kill()
        flood.wait()
    assert capped.returncode == 0, capped.stderr
    assert "stopped: --max-bytes reached" in capped.stderr
    assert len(capped.stdout) >= 20 * 1024
    for line in capped.stdout.splitlines():
        json.loads(line)


# -- no silent loss --------------------------------------------------------------------

CHURN = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
host, total, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
start = time.monotonic()
for i in range(total):
    s.sendto(b"z", (host, 20000 + i))
    if i % 500 == 499:
        ahead = start + (i + 1) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
print(s.getsockname()[1])
"""


@pytest.mark.parametrize("max_flows", [None, 256])
def test_churn_of_20k_flows_loses_nothing(lab, max_flows):
    """20k distinct flows in 2 s: every one is reported once, with a small table too.

    With --max-flows 256 most flows overflow the table each interval and go
    through the ring buffer; the count must still be exact.
    """
    total = 20000
    extra = ["--max-flows", str(max_flows)] if max_flows else []
    with FlowsRun("--podname", "frontend", "-n", "shop", "--protocol", "udp",
                  "--dport", "20000-39999", *extra) as run:
        proc = lab.exec("frontend", [sys.executable, "-c", CHURN, BACKEND, str(total), "10000"],
                        capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        sport = int(proc.stdout)
    result = run.stop()  # detached first, then the last harvest: every packet is counted
    assert result.returncode == 0, result.stderr
    ours = flows_of(result.records, saddr=FRONTEND, sport=sport)
    assert len(ours) == total, result.stderr
    assert len({r["dport"] for r in ours}) == total
    assert all(r["packets"] == 1 for r in ours)
    assert result.summary["lost"] == 0, result.stderr
    if max_flows:
        assert "went through the ring" in result.stderr


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("args", [
    ["--cidr", "10.0.0.300/8"],
    ["--peer-ip", "not-an-ip"],
    ["--port", "70000"],
    ["--port", "100-80"],
    ["--protocol", "foo"],
    ["--protocol", "tcp", "--icmp-type", "8"],
    ["--tcp-flags", "BOGUS"],
    ["--dport", "80", "or"],
    ["--dport", "80", "or", "--bogus"],
    ["--dport", "80", "extra"],
    ["--interval", "0"],
    ["--max-bytes", "-1"],
    ["--max-flows", "0"],
    ["-o", "yaml"],
])
def test_bad_input_is_one_line_and_nonzero(args):
    proc = run_flows(*args)
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_more_cidrs_than_any_fixed_table_holds(lab):
    """The LPM tries are sized to the rules: 400 networks in one --cidr work (a 256-entry
    table used to fail with ENOSPC), and they still filter."""
    others = [f"10.99.{i // 200}.{i % 200}" for i in range(399)]
    with FlowsRun("--podname", "frontend", "-n", "shop", "--protocol", "udp",
                  "--cidr", ",".join([*others, f"{BACKEND}/32"])) as run:
        sport = send_udp(lab, "frontend", BACKEND, 7301, 3, 16)
        send_udp(lab, "frontend", WEB, 7302, 3, 16)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    assert one(result.records, sport=sport, dport=7301)["packets"] == 3
    assert not flows_of(result.records, daddr=WEB, dport=7302)
