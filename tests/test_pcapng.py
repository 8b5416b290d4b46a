"""pcapng blocks as stock tshark reads them: names, nanoseconds, direction, lengths, names of
addresses, comments and interface statistics. No root: the packets are built here."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from podsight.outputs import pcapng


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    eth = bytes.fromhex("02706c6c0105") + bytes.fromhex("02706c6c0104") + b"\x08\x00"
    return eth + ip + udp


def tshark(path: Path, *args: str) -> str:
    return subprocess.run(["tshark", "-r", str(path), *args], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    path = tmp_path / "t.pcapng"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        w = pcapng.PcapngWriter(fd, "podsight test")
        a = w.add_interface("p/shop/frontend", "k8s.node=vm;k8s.namespace=shop;"
                            "k8s.podName=frontend;k8s.containerName=app", 96, "udp port 53")
        b = w.add_interface("p/shop/backend", "k8s.node=vm;k8s.namespace=shop;"
                            "k8s.podName=backend;k8s.containerName=", 262144)
        w.add(pcapng.name_resolution([("10.244.0.4", ["frontend.shop"]),
                                      ("10.244.0.5", ["backend.shop"])]))
        frame = udp_frame("10.244.0.4", "10.244.0.5", 40000, 53, b"x" * 200)
        w.add(pcapng.enhanced_packet(a.index, 1_700_000_000_123_456_789, frame[:96], len(frame),
                                     pcapng.OUTBOUND, "p/shop/frontend:40000 -> "
                                     "p/shop/backend:53"))
        w.add(pcapng.enhanced_packet(b.index, 1_700_000_000_123_457_000, frame, len(frame),
                                     pcapng.INBOUND))
        w.add(pcapng.interface_statistics(a.index, 1_700_000_001_000_000_000, 5, 2))
        w.flush()
    finally:
        os.close(fd)
    return path


def test_tshark_reads_names_nanoseconds_direction_and_lengths(capture):
    packets = [p["_source"]["layers"] for p in json.loads(tshark(capture, "-T", "json"))]
    assert len(packets) == 2
    first, second = (p["frame"] for p in packets)
    assert first["frame.interface_id_tree"] == {
        "frame.interface_name": "p/shop/frontend",
        "frame.interface_description": "k8s.node=vm;k8s.namespace=shop;k8s.podName=frontend;"
                                       "k8s.containerName=app"}
    assert first["frame.time_epoch"] == "1700000000.123456789"
    assert (first["frame.len"], first["frame.cap_len"]) == ("242", "96")
    assert packets[0]["pkt_comment"]["frame.comment"] == (
        "p/shop/frontend:40000 -> p/shop/backend:53")
    assert "pkt_comment" not in packets[1]
    assert first["frame.packet_flags_tree"]["frame.packet_flags_direction"] == "0x00000002"
    assert second["frame.packet_flags_tree"]["frame.packet_flags_direction"] == "0x00000001"
    assert second["frame.interface_id_tree"]["frame.interface_name"] == "p/shop/backend"
    assert (second["frame.len"], second["frame.cap_len"]) == ("242", "242")


def test_tshark_names_addresses_from_the_name_resolution_block(capture):
    out = tshark(capture, "-N", "n", "-T", "fields", "-e", "ip.src_host", "-e", "ip.dst_host")
    assert out.splitlines()[0].split("\t") == ["frontend.shop", "backend.shop"]


def test_capinfos_sees_the_interfaces_and_their_statistics(capture):
    out = subprocess.run(["capinfos", "-M", str(capture)], capture_output=True, text=True,
                         check=True).stdout
    assert "Number of interfaces in file: 2" in out
    assert "Capture length = 96" in out and "Capture length = 262144" in out
    assert "udp port 53" in out
    stats = subprocess.run(["tshark", "-r", str(capture), "-q", "-z", "io,stat,0"],
                           capture_output=True, text=True, check=True)
    assert stats.returncode == 0


# -- PcapngOutput: frames as the kernel leaves them, to files tshark reads -------------------

def _frames(packets: list[tuple[int, bytes, int]]):  # type: ignore[no-untyped-def]
    """EPBs (interface, frame, flags) laid out in one buffer, as a capture gadget hands them."""
    import numpy as np

    from podsight.pipeline import Frames

    blocks_ = [pcapng.enhanced_packet(i, 1_700_000_000_000_000_000 + n, data, len(data), flags)
               for n, (i, data, flags) in enumerate(packets)]
    buf = np.frombuffer(b"".join(blocks_), dtype=np.uint8).copy()
    lengths = np.array([len(b) for b in blocks_], dtype=np.int64)
    offsets = (np.cumsum(lengths) - lengths).astype(np.int64)
    released = []
    return Frames(buf, offsets, lengths, lambda: released.append(1)), released


def _interfaces(n: int):  # type: ignore[no-untyped-def]
    from podsight.pipeline import CaptureInterface

    return [CaptureInterface(id=i, name=f"p/shop/pod{i}", description=f"k8s.node=vm;"
                             f"k8s.namespace=shop;k8s.podName=pod{i};k8s.containerName=app",
                             snaplen=262144, filter="udp", received=10 + i, dropped=i)
            for i in range(n)]


def test_output_writes_frames_names_keys_and_statistics(tmp_path):
    from podsight.outputs.pcapng import KeyLog, PcapngOutput

    keys = tmp_path / "keys.log"
    keys.write_bytes(b"CLIENT_RANDOM " + b"a" * 64 + b" " + b"b" * 96 + b"\npartial")
    names = {"10.244.0.4": "frontend.shop", "10.244.0.5": "backend.shop"}
    out = PcapngOutput(str(tmp_path / "o.pcapng"), keylog=KeyLog(str(keys)),
                       name_of=names.get, comments=True,
                       notation_of=lambda a: "p/shop/" + names.get(a, a).split(".")[0])
    ifaces = _interfaces(2)
    frame = udp_frame("10.244.0.4", "10.244.0.5", 40000, 53, b"q" * 20)
    frames, _ = _frames([(0, frame, pcapng.OUTBOUND), (1, frame, pcapng.INBOUND)])
    assert out.write_frames(frames, ifaces) == 2
    ifaces[1].closed = True
    assert out.write_frames(_frames([])[0], ifaces) == 0
    out.close(ifaces)
    path = tmp_path / "o.pcapng"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    rows = tshark(path, "-N", "n", "-T", "fields", "-e", "frame.interface_name", "-e",
                  "ip.src_host", "-e", "frame.comment").splitlines()
    assert rows == ["p/shop/pod0\tfrontend.shop\tp/shop/frontend:40000 -> p/shop/backend:53",
                    "p/shop/pod1\tfrontend.shop\tp/shop/frontend:40000 -> p/shop/backend:53"]
    data = path.read_bytes()
    assert data.count(b"a" * 64) == 1 and b"partial" not in data  # whole key lines only
    out2 = subprocess.run(["capinfos", "-M", str(path)], capture_output=True, text=True,
                          check=True).stdout
    assert "Number of interfaces in file: 2" in out2


def test_output_rotates_and_keeps_the_last_files(tmp_path):
    from podsight.outputs.pcapng import PcapngOutput

    out = PcapngOutput(str(tmp_path / "r.pcapng"), ring=2, ring_size=4096)
    ifaces = _interfaces(1)
    frame = udp_frame("10.244.0.4", "10.244.0.5", 40000, 53, b"q" * 300)
    for _ in range(10):
        frames, _ = _frames([(0, frame, 0)] * 5)
        assert out.write_frames(frames, ifaces) == 5
    out.close(ifaces)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[-1].startswith("r.") and files[-1].endswith(".pcapng")
    total = 0
    for name in files:
        lines = tshark(tmp_path / name, "-T", "fields", "-e", "frame.len").splitlines()
        assert lines and set(lines) == {str(len(frame))}
        total += len(lines)
        assert (tmp_path / name).stat().st_size <= 4096 + 512
    assert total < 50


def test_output_stops_at_max_packets(tmp_path):
    from podsight.outputs.pcapng import PcapngOutput

    out = PcapngOutput(str(tmp_path / "m.pcapng"), max_packets=3)
    frame = udp_frame("10.244.0.4", "10.244.0.5", 40000, 53, b"q")
    frames, _ = _frames([(0, frame, 0)] * 5)
    assert out.write_frames(frames, _interfaces(1)) == 3
    assert out.full == "--max-packets reached"
    out.close(_interfaces(1))
    assert len(tshark(tmp_path / "m.pcapng").splitlines()) == 3


def test_packet_addresses_fixed_stride_and_packed_agree_with_each_block():
    """The NRB's address scan, on blocks at a fixed stride (the ring of fixed-size records:
    the strided fast path) and packed end to end (the general path), finds exactly the
    addresses of each IPv4 block, read one block at a time."""
    import random

    import numpy as np

    from podsight.pipeline import Frames

    rnd = random.Random(7)
    hosts = [f"10.244.{a}.{b}" for a in (0, 1, 255) for b in (1, 2, 254)]
    frames_: list[bytes] = []
    for _ in range(300):
        src, dst = rnd.choice(hosts), rnd.choice(hosts)
        frame = udp_frame(src, dst, 40000, 53, b"p" * rnd.randrange(0, 40))
        kind = rnd.random()
        if kind < 0.05:
            frame = frame[:12] + b"\x08\x06" + frame[14:]  # ARP: no address taken
        elif kind < 0.1:
            frame = frame[:30]  # too short for both addresses
        frames_.append(frame)
    for run in range(3):  # runs of one flow, as a stream gives them
        frames_ += [udp_frame("10.244.9.9", "10.244.8.8", 1, 2, b"")] * (run + 2)
    want = set()
    for f in frames_:
        if f[12:14] == b"\x08\x00" and len(f) >= 34:
            want |= {f[26:30], f[30:34]}
    blocks_ = [pcapng.enhanced_packet(0, n, f, len(f), pcapng.INBOUND)
               for n, f in enumerate(frames_)]
    stride = max(len(b) for b in blocks_) + 8
    buf = np.zeros(stride * len(blocks_), dtype=np.uint8)
    for n, b in enumerate(blocks_):
        buf[n * stride: n * stride + len(b)] = np.frombuffer(b, dtype=np.uint8)
    lengths = np.array([len(b) for b in blocks_], dtype=np.int64)
    fixed = Frames(buf, np.arange(len(blocks_), dtype=np.int64) * stride, lengths)
    assert pcapng._evenly_spaced(fixed, [1]) is not None
    assert set(pcapng.packet_addresses(fixed, [1])) == want
    packed = np.frombuffer(b"".join(blocks_), dtype=np.uint8).copy()
    offsets = (np.cumsum(lengths) - lengths).astype(np.int64)
    assert set(pcapng.packet_addresses(Frames(packed, offsets, lengths), [1])) == want


def test_packet_addresses_mixed_link_types_and_ipv6_agree_with_each_block():
    """The general path (blocks of any length): Ethernet and raw-IP interfaces in one batch,
    IPv4 and IPv6, short captures; the last block ends the buffer (its 64-byte head is cut)."""
    import random

    import numpy as np

    from podsight.pipeline import Frames

    rnd = random.Random(11)
    v4 = [socket.inet_aton(f"10.244.{a}.{b}") for a in (0, 7) for b in (1, 200)]
    v6 = [socket.inet_pton(socket.AF_INET6, f"fd00::{a}:{b}") for a in (1, 2) for b in (5, 9)]
    eth_v6 = bytes.fromhex("02706c6c0105") + bytes.fromhex("02706c6c0104") + b"\x86\xdd"
    blocks_, want = [], set()
    ether_blocks: list[bytes] = []
    want_ether: set[bytes] = set()
    for n in range(400):
        iface = rnd.randrange(2)  # 0: Ethernet, 1: raw IP
        if rnd.random() < 0.3:
            src, dst = rnd.choice(v6), rnd.choice(v6)
            ip = struct.pack("!IHBB", 6 << 28, 8, 17, 64) + src + dst + b"u" * 8
        else:
            src, dst = rnd.choice(v4), rnd.choice(v4)
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 1, 0, 64, 17, 0, src, dst) + b"u" * 8
        cut = rnd.choice([len(ip), len(ip), 19, 39])
        pkt = ip[:cut] if iface else (eth_v6 if len(src) == 16 else
                                      udp_frame("1.1.1.1", "1.1.1.1", 1, 1, b"")[:14]) + ip[:cut]
        seen = {src, dst} if cut >= (40 if len(src) == 16 else 20) else set()
        want |= seen
        if not iface:
            want_ether |= seen
            ether_blocks.append(pcapng.enhanced_packet(0, n, pkt, len(pkt), pcapng.INBOUND))
        blocks_.append(pcapng.enhanced_packet(iface, n, pkt, len(pkt), pcapng.INBOUND))

    def frames_of(blocks: list[bytes]) -> Frames:
        packed = np.frombuffer(b"".join(blocks), dtype=np.uint8).copy()
        lengths = np.array([len(b) for b in blocks], dtype=np.int64)
        return Frames(packed, (np.cumsum(lengths) - lengths).astype(np.int64), lengths)

    assert set(pcapng.packet_addresses(frames_of(blocks_), [1, 101])) == want
    # Ethernet only, IPv6 among IPv4, and IPv4 only.
    assert set(pcapng.packet_addresses(frames_of(ether_blocks), [1])) == want_ether
    only4 = [b for b in ether_blocks if b[28 + 12: 28 + 14] != b"\x86\xdd"]
    assert set(pcapng.packet_addresses(frames_of(only4), [1])) == {
        a for a in want_ether if len(a) == 4}
