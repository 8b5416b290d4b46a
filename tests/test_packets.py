"""`podsight packets` end to end: real captures in the lab's pods, tshark as the oracle.

Every file is read back by tshark (and its blocks walked one by one);
counts are checked against the traffic the test itself sent, filters
against a mix where each expression must keep some packets and exclude
others.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from background import PODSIGHT
from flowsrun import send_udp
from packetsrun import PacketsRun, blocks, fields, statistics, summary, tshark
from tracing import connect

pytestmark = pytest.mark.root

MYPOD, WEB, FRONTEND, BACKEND = "10.244.0.2", "10.244.0.3", "10.244.0.4", "10.244.0.5"
EXTERNAL = "203.0.113.10"
ETH, IPV4, UDP = 14, 20, 8
IG_FRONTEND = ";k8s.namespace=shop;k8s.podName=frontend;k8s.containerName="


def test_pods_packets_names_direction_nanoseconds_and_address_names(lab, tmp_path):
    """-n shop: frontend's and backend's eth0, each packet once per interface it crossed."""
    out = tmp_path / "shop.pcapng"
    with PacketsRun("-n", "shop", "-w", str(out), "udp port 7201") as run:
        sport = send_udp(lab, "frontend", BACKEND, 7201, 10, 100)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    assert result.summary == {"captured": 20, "received": 20, "interfaces": 2, "lost": 0}
    rows = fields(out, "frame.interface_name", "frame.interface_description",
                  "frame.packet_flags_direction", "udp.srcport", "frame.len",
                  "frame.time_epoch")
    assert len(rows) == 20
    by_iface = {name: [r for r in rows if r[0] == name] for name in {r[0] for r in rows}}
    assert set(by_iface) == {"p/shop/frontend", "p/shop/backend"}
    front, back = by_iface["p/shop/frontend"], by_iface["p/shop/backend"]
    assert all(r[1].startswith("k8s.node=") and IG_FRONTEND in r[1] for r in front)
    assert all(";k8s.namespace=shop;k8s.podName=backend;k8s.containerName=" in r[1]
               for r in back)
    # Direction as each pod sees it: frontend sent them, backend received them.
    assert {r[2] for r in front} == {"0x00000002"} and {r[2] for r in back} == {"0x00000001"}
    assert {r[3] for r in rows} == {str(sport)}
    assert {r[4] for r in rows} == {str(100 + UDP + IPV4 + ETH)}
    # Nanosecond timestamps of now (not whole seconds, not microseconds padded).
    stamps = [r[5] for r in rows]
    assert all(len(s.split(".")[1]) == 9 for s in stamps)
    assert any(not s.endswith("000") for s in stamps)
    assert all(abs(float(s) - time.time()) < 300 for s in stamps)
    # The Name Resolution Block names both pods: tshark shows them with -N n.
    names = tshark(out, "-N", "n", "-T", "fields", "-e", "ip.src_host", "-e", "ip.dst_host")
    assert set(names.splitlines()) == {"frontend.shop\tbackend.shop"}
    # One statistics block per interface, with what the kernel counted.
    stats = statistics(out)
    assert sorted(s["received"] for s in stats.values()) == [10, 10]
    assert all(s["dropped"] == 0 for s in stats.values())
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_snaplen_cuts_packets_and_keeps_their_length(lab, tmp_path):
    out = tmp_path / "snap.pcapng"
    with PacketsRun("-p", "frontend", "-s", "64", "-w", str(out), "udp port 7202") as run:
        send_udp(lab, "frontend", BACKEND, 7202, 5, 500)
    assert run.stop().returncode == 0
    rows = fields(out, "frame.len", "frame.cap_len")
    assert rows == [[str(500 + UDP + IPV4 + ETH), "64"]] * 5
    assert "Capture length = 64" in subprocess.run(
        ["capinfos", "-M", str(out)], capture_output=True, text=True, check=True).stdout


def test_whole_packets_of_every_size_are_exact(lab, tmp_path):
    """The default snap length (whole packets, the per-CPU stream path): bytes as sent."""
    out = tmp_path / "full.pcapng"
    sizes = [1, 3, 100, 1001, 1400]
    with PacketsRun("-p", "frontend", "-w", str(out), "udp dst port 7203") as run:
        for size in sizes:
            send_udp(lab, "frontend", BACKEND, 7203, 2, size)
    assert run.stop().returncode == 0
    rows = fields(out, "frame.len", "frame.cap_len", "data.len")
    assert sorted(int(r[2]) for r in rows) == sorted(s for s in sizes for _ in range(2))
    assert all(r[0] == r[1] for r in rows)


PINNED_SENDER = r"""
import os, socket, struct, sys, time
host, port, who, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
os.sched_setaffinity(0, {who})
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
print("ready", flush=True)
sys.stdin.read(1)  # both senders start together, once both are ready
for seq in range(count):
    s.sendto(struct.pack("!BI", who, seq) + bytes([who]) * 995, (host, port))
    if seq % 200 == 199:
        time.sleep(0.0005)  # a busy machine's scheduler then still lets them overlap
"""


def test_whole_packets_from_two_cpus_are_all_in_one_file_in_time_order(lab, tmp_path):
    """Whole packets go through one stream per CPU: two senders pinned to CPU 0 and CPU 1
    (tc egress runs on the sender's CPU) send at once; every packet is in the file, each
    exact, each sender's in its own order, and the blocks in time order."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    out = tmp_path / "cpus.pcapng"
    count = 20000
    # Resolve backend's address first: packets held while ARP resolves are sent later
    # from the CPU that gets the reply, after the sender's next ones (the wire order).
    send_udp(lab, "frontend", BACKEND, 7212, 1, 10)
    with PacketsRun("-p", "frontend", "-B", "64M", "-w", str(out), "udp dst port 7211") as run:
        senders = [lab.popen("frontend", [sys.executable, "-c", PINNED_SENDER, BACKEND, "7211",
                                          str(cpu), str(count)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE)
                   for cpu in (0, 1)]
        for proc in senders:
            assert proc.stdout.readline() == b"ready\n"
        for proc in senders:
            proc.stdin.write(b"g")
            proc.stdin.close()
        for proc in senders:
            assert proc.wait(60) == 0
    result = run.stop()
    assert result.returncode == 0, result.stderr
    assert result.summary["lost"] == 0 and result.summary["captured"] == 2 * count
    stamps, order = [], []
    for kind, body in blocks(out):
        if kind != 6:
            continue
        _, hi, lo, caplen, length = struct.unpack_from("<IIIII", body)
        data = body[20: 20 + caplen]
        assert caplen == length == ETH + IPV4 + UDP + 1000
        who, seq = struct.unpack_from("!BI", data, ETH + IPV4 + UDP)
        assert data[ETH + IPV4 + UDP + 5:] == bytes([who]) * 995
        stamps.append((hi << 32) | lo)
        order.append((who, seq))
    assert len(order) == 2 * count
    for who in (0, 1):
        assert [q for w, q in order if w == who] == list(range(count))
    assert stamps == sorted(stamps)
    # The two senders really overlapped (on a busy machine they may take turns for long
    # stretches): their packets interleave in the file.
    switches = sum(1 for a, b in itertools.pairwise(order) if a[0] != b[0])
    assert switches > 2, switches


TRAFFIC_FILTERS = {
    # expression or shorthand flags -> which of the test's packets it must keep
    "udp port 7301": {"udp7301"},
    "icmp": {"ping"},
    "tcp port 8080 and host 10.244.0.3": {"tcp"},
    "udp and not port 53": {"udp7301", "udp7302"},
    "--protocol udp --port 7302": {"udp7302"},
    # libpcap's "host" also takes ARP for that address (when the ARP cache asks)
    "--peer-ip 10.244.0.3": {"udp7301", "tcp", "ping", "arp?"},
}


def _kind(row: list[str]) -> str:
    proto, udp_dport, tcp_dport, tcp_sport = row
    if "icmp" in proto.lower():
        return "ping"
    if proto == "ARP":
        return "arp?"
    if udp_dport in ("7301", "7302"):
        return f"udp{udp_dport}"
    if "8080" in (tcp_dport, tcp_sport):
        return "tcp"
    return f"other:{row}"


def test_each_filter_keeps_what_it_should_and_excludes_the_rest(lab, tmp_path):
    """Six captures side by side over one traffic mix: UDP to web and to backend, a TCP
    exchange with web, pings to web (mypod's eth0 sees all of it)."""
    runs = {}
    for i, spec in enumerate(TRAFFIC_FILTERS):
        words = spec.split() if spec.startswith("--") else [spec]
        runs[spec] = (PacketsRun("-p", "mypod", "-w", str(tmp_path / f"f{i}.pcapng"), *words),
                      tmp_path / f"f{i}.pcapng")
    try:
        for run, _ in runs.values():
            run.start()
        send_udp(lab, "mypod", WEB, 7301, 3, 10)
        send_udp(lab, "mypod", BACKEND, 7302, 4, 10)
        assert connect(lab, "mypod", WEB, 8080)["errno"] == 0
        lab.exec("mypod", ["ping", "-c", "2", "-i", "0.2", WEB], check=True,
                 capture_output=True, timeout=30)
    finally:
        results = {spec: run.stop() for spec, (run, _) in runs.items()}
    for spec, (_, path) in runs.items():
        assert results[spec].returncode == 0, results[spec].stderr
        rows = fields(path, "_ws.col.Protocol", "udp.dstport", "tcp.dstport", "tcp.srcport")
        kinds = {_kind(r) for r in rows}
        want = TRAFFIC_FILTERS[spec]
        assert kinds - {"arp?"} == want - {"arp?"}, (spec, rows)
        assert "arp?" not in kinds or "arp?" in want, (spec, rows)
    assert len(fields(runs["udp port 7301"][1], "frame.number")) == 3


def test_filter_converter_matches_libpcap_on_real_and_cut_packets(lab, tmp_path):
    """The eBPF the kernel runs decides like libpcap's own bpf_filter() on the lab's traffic,
    whole and cut short at random lengths (loads past the end must mean "no match")."""
    from podsight.ebpf.progs import BPF_PROG_TYPE_SCHED_CLS, RawProgram, prog_test_run
    from podsight.gadgets.packets import filter as F

    out = tmp_path / "corpus.pcapng"
    with PacketsRun("-p", "mypod", "-w", str(out)) as run:
        send_udp(lab, "mypod", WEB, 7401, 2, 30)
        connect(lab, "mypod", WEB, 8080)
        connect(lab, "mypod", WEB, 81)
        lab.exec("mypod", ["ping", "-c", "1", WEB], capture_output=True, timeout=30)
        lab.exec("mypod", ["ping", "-6", "-c", "1", "fd00:244::3"], capture_output=True,
                 timeout=30)
    assert run.stop().returncode == 0
    corpus = _frames_of(out)
    assert len(corpus) >= 10
    rng = random.Random(9)
    cases = corpus + [p[: rng.randint(14, len(p))] for p in corpus for _ in range(3)]
    expressions = ["tcp port 8080", "udp", "icmp or icmp6", "ip6", "arp", "host 10.244.0.3",
                   "tcp[tcpflags] & (tcp-syn|tcp-rst) != 0", "greater 100", "less 80",
                   "ip[2:2] / 4 > 10", "ip[2:2] % 7 = 3", "net 10.244.0.0/24 and not port 22",
                   "tcp and (ip[2:2] - ((ip[0]&0xf)<<2) - ((tcp[12]&0xf0)>>2)) != 0",
                   "udp port 7401 or (tcp and ip6)", "vlan", "ether broadcast",
                   "len >= 60 and len <= 80", "icmp6 and ip6[40] == 128"]
    from podsight.ebpf.errors import BpfError

    checked = refused = 0
    for expression in expressions:
        cbpf = F.compile_filter(expression)
        with RawProgram(BPF_PROG_TYPE_SCHED_CLS, F.test_program(cbpf), "packets_test") as prog:
            for packet in cases:
                want = F.libpcap_matches(cbpf, packet)
                try:
                    got = prog_test_run(prog, packet).retval
                except BpfError:
                    # The kernel builds no skb from some cut packets (an IP header shorter
                    # than its own length field says): no packet tc could ever see.
                    refused += 1
                    continue
                assert bool(got) == want, (expression, packet.hex())
                checked += 1
    assert checked > 500 and refused < checked


def _frames_of(path: Path) -> list[bytes]:
    """Every captured frame's bytes, read from the file's EPBs."""
    import struct

    out = []
    for kind, body in blocks(path):
        if kind == 6:
            caplen = struct.unpack_from("<I", body, 12)[0]
            out.append(body[20: 20 + caplen])
    return out


def test_tls_keys_go_into_the_file_and_tshark_decrypts_with_nothing_else(lab, tmp_path):
    out = tmp_path / "tls.pcapng"
    keys = tmp_path / "keys.log"
    env = dict(os.environ, SSLKEYLOGFILE=str(keys))
    with PacketsRun("-p", "mypod", "-w", str(out), "--tls-keylog", str(keys),
                    "tcp port 443") as run:
        proc = lab.exec("mypod", ["curl", "-sk", "--http1.1", "-o", "/dev/null",
                                  f"https://{EXTERNAL}/tls-check"],
                        env=env, capture_output=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert keys.exists() and keys.stat().st_size > 0
    assert run.stop().returncode == 0
    kinds = [kind for kind, _ in blocks(out)]
    assert 0x0A in kinds  # a Decryption Secrets Block
    assert kinds.index(0x0A) < max(i for i, k in enumerate(kinds) if k == 6)
    requests = fields(out, "http.request.method", "http.request.uri", "http.request.version",
                      display="http.request")
    assert requests == [["GET", "/tls-check", "HTTP/1.1"]]


def test_keys_written_after_their_packets_still_go_before_them(lab, tmp_path):
    """curl writes a session's secrets after the server's handshake flight was captured;
    a capture that drains the ring in between writes that flight before the keys, and
    tshark then decrypts nothing of the session. With --tls-keylog the file takes
    packets only once they are half a second old (KeyedHold). Replayed exactly: a real
    exchange's packets, the keys appearing after all of them were handed over, the
    hold's clock moved by hand; the same sequence without the hold is shown to fail."""
    from podsight.outputs.keyhold import HOLD_NS, KeyedHold
    from podsight.outputs.pcapng import KeyLog, PcapngOutput
    from podsight.pipeline import CaptureInterface, Frames

    capture, private = tmp_path / "exchange.pcapng", tmp_path / "curl-keys.log"
    with PacketsRun("-p", "mypod", "-w", str(capture), "tcp port 443") as run:
        proc = lab.exec("mypod", ["curl", "-sk", "--http1.1", "-o", "/dev/null",
                                  f"https://{EXTERNAL}/late-keys"],
                        env=dict(os.environ, SSLKEYLOGFILE=str(private)),
                        capture_output=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
    assert run.stop().returncode == 0
    epbs = [struct.pack("<II", 6, len(body) + 12) + body + struct.pack("<I", len(body) + 12)
            for kind, body in blocks(capture) if kind == 6]
    assert len(epbs) >= 10
    last = max(struct.unpack_from("<II", b, 12) for b in epbs)
    last_ns = (last[0] << 32) | last[1]
    # Laid out as in the kernel's ring: an 8-byte record header before every block.
    data = np.frombuffer(b"".join(b"\xee" * 8 + b for b in epbs), dtype=np.uint8)
    lengths = np.array([len(b) for b in epbs], dtype=np.int64)
    offsets = (np.concatenate(([0], np.cumsum(lengths + 8)[:-1])) + 8).astype(np.int64)
    iface = [CaptureInterface(id=0, name="eth0", description="mypod", snaplen=262144)]

    def replay(name: str, hold: bool) -> Path:
        out, followed = tmp_path / f"{name}.pcapng", tmp_path / f"{name}.keys"
        followed.write_bytes(b"")
        now = [last_ns + 1_000_000]
        inner = PcapngOutput(str(out), keylog=KeyLog(str(followed)))
        output = KeyedHold(inner, clock=lambda: now[0]) if hold else inner
        assert output.write_frames(Frames(data, offsets, lengths), iface) == len(epbs)
        followed.write_bytes(private.read_bytes())  # the keys, after every packet
        now[0] += HOLD_NS
        output.write_frames(Frames(data, offsets[:0], lengths[:0]), iface)
        output.close(iface)
        return out

    def requests(path: Path) -> list[list[str]]:
        return fields(path, "http.request.uri", display="http.request")

    assert requests(replay("unheld", hold=False)) == []  # the failure the hold prevents
    held = replay("held", hold=True)
    assert requests(held) == [["/late-keys"]]
    kinds = [kind for kind, _ in blocks(held)]
    assert kinds.index(0x0A) < kinds.index(6)
    assert len([k for k in kinds if k == 6]) == len(epbs)
    # --max-packets and --max-bytes count what the hold accepted, not what it wrote yet.
    limited = KeyedHold(PcapngOutput(str(tmp_path / "limited.pcapng")), max_packets=3,
                        clock=lambda: last_ns)
    assert limited.write_frames(Frames(data, offsets, lengths), iface) == 3
    assert limited.full == "--max-packets reached" and limited.held == 3
    assert limited.bytes == limited.inner.bytes + int(lengths[:3].sum())
    limited.close(iface)
    assert len(fields(tmp_path / "limited.pcapng", "frame.number")) == 3


def test_comments_name_both_ends(lab, tmp_path):
    out = tmp_path / "comments.pcapng"
    with PacketsRun("-p", "frontend", "--comments", "-w", str(out), "udp port 7204") as run:
        sport = send_udp(lab, "frontend", BACKEND, 7204, 3, 10)
    assert run.stop().returncode == 0
    rows = fields(out, "frame.comment")
    assert rows == [[f"p/shop/frontend:{sport} -> p/shop/backend:7204"]] * 3


def test_ring_rotation_keeps_the_last_files_each_valid(lab, tmp_path):
    out = tmp_path / "ring.pcapng"
    with PacketsRun("-p", "frontend", "--ring", "3", "--ring-size", "16K", "-w", str(out),
                    "udp port 7205") as run:
        send_udp(lab, "frontend", BACKEND, 7205, 200, 400)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    files = sorted(tmp_path.glob("ring.*.pcapng"))
    assert len(files) == 3, files
    numbers = [int(f.name.split(".")[1]) for f in files]
    assert numbers == list(range(numbers[0], numbers[0] + 3)) and numbers[0] > 0
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        assert f.stat().st_size <= 16384 + 600
        rows = fields(f, "frame.interface_name", "udp.dstport")
        assert rows and all(r == ["p/shop/frontend", "7205"] for r in rows)
        assert statistics(f).keys() == {0}


def test_a_pod_with_no_traffic_yields_a_valid_empty_capture(lab, tmp_path):
    out = tmp_path / "empty.pcapng"
    with PacketsRun("-p", "web", "-w", str(out), "udp port 9") as run:
        pass
    result = run.stop()
    assert result.returncode == 0
    assert result.summary["captured"] == 0
    assert tshark(out) == ""
    assert [k for k, _ in blocks(out)] == [0x0A0D0D0A, 1, 5]


def test_stdout_streams_a_pcapng_tshark_reads(lab, tmp_path):
    proc = subprocess.Popen([*PODSIGHT, "packets", "-p", "frontend", "-w", "-",
                             "udp port 7206"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        while "capturing packets" not in proc.stderr.readline().decode():
            assert proc.poll() is None
        send_udp(lab, "frontend", BACKEND, 7206, 4, 10)
        time.sleep(0.3)  # the capture hands over every 50 ms: let it write before stopping
        proc.send_signal(signal.SIGINT)
        data, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    (tmp_path / "s.pcapng").write_bytes(data)
    assert len(fields(tmp_path / "s.pcapng", "frame.number")) == 4
    assert summary(err.decode())["captured"] == 4


def test_until_failed_connect_stops_after_the_refused_connect_with_the_rst_in_the_file(
        lab, tmp_path):
    out = tmp_path / "fail.pcapng"
    with PacketsRun("-p", "mypod", "-w", str(out), "--until-failed-connect", "0.5",
                    "tcp") as run:
        assert connect(lab, "mypod", WEB, 8080)["errno"] == 0  # an ok connect does not stop it
        assert connect(lab, "mypod", WEB, 81)["errno"] != 0  # refused: web listens on 8080
        result = run.wait(timeout=30)
    assert result.returncode == 0, result.stderr
    assert "stopped: --until-failed-connect: refused connect p/default/mypod:" in result.stderr
    rst = fields(out, "tcp.srcport", "tcp.dstport", display="tcp.flags.reset == 1")
    assert ["81", rst[0][1]] == rst[0] and len(rst) >= 1


def test_forced_drops_are_counted_in_the_summary_and_the_statistics(lab, tmp_path):
    """A one-page kernel buffer cannot hold a burst: drops happen, and every one is counted."""
    out = tmp_path / "drops.pcapng"
    with PacketsRun("-p", "frontend", "-s", "96", "-B", "4K", "-w", str(out),
                    "udp port 7207") as run:
        send_udp(lab, "frontend", BACKEND, 7207, 3000, 10)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    s = result.summary
    written = len(fields(out, "frame.number"))
    stats = statistics(out)[0]
    assert s["lost"] > 0 and s["captured"] == written
    assert stats["received"] == 3000 == s["received"]
    assert stats["dropped"] == s["lost"] == 3000 - written
    assert "kernel buffer full" in result.stderr


def test_pods_going_away_end_their_interfaces_and_new_pods_are_added(lab, tmp_path):
    """The lab torn down (every pod deleted) and built again (new pods, new namespaces) in
    the middle of one capture: the file gets the old interfaces' statistics and the new
    ones' descriptions, with packets on both generations."""
    out = tmp_path / "churn.pcapng"
    with PacketsRun("-n", "shop", "-w", str(out), "udp port 7208") as run:
        send_udp(lab, "frontend", BACKEND, 7208, 3, 10)
        lab.down()
        lab.up()
        assert run.wait_stderr("", 1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            send_udp(lab, "frontend", BACKEND, 7208, 1, 10)
            if len(fields(out, "frame.number", display="frame.interface_id >= 2")) >= 2:
                break
            time.sleep(0.2)
        send_udp(lab, "frontend", BACKEND, 7208, 5, 10)
    result = run.stop()
    assert result.returncode == 0, result.stderr
    rows = fields(out, "frame.interface_id", "frame.interface_name")
    names = {(int(r[0]), r[1]) for r in rows}
    assert {(0, "p/shop/backend"), (1, "p/shop/frontend")} <= names or {
        (0, "p/shop/frontend"), (1, "p/shop/backend")} <= names
    assert {i for i, _ in names} >= {0, 1, 2, 3}
    stats = statistics(out)
    assert set(stats) == {0, 1, 2, 3}
    assert sorted(stats[i]["received"] for i in (0, 1)) == [3, 3]
    assert result.summary["interfaces"] == 4


def test_host_interfaces(lab, tmp_path):
    """frontend's host-side veth: what the pod sends arrives there (inbound, as the host's
    interface sees it)."""
    out = tmp_path / "host.pcapng"
    with PacketsRun("--interfaces", "pslh4", "-w", str(out), "udp port 7209") as run:
        send_udp(lab, "frontend", BACKEND, 7209, 3, 10)
    assert run.stop().returncode == 0
    rows = fields(out, "frame.interface_name", "frame.interface_description",
                  "frame.packet_flags_direction")
    assert len(rows) == 3 and rows[0][0].endswith("/pslh4")
    assert "interface=pslh4" in rows[0][1] and rows[0][2] == "0x00000001"


def test_ctrl_c_at_random_moments_leaves_valid_files(lab, tmp_path):
    """20 runs stopped at a random moment (startup included) under steady traffic."""
    rng = random.Random(1234)
    flood = lab.popen("frontend", [sys.executable, "-c", FLOOD, BACKEND, "7210"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for i in range(20):
            out = tmp_path / f"int{i}.pcapng"
            proc = subprocess.Popen([*PODSIGHT, "packets", "-n", "shop", "-s", "200" if i % 2
                                     else "262144", "-w", str(out), "udp port 7210"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            delay = [0.0, 0.02][i] if i < 2 else rng.uniform(0.0, 2.0)
            time.sleep(delay)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
            if proc.returncode < 0 or (proc.returncode != 0 and b"podsight:" not in err):
                # Before the interpreter reached podsight's first line (the rule of
                # test_signals.py: killed by the signal, or CPython's own startup exiting 1
                # with "init_import_site" or "Could not import runpy module"): only in the
                # first moments, and nothing was created.
                assert delay < EARLY and not out.exists(), (delay, err)
                continue
            assert proc.returncode == 0, err
            assert b"Traceback" not in err
            if out.exists():
                tshark(out)
                blocks(out)
                assert stat.S_IMODE(out.stat().st_mode) == 0o600
    finally:
        flood.kill()
        flood.wait()


EARLY = 0.1  # a signal this soon may beat the interpreter to podsight's handler

FLOOD = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    for _ in range(50):
        s.sendto(b"f" * 64, (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.002)
"""


def test_a_key_log_inside_a_pod_is_read_through_its_processes_root(lab, tmp_path):
    """The key log lives on a tmpfs only the pod's process sees (its own mount namespace):
    podsight finds it through /proc/PID/root of a process in the pod's network namespace."""
    assert not Path("/mnt/podsight-keys.log").exists()
    out = tmp_path / "inpod.pcapng"
    script = ("mount -t tmpfs podsight-test /mnt && "
              "SSLKEYLOGFILE=/mnt/podsight-keys.log curl -sk --http1.1 -o /dev/null "
              f"https://{EXTERNAL}/in-pod && touch /mnt/done && sleep 30")
    with PacketsRun("-p", "mypod", "-w", str(out), "--tls-keylog", "/mnt/podsight-keys.log",
                    "tcp port 443") as run:
        proc = lab.popen("mypod", ["unshare", "-m", "--propagation", "private", "sh", "-c",
                                   script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                        start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while not Path(f"/proc/{proc.pid}/root/mnt/done").exists():
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
                time.sleep(0.05)
            time.sleep(0.5)  # a few batches: the key log is read with each
            result = run.stop()
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # sh and sleep too: they hold /mnt alive
            proc.wait()
    assert result.returncode == 0, result.stderr
    requests = fields(out, "http.request.uri", display="http.request")
    assert requests == [["/in-pod"]]


def test_max_packets_and_max_bytes_stop_the_capture_with_a_valid_file(lab, tmp_path):
    out = tmp_path / "max.pcapng"
    with PacketsRun("-p", "frontend", "--max-packets", "5", "-w", str(out),
                    "udp port 7211") as run:
        send_udp(lab, "frontend", BACKEND, 7211, 20, 10)
        result = run.wait(timeout=30)
    assert result.returncode == 0, result.stderr
    assert "stopped: --max-packets reached" in result.stderr
    assert len(fields(out, "frame.number")) == 5
    out2 = tmp_path / "maxbytes.pcapng"
    with PacketsRun("-p", "frontend", "--max-bytes", "4K", "-w", str(out2),
                    "udp port 7212") as run:
        send_udp(lab, "frontend", BACKEND, 7212, 200, 100)
        result = run.wait(timeout=30)
    assert result.returncode == 0, result.stderr
    assert "stopped: --max-bytes reached" in result.stderr
    assert 4096 <= out2.stat().st_size < 200 * 200
    assert statistics(out2).keys() == {0}


def test_the_live_status_line_counts_per_interface(lab, tmp_path):
    out = tmp_path / "status.pcapng"
    with PacketsRun("-n", "shop", "-w", str(out), "udp port 7213") as run:
        send_udp(lab, "frontend", BACKEND, 7213, 7, 10)
        deadline = time.monotonic() + 30
        while "14 packets" not in run.peek_stderr():
            assert time.monotonic() < deadline, run.peek_stderr()
            time.sleep(0.2)
    result = run.stop()
    line = next(x for x in result.stderr.splitlines() if x.startswith("podsight: 14 packets"))
    assert "0 dropped by the kernel" in line
    assert "p/shop/frontend 7" in line and "p/shop/backend 7" in line
