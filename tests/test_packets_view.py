"""`podsight packets` in the live view, without root: blocks laid out as the kernel writes
them (Enhanced Packet Blocks with the epb_flags direction after the data), sampled and
decoded as the pipeline does, named by identity, shown by the real packets schema."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from typing import Any

import numpy as np
from test_tui_keys import run_app, screen_text, until

from podsight.gadgets.packets.capture import slot_size
from podsight.gadgets.packets.records import decode
from podsight.gadgets.packets.schema import schema
from podsight.identity.endpoint import Endpoint, PodInfo
from podsight.outputs import pcapng
from podsight.outputs.live import SAMPLE, LiveFeed
from podsight.pipeline import Admission, CaptureInterface, Frames
from podsight.selectors import PodSelector
from podsight.timefmt import Clock
from podsight.tui.app import LiveApp

CLOCK = Clock()
FRONTEND = PodInfo("shop", "frontend", ("10.244.0.4",), node="node-a",
                   workload_kind="Deployment", workload_name="frontend", containers=("web",))
BACKEND = PodInfo("shop", "backend", ("10.244.0.5",), node="node-a")
PODS = {p.ips[0]: p for p in (FRONTEND, BACKEND)}


def tcp_syn(src: str, dst: str, sport: int, dport: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 64240, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return bytes.fromhex("02706c6c0105" "02706c6c0104" "0800") + ip + tcp


def slot_frames(packets: list[tuple[int, bytes, int]], snaplen: int = 256) -> Frames:
    """The capture_slot layout: fixed-size ring slots, each an EPB cut at ``snaplen``, with
    the ring buffer's 8-byte record header before it (Frames point past it)."""
    slot = slot_size(snaplen)
    ring = np.zeros(len(packets) * (slot + 8), dtype=np.uint8)
    offsets, lengths = [], []
    wall = CLOCK.wall_ns(CLOCK.boot_now_ns())
    for i, (iface, data, flags) in enumerate(packets):
        block = pcapng.enhanced_packet(iface, wall + i, data[:snaplen], len(data), flags)
        at = i * (slot + 8) + 8
        ring[at: at + len(block)] = np.frombuffer(block, dtype=np.uint8)
        offsets.append(at)
        lengths.append(len(block))
    return Frames(ring, np.array(offsets, dtype=np.int64), np.array(lengths, dtype=np.int64))


class Resolver:
    """Identity for two lab pods."""

    def endpoint(self, addr: str, *, at_ns: int | None = None) -> Endpoint:
        pod = PODS.get(addr)
        return Endpoint.for_pod(addr, pod) if pod is not None else Endpoint.raw(addr)


IFACES = [CaptureInterface(0, "p/shop/frontend", "", 256),
          CaptureInterface(1, "p/shop/backend", "", 256)]


def test_blocks_decode_to_packets_with_direction_lengths_and_bytes() -> None:
    syn = tcp_syn("10.244.0.4", "10.244.0.5", 40000, 80)
    big = syn + b"x" * 400
    frames = slot_frames([(0, syn, pcapng.OUTBOUND), (1, big, pcapng.INBOUND)])
    first, second = decode(frames, np.arange(2), IFACES, CLOCK.offset_ns)
    assert (first.interface, first.direction, first.protocol) == ("p/shop/frontend", "egress",
                                                                  "tcp")
    assert (first.saddr, first.sport, first.daddr, first.dport) == ("10.244.0.4", 40000,
                                                                    "10.244.0.5", 80)
    assert first.tcp_flags == 0x02 and first.data == syn
    assert (first.length, first.caplen) == (len(syn), len(syn))
    assert abs(first.ts_ns - CLOCK.boot_now_ns()) < 10_000_000_000
    assert (second.interface, second.direction) == ("p/shop/backend", "ingress")
    assert (second.length, second.caplen) == (len(big), 256) and second.data == big[:256]


def test_the_view_samples_packets_and_details_show_decoded_headers() -> None:
    """A batch larger than the sample: the view decodes SAMPLE blocks, each standing for the
    rest, named by identity; the detail pane decodes the selected packet."""
    n = 500
    syn = tcp_syn("10.244.0.4", "10.244.0.5", 40000, 80)
    frames = slot_frames([(i % 2, syn, pcapng.OUTBOUND if i % 2 == 0 else pcapng.INBOUND)
                          for i in range(n)])
    sch = schema(CLOCK)
    admission = Admission(sch, Resolver(), PodSelector(), frozenset(), ())  # type: ignore[arg-type]
    feed = LiveFeed("podsight packets", "packets captured")
    feed.open(sch, sch.columns(None), [("/tmp/x.pcapng", lambda: 4096)])
    decoded: list[int] = []

    def decode_sample(which: np.ndarray) -> list[Any]:
        decoded.append(len(which))
        return admission(decode(frames, which, IFACES, CLOCK.offset_ns))

    feed.offer(np.arange(len(frames)), decode_sample)
    feed.tick(n)
    assert decoded == [SAMPLE] and feed.received == n

    async def test(app: LiveApp, pilot: Any) -> None:
        text = screen_text(app)
        for header in ("TIME", "IFACE", "DIR", "SRC", "DST", "PROTO", "LEN", "INFO"):
            assert header in text, text
        row = next(line for line in text.splitlines() if "p/shop/frontend:40000" in line)
        assert "p/shop/backend:80" in row and "tcp" in row and "SYN" in row
        assert "x.pcapng" in text
        await pilot.press("ctrl+d")
        await until(pilot, lambda: app.detail_shown, "the detail pane")
        detail = str(app.query_one("#detail-text").render())
        assert "IPv4 10.244.0.4 > 10.244.0.5 tcp" in detail
        assert "TCP 40000 > 80 [SYN]" in detail
        assert "0000  02 70 6c 6c 01 05 02 70" in detail
        assert "workload   shop/Deployment/frontend" in detail
        await pilot.press("ctrl+t")  # rate mode: bytes per pod pair, from LEN
        assert "LEN/S" in app.headers

    run_app(feed, test)


def packets_help() -> str:
    return subprocess.run([sys.executable, "-m", "podsight.cli.main", "packets", "--help"],
                          capture_output=True, text=True, check=True).stdout


def test_packets_offers_the_view_and_no_record_files() -> None:
    text = packets_help()
    assert "--no-tui" in text
    for flag in ("--json", "--sqlite", "--tui ", "-o OUTPUT"):
        assert flag not in text, flag
    done = subprocess.run([sys.executable, "-m", "podsight.cli.main", "packets", "-w",
                           "/tmp/never.pcapng", "--json", "x.json"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 2 and "unrecognized arguments: --json" in done.stderr
