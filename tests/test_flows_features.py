"""`podsight flows` feature flags end to end: --dns, --drops, --drops-only, --rtt, --enable-all.

Real kernel programs, real lab pods, real servers: dnsmasq answers the DNS
queries, an nftables rule in a pod's netns drops the datagrams, the NFQUEUE
delay line stretches the round trips. Every expected value comes from
outside podsight: the id we put in the query (and the server echoed), the
counter of the nft rule that dropped the packets, the kernel's own tracefs
list of drop reasons, the delay we injected, the sqlite3 CLI reading the file.

Traffic is sent from shop/frontend and every run watches that pod only
(``-n shop -p frontend``: its veth pslh4), so other pods' chatter stays out.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flowsrun import FlowsRun, send_udp

from podsight.ebpf.btf import drop_reasons

pytestmark = pytest.mark.root

CLIENT_POD = "shop/frontend"
CLIENT_IP = "10.244.0.4"
BACKEND_POD = "shop/backend"
BACKEND_IP = "10.244.0.5"
BACKEND_HTTP = 9090
DNS_POD_IP = "10.244.0.6"
DNS_SERVICE_IP = "10.96.0.53"
KNOWN_NAME = "web.default.svc.cluster.local"  # NOERROR, A 10.96.0.10
POD_NAME = "frontend.shop.pod.cluster.local"  # NOERROR, A and AAAA
WATCH_CLIENT = ("-n", "shop", "-p", "frontend")

# UDP ports of this file's datagrams, away from ephemeral ports and the lab's servers.
DROP_PORT = 47001  # dropped by the nft rule in shop/backend
DROP_SPORT = 47002
NOSOCK_PORT = 47003  # nothing listens: the kernel itself drops with NO_SOCKET
NOSOCK_SPORT = 47004
NFT_TABLE = "podsight_test_drop"
TRACEFS_KFREE_SKB = Path("/sys/kernel/tracing/events/skb/kfree_skb/format")

# One DNS query with an id we choose, so the id on the wire is known; prints the
# client's port. parse_reply raises unless the reply carries that same id.
DNS_CLIENT = r"""
import json, socket, struct, sys
from podsight.lab.dnsquery import QTYPES, build_query, parse_reply
server, name, qtype, ident, transport = sys.argv[1:6]
ident, tcp = int(ident), transport == "tcp"
msg = build_query(name, QTYPES[qtype], ident)
if tcp:
    s = socket.create_connection((server, 53), 5)
    s.sendall(struct.pack("!H", len(msg)) + msg)
    data = b""
    while len(data) < 2 or len(data) < 2 + struct.unpack_from("!H", data)[0]:
        chunk = s.recv(65536)
        assert chunk, "server closed the connection mid-reply"
        data += chunk
    reply = parse_reply(data[2:], ident)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.connect((server, 53))
    s.send(msg)
    reply = parse_reply(s.recv(65536), ident)
out = {"sport": s.getsockname()[1], "rcode": reply.rcode_name, "answers": reply.answers}
print(json.dumps(out))
s.close()
"""

# N HTTP GETs on one keep-alive connection (many segments: many RTT samples); prints its port.
HTTP_CLIENT = r"""
import http.client, json, sys
host, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
c = http.client.HTTPConnection(host, port, timeout=10)
got = 0
for _ in range(n):
    c.request("GET", f"/bytes/{size}")
    r = c.getresponse()
    got += len(r.read())
    assert r.status == 200, r.status
print(json.dumps({"sport": c.sock.getsockname()[1], "bytes": got}))
c.close()
"""


# -- traffic -------------------------------------------------------------------------------


def dns_ask(lab: Any, server: str, name: str, ident: int, *, tcp: bool = False,
            qtype: str = "A") -> dict[str, Any]:
    """Ask the lab's dnsmasq from the client pod with our own id; {sport, rcode, answers}."""
    proc = lab.exec(CLIENT_POD, [sys.executable, "-c", DNS_CLIENT, server, name, qtype,
                                 str(ident), "tcp" if tcp else "udp"],
                    capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer


def http_gets(lab: Any, count: int = 5, size: int = 20000) -> int:
    """``count`` GETs from the client pod to shop/backend on one connection; its source port."""
    proc = lab.exec(CLIENT_POD, [sys.executable, "-c", HTTP_CLIENT, BACKEND_IP,
                                 str(BACKEND_HTTP), str(count), str(size)],
                    capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["bytes"] == count * size
    sport: int = out["sport"]
    return sport


def new_ids(n: int) -> list[int]:
    """Distinct random DNS ids: a constant id could match by accident."""
    return random.sample(range(1, 65535), n)


# -- reading records -------------------------------------------------------------------------


def of_tuple(records: list[dict[str, Any]], proto: str, saddr: str, sport: int, daddr: str,
             dport: int) -> list[dict[str, Any]]:
    """Every record of one 5-tuple (a flow crossing an interval boundary has several)."""
    return [r for r in records if (r["proto"], r["saddr"], r["sport"], r["daddr"], r["dport"])
            == (proto, saddr, sport, daddr, dport)]


def conversation(records: list[dict[str, Any]], proto: str, client: str, cport: int,
                 server: str, sport: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(client -> server records, server -> client records); both must exist."""
    out = of_tuple(records, proto, client, cport, server, sport)
    back = of_tuple(records, proto, server, sport, client, cport)
    assert out, f"no {proto} {client}:{cport} -> {server}:{sport} in {records}"
    assert back, f"no {proto} {server}:{sport} -> {client}:{cport} in {records}"
    return out, back


def dns_entries(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for r in records for d in r.get("dns", [])]


def min_rtt(records: list[dict[str, Any]]) -> int:
    """The lowest smoothed RTT over the records of one direction of a TCP connection.

    At least one record must carry an RTT. Not every one need: a record of an
    interval that held only the SYN has none (the kernel samples RTT on
    established sockets).
    """
    rtts = [r["rtt"] for r in records if "rtt" in r]
    assert rtts, f"no rtt on any record of this TCP flow: {records}"
    for rtt in rtts:
        assert 0 < rtt["min_us"] <= rtt["avg_us"] <= rtt["max_us"], rtt
        assert rtt["min_us"] <= rtt["last_us"] <= rtt["max_us"], rtt
    return min(rtt["min_us"] for rtt in rtts)


def netns_inode(netns: str) -> int:
    return os.stat(f"/run/netns/{netns}").st_ino


def tracefs_drop_reasons() -> dict[int, str] | None:
    """The kernel's own names of drop reasons, from the kfree_skb tracepoint's print format.

    None when tracefs is not mounted here (``ip netns exec`` hides it, some hosts lack it).
    """
    try:
        text = TRACEFS_KFREE_SKB.read_text()
    except OSError:
        return None
    return {int(n): name for n, name in re.findall(r'\{\s*(\d+),\s*"(\w+)"\s*\}', text)}


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def cluster_dns(lab: Any) -> None:
    """The DNS tests need the lab's dnsmasq (Debian dnsmasq-base)."""
    if lab.nameserver is None:
        pytest.skip(f"the lab has no cluster DNS: {lab.dns_off_reason}")


@pytest.fixture
def udp_drop_rule(lab: Any) -> Iterator[str]:
    """An nft table in shop/backend's netns dropping UDP to DROP_PORT, with a counter.

    The table is removed however the test ends (the netns outlives the test: it
    is the session's lab). Yields the netns name; ``nft_dropped`` reads the counter.
    """
    netns = lab.pod(BACKEND_POD).netns
    ruleset = (
        f"table inet {NFT_TABLE} {{\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f"    udp dport {DROP_PORT} counter drop\n"
        "  }\n"
        "}\n"
    )
    nft = ["ip", "netns", "exec", netns, "nft"]
    # A table left by a killed run would add a second rule and a second counter.
    subprocess.run([*nft, "delete", "table", "inet", NFT_TABLE], capture_output=True, check=False)
    subprocess.run([*nft, "-f", "-"], input=ruleset, text=True, check=True)
    try:
        yield netns
    finally:
        subprocess.run([*nft, "delete", "table", "inet", NFT_TABLE], check=False)
        left = subprocess.run([*nft, "list", "tables"], capture_output=True, text=True).stdout
        assert NFT_TABLE not in left, f"nft table {NFT_TABLE} left in {netns}"


def nft_dropped(netns: str) -> tuple[int, int]:
    """(packets, bytes) the drop rule's counter saw: what the kernel dropped, its own count."""
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "table", "inet",
                          NFT_TABLE], capture_output=True, text=True, check=True).stdout
    for item in json.loads(out)["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                return expr["counter"]["packets"], expr["counter"]["bytes"]
    raise AssertionError(f"no counter in {out}")


# -- DNS -------------------------------------------------------------------------------------


def test_dns_over_udp_and_tcp_carries_id_name_type_rcode_and_latency(lab, cluster_dns):
    """--dns decodes real dnsmasq answers, over UDP (via the kube-dns Service) and TCP.

    Each query's id is chosen here and echoed by the server, so the id podsight
    reports must be exactly it; the name, type and response code must be what
    was asked and what the client itself decoded; the latency is a real,
    positive, sub-second query-to-answer time. The response flow carries
    exactly that one answer; the query flow the same one (or none, if the
    query was harvested an interval before its answer).
    """
    ids = new_ids(5)
    queries = [  # (transport, server, name, qtype, expected rcode)
        ("udp", DNS_SERVICE_IP, KNOWN_NAME, "A", "NOERROR"),
        ("udp", DNS_SERVICE_IP, "nosuchname.default.svc.cluster.local", "A", "NXDOMAIN"),
        ("tcp", DNS_POD_IP, KNOWN_NAME, "A", "NOERROR"),
        ("tcp", DNS_POD_IP, "nosuch.example", "A", "NXDOMAIN"),
        ("udp", DNS_SERVICE_IP, POD_NAME, "AAAA", "NOERROR"),
    ]
    sent = []
    with FlowsRun("--dns", *WATCH_CLIENT) as f:
        for ident, (proto, server, name, qtype, rcode) in zip(ids, queries, strict=True):
            reply = dns_ask(lab, server, name, ident, tcp=proto == "tcp", qtype=qtype)
            assert reply["rcode"] == rcode, reply  # the server said so, on its own
            sent.append((ident, proto, server, name, qtype, rcode, reply))
    result = f.stop()
    assert result.returncode == 0, result.stderr
    assert result.summary["lost"] == 0, result.stderr

    for ident, proto, server, name, qtype, rcode, reply in sent:
        out, back = conversation(result.records, proto, CLIENT_IP, reply["sport"], server, 53)
        answers = dns_entries(back)
        assert len(answers) == 1, f"one answer expected on the response flow: {back}"
        a = answers[0]
        assert (a["id"], a["name"], a["type"], a["rcode"]) == (ident, name, qtype, rcode), a
        assert 0 < a["latency_ns"] < 1_000_000_000, a
        # The query's own flow carries the same answer (or none, if it left in an earlier
        # interval than the answer came), never a different one.
        assert all(d == a for d in dns_entries(out)), out
    aaaa = sent[-1][6]
    assert aaaa["answers"] == [["AAAA", "fd00:244::4"]]

    # Only --dns was asked: no RTT and no drops on any record, and no answer on
    # flows other than port 53.
    for r in result.records:
        assert "rtt" not in r and "drops" not in r, r
        if "dns" in r:
            assert 53 in (r["sport"], r["dport"]), r
    seen_ids = sorted(d["id"] for r in result.records for d in r.get("dns", []))
    assert set(seen_ids) == set(ids)


def test_dns_answers_need_the_flag(lab, cluster_dns):
    """Without --dns (or --enable-all) no record carries DNS answers, even for port 53."""
    with FlowsRun(*WATCH_CLIENT) as f:
        reply = dns_ask(lab, DNS_SERVICE_IP, KNOWN_NAME, new_ids(1)[0])
    result = f.stop()
    conversation(result.records, "udp", CLIENT_IP, reply["sport"], DNS_SERVICE_IP, 53)
    for r in result.records:
        assert not {"dns", "rtt", "drops"} & r.keys(), r


# -- drops -----------------------------------------------------------------------------------


def test_drops_carry_count_bytes_and_kernel_reason(lab, udp_drop_rule):
    """--drops joins each dropped packet to its flow with the kernel's reason for it.

    Two UDP flows from frontend to backend, both dropped inside backend's netns
    for different reasons: one by our nft rule (NETFILTER_DROP; its counter is
    the oracle for how many packets and bytes), one by the kernel for want of a
    socket (NO_SOCKET). The reason names come from kernel BTF; the tracepoint's
    own print format in tracefs must give the same names.
    """
    count, size = 7, 100
    nosock_count = 3
    with FlowsRun("--drops", *WATCH_CLIENT) as f:
        send_udp(lab, CLIENT_POD, BACKEND_IP, DROP_PORT, count, size, sport=DROP_SPORT)
        send_udp(lab, CLIENT_POD, BACKEND_IP, NOSOCK_PORT, nosock_count, size,
                 sport=NOSOCK_SPORT)
    result = f.stop()
    assert result.returncode == 0, result.stderr
    assert result.summary["lost"] == 0, result.stderr
    nft_packets, nft_bytes = nft_dropped(udp_drop_rule)
    assert nft_packets == count  # the oracle itself saw every datagram

    dropped = of_tuple(result.records, "udp", CLIENT_IP, DROP_SPORT, BACKEND_IP, DROP_PORT)
    assert dropped, result.records
    assert sum(r["packets"] for r in dropped) == count  # seen leaving the client pod ...
    with_drops = [r["drops"] for r in dropped if "drops" in r]
    assert with_drops, dropped
    assert sum(d["packets"] for d in with_drops) == count  # ... and every one dropped
    assert sum(d["bytes"] for d in with_drops) == nft_bytes  # L3 bytes, as nft counts them
    assert {d["reason"] for d in with_drops} == {"NETFILTER_DROP"}
    assert {d["netns"] for d in with_drops} == {netns_inode(udp_drop_rule)}

    nosock = of_tuple(result.records, "udp", CLIENT_IP, NOSOCK_SPORT, BACKEND_IP, NOSOCK_PORT)
    nosock_drops = [r["drops"] for r in nosock if "drops" in r]
    assert sum(d["packets"] for d in nosock_drops) == nosock_count, nosock
    assert {d["reason"] for d in nosock_drops} == {"NO_SOCKET"}

    # Independent oracle for the names: the kfree_skb tracepoint's __print_symbolic list.
    kernel_names = tracefs_drop_reasons()
    if kernel_names is not None:
        btf = drop_reasons()
        for name in ("NETFILTER_DROP", "NO_SOCKET"):
            numbers = [n for n, text in kernel_names.items() if text == name]
            assert len(numbers) == 1, f"{name} not in tracefs' list"
            assert btf.get(numbers[0]) == name

    # Only --drops was asked.
    for r in result.records:
        assert "rtt" not in r and "dns" not in r, r


def test_drop_reason_names_agree_with_tracefs():
    """Every reason the tracepoint can print has the same name in podsight's BTF table."""
    kernel_names = tracefs_drop_reasons()
    if kernel_names is None:
        pytest.skip(f"{TRACEFS_KFREE_SKB} not readable: tracefs not mounted")
    btf = drop_reasons()
    assert len(kernel_names) > 10, "no reasons parsed from tracefs"
    mismatched = {n: (name, btf.get(n)) for n, name in kernel_names.items()
                  if name != "MAX" and btf.get(n) != name}
    assert not mismatched


def test_drops_only_keeps_only_flows_with_drops(lab, cluster_dns, udp_drop_rule):
    """--drops-only turns drops on and reports nothing but flows that had drops.

    Delivered traffic (a DNS question and its answer) runs alongside dropped
    datagrams: the dropped flow is there with its count, the delivered one
    is not, and no record lacks drops.
    """
    count = 4
    with FlowsRun("--drops-only", *WATCH_CLIENT) as f:
        reply = dns_ask(lab, DNS_SERVICE_IP, KNOWN_NAME, new_ids(1)[0])
        send_udp(lab, CLIENT_POD, BACKEND_IP, DROP_PORT, count, 50, sport=DROP_SPORT)
    result = f.stop()
    assert result.returncode == 0, result.stderr
    assert reply["rcode"] == "NOERROR"
    assert result.records, result.stderr
    for r in result.records:
        assert r.get("drops", {}).get("packets", 0) > 0, f"a record without drops: {r}"
    dropped = of_tuple(result.records, "udp", CLIENT_IP, DROP_SPORT, BACKEND_IP, DROP_PORT)
    assert sum(r["drops"]["packets"] for r in dropped) == count
    assert {r["drops"]["reason"] for r in dropped} == {"NETFILTER_DROP"}
    assert not of_tuple(result.records, "udp", CLIENT_IP, reply["sport"], DNS_SERVICE_IP, 53)
    assert not of_tuple(result.records, "udp", DNS_SERVICE_IP, 53, CLIENT_IP, reply["sport"])
    assert result.summary["records"] == len(result.records)


# -- RTT -------------------------------------------------------------------------------------


def test_rtt_follows_an_injected_delay(lab):
    """--rtt reports the sockets' smoothed RTT: ~0.1 ms between pods, >= 50 ms delayed.

    The delay line holds every TCP packet the client pod sends for 50 ms, so
    both ends' RTT grows by it: the client's (its requests wait) on the
    request flow, the server's (the client's ACKs wait) on the response flow.
    """
    from podsight.lab.delay import delayed

    netns = lab.pod(CLIENT_POD).netns
    with FlowsRun("--rtt", *WATCH_CLIENT) as f:
        fast = http_gets(lab)
    plain = f.stop()
    with delayed(netns, 0.05), FlowsRun("--rtt", *WATCH_CLIENT) as f:
        slow = http_gets(lab)
    delayed_run = f.stop()

    for result in (plain, delayed_run):
        assert result.returncode == 0, result.stderr
        assert result.summary["lost"] == 0, result.stderr
        for r in result.records:
            assert "dns" not in r and "drops" not in r, r
            if r["proto"] != "tcp":
                assert "rtt" not in r, r

    out, back = conversation(plain.records, "tcp", CLIENT_IP, fast, BACKEND_IP, BACKEND_HTTP)
    assert min_rtt(out) < 20_000
    assert min_rtt(back) < 20_000
    out, back = conversation(delayed_run.records, "tcp", CLIENT_IP, slow, BACKEND_IP,
                             BACKEND_HTTP)
    assert min_rtt(out) >= 45_000
    assert min_rtt(back) >= 45_000


# -- everything at once ----------------------------------------------------------------------


def mixed_traffic(lab: Any) -> dict[str, Any]:
    """A DNS question, an HTTP exchange and dropped datagrams from the client pod."""
    ident = new_ids(1)[0]
    reply = dns_ask(lab, DNS_SERVICE_IP, KNOWN_NAME, ident)
    assert reply["rcode"] == "NOERROR"
    http_sport = http_gets(lab, count=3)
    send_udp(lab, CLIENT_POD, BACKEND_IP, DROP_PORT, 5, 80, sport=DROP_SPORT)
    return {"dns_id": ident, "dns_sport": reply["sport"], "http_sport": http_sport,
            "dropped": 5}


def test_enable_all_turns_on_rtt_drops_and_dns(lab, cluster_dns, udp_drop_rule):
    """--enable-all is --rtt --drops --dns: each feature shows on the flow it belongs to."""
    with FlowsRun("--enable-all", *WATCH_CLIENT) as f:
        t = mixed_traffic(lab)
    result = f.stop()
    assert result.returncode == 0, result.stderr
    recs = result.records

    out, back = conversation(recs, "tcp", CLIENT_IP, t["http_sport"], BACKEND_IP, BACKEND_HTTP)
    assert min_rtt(out) > 0 and min_rtt(back) > 0

    _, dns_back = conversation(recs, "udp", CLIENT_IP, t["dns_sport"], DNS_SERVICE_IP, 53)
    answers = dns_entries(dns_back)
    assert [(a["id"], a["name"], a["type"], a["rcode"]) for a in answers] == [
        (t["dns_id"], KNOWN_NAME, "A", "NOERROR")]
    assert all("rtt" not in r for r in recs if r["proto"] == "udp")

    dropped = of_tuple(recs, "udp", CLIENT_IP, DROP_SPORT, BACKEND_IP, DROP_PORT)
    drops = [r["drops"] for r in dropped if "drops" in r]
    assert sum(d["packets"] for d in drops) == t["dropped"]
    assert {d["reason"] for d in drops} == {"NETFILTER_DROP"}


def sqlite_json(path: Path, sql: str) -> list[dict[str, Any]]:
    """Rows as the sqlite3 CLI reads them (not Python's sqlite3 module, not our writer)."""
    proc = subprocess.run(["sqlite3", "-json", "-readonly", str(path), sql],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, Any]] = json.loads(proc.stdout or "[]")
    return rows


def test_sqlite_feature_columns(lab, cluster_dns, udp_drop_rule, tmp_path):
    """--sqlite with --enable-all fills the rtt_*, drop_* and dns_* columns of the right rows.

    The file is read back with the sqlite3 command-line tool: the rows are the
    JSON records of the same run, the feature columns are set on the flows the
    features belong to and NULL elsewhere, and the file passes integrity_check.
    """
    if subprocess.run(["sh", "-c", "command -v sqlite3"], capture_output=True).returncode:
        pytest.skip("needs the sqlite3 CLI (apt-get install sqlite3)")
    db = tmp_path / "flows.db"
    with FlowsRun("--enable-all", "--sqlite", str(db), *WATCH_CLIENT) as f:
        t = mixed_traffic(lab)
    result = f.stop()
    assert result.returncode == 0, result.stderr

    assert sqlite_json(db, "PRAGMA integrity_check") == [{"integrity_check": "ok"}]
    rows = sqlite_json(db, "SELECT * FROM flows ORDER BY id")
    assert len(rows) == len(result.records) == result.summary["records"]

    def row(proto: str, saddr: str, sport: int, daddr: str, dport: int) -> list[dict[str, Any]]:
        found = [r for r in rows if (r["proto"], r["saddr"], r["sport"], r["daddr"], r["dport"])
                 == (proto, saddr, sport, daddr, dport)]
        assert found, f"no row {proto} {saddr}:{sport} -> {daddr}:{dport} in {rows}"
        return found

    # RTT on both directions of the HTTP exchange, consistent, and equal to the JSON.
    for saddr, sport, daddr, dport in ((CLIENT_IP, t["http_sport"], BACKEND_IP, BACKEND_HTTP),
                                       (BACKEND_IP, BACKEND_HTTP, CLIENT_IP, t["http_sport"])):
        sql = row("tcp", saddr, sport, daddr, dport)
        js = of_tuple(result.records, "tcp", saddr, sport, daddr, dport)
        with_rtt = [r for r in sql if r["rtt_min_us"] is not None]
        assert with_rtt, sql
        for r in with_rtt:
            assert 0 < r["rtt_min_us"] <= r["rtt_avg_us"] <= r["rtt_max_us"], r
        for r in sql:
            assert r["dns_id"] is None and r["dns_name"] is None, r
        assert sorted((r["rtt_min_us"], r["rtt_avg_us"], r["rtt_max_us"]) for r in with_rtt) \
            == sorted((j["rtt"]["min_us"], j["rtt"]["avg_us"], j["rtt"]["max_us"])
                      for j in js if "rtt" in j)

    # The DNS answer on the response row (and, if in the same interval, the query row).
    answer_rows = row("udp", DNS_SERVICE_IP, 53, CLIENT_IP, t["dns_sport"])
    answered = [r for r in answer_rows if r["dns_id"] is not None]
    assert len(answered) == 1, answer_rows
    a = answered[0]
    assert (a["dns_id"], a["dns_name"], a["dns_type"], a["dns_rcode"]) == (
        t["dns_id"], KNOWN_NAME, "A", "NOERROR")
    assert 0 < a["dns_latency_ns"] < 1_000_000_000
    assert a["rtt_min_us"] is None and a["drop_packets"] is None, a
    for r in row("udp", CLIENT_IP, t["dns_sport"], DNS_SERVICE_IP, 53):
        assert r["dns_id"] in (None, t["dns_id"]), r

    # Drops on the dropped flow's row.
    dropped = [r for r in row("udp", CLIENT_IP, DROP_SPORT, BACKEND_IP, DROP_PORT)
               if r["drop_packets"] is not None]
    assert sum(r["drop_packets"] for r in dropped) == t["dropped"]
    assert {r["drop_reason"] for r in dropped} == {"NETFILTER_DROP"}
    assert all(r["drop_bytes"] > 0 and r["rtt_min_us"] is None and r["dns_id"] is None
               for r in dropped)

    # The documented columns are the ones in the file.
    cols = {r["name"] for r in sqlite_json(db, "SELECT name FROM columns WHERE tbl = 'flows'")}
    assert {"rtt_min_us", "rtt_avg_us", "rtt_max_us", "drop_packets", "drop_bytes",
            "drop_reason", "dns_id", "dns_name", "dns_type", "dns_rcode",
            "dns_latency_ns"} <= cols


# -- known gaps (kept last so that -x runs everything else first) -----------------------


def test_drop_names_the_interface_in_its_own_netns(lab, udp_drop_rule):
    """A drop inside a pod's netns names that netns' interface (eth0), not a root-ns one.

    The kernel reports the device's ifindex, which is only meaningful in the
    device's netns (backend's eth0 is ifindex 2 there; ifindex 2 in the root
    netns is some other device entirely).
    """
    with FlowsRun("--drops", *WATCH_CLIENT) as f:
        send_udp(lab, CLIENT_POD, BACKEND_IP, DROP_PORT, 2, 64, sport=DROP_SPORT)
    result = f.stop()
    dropped = [r["drops"] for r in of_tuple(result.records, "udp", CLIENT_IP, DROP_SPORT,
                                            BACKEND_IP, DROP_PORT) if "drops" in r]
    assert dropped, result.records
    assert {d["netns"] for d in dropped} == {netns_inode(udp_drop_rule)}
    pod_side = lab.pod(BACKEND_POD).ifname
    assert {d["interface"] for d in dropped} == {pod_side}, dropped
