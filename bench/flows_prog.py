"""Benchmark: what one run of the flows tc program costs, timed by the kernel without traffic.

Run as root::

    .venv/bin/python bench/flows_prog.py [--repeat 1000000] [--rounds 7] [--json FILE]

BPF_PROG_TEST_RUN runs ``flows_ingress`` on one frame ``--repeat`` times in
a loop and reports the mean time per run; the empty tc program (``return
TC_ACT_UNSPEC``) runs the same way beside it, interleaved, and its time --
the loop and the call -- is subtracted. The first run of each frame creates
its flow; every later one is the hot path a packet of a known flow takes
(in its CPU's flow-cache slot). Frames:

``ipv4-tcp``
    IPv4 without options, TCP with timestamps, 1448 bytes of payload: the
    fixed-offset path, what a bulk TCP sender's packets take.
``ipv4-udp``
    the same for a 64-byte UDP datagram.
``ipv4-options``
    IPv4 with 4 bytes of options: the general walk.
``ipv6-tcp``
    IPv6 TCP: the general walk.

Everything is hot in the CPU's caches here, unlike on a busy data path, so
these are lower bounds of what a packet costs in traffic (bench/flows.py
measures that, with the kernel's run-time statistics); they are meant to
compare builds and ideas, one nanosecond at a time. Figures are printed,
never asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import struct
import sys
from pathlib import Path
from typing import Any

from benchlib import BenchError, Children, run_guarded

from podsight.ebpf import RawProgram, prog_test_run
from podsight.ebpf.progs import BPF_PROG_TYPE_SCHED_CLS, EMPTY_TC
from podsight.gadgets.flows.flows import Flows, FlowsConfig

TCP_TS = struct.pack("!BBBBII", 1, 1, 8, 10, 1, 2)  # NOP NOP timestamps: 12 bytes


def ethernet(ethertype: int) -> bytes:
    return b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + struct.pack("!H", ethertype)


def ipv4(proto: int, l4: bytes, options: bytes = b"") -> bytes:
    ihl = 5 + len(options) // 4
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(l4), 1, 0x4000, 64, proto,
                       0, bytes([10, 250, 0, 2]), bytes([10, 250, 0, 1]))
    return ethernet(0x0800) + head + options + l4


def ipv6(proto: int, l4: bytes) -> bytes:
    src = bytes.fromhex("fd000250000000000000000000000002")
    dst = bytes.fromhex("fd000250000000000000000000000001")
    return ethernet(0x86DD) + struct.pack("!IHBB", 6 << 28, len(l4), proto, 64) + src + dst + l4


def tcp(payload: int) -> bytes:
    return struct.pack("!HHIIBBHHH", 40000, 5201, 1, 1, 8 << 4, 0x10, 1000, 0, 0) + TCP_TS + \
        b"x" * payload


def udp(payload: int) -> bytes:
    return struct.pack("!HHHH", 40001, 5202, 8 + payload, 0) + b"u" * payload


FRAMES = {
    "ipv4-tcp": ipv4(6, tcp(1448)),
    "ipv4-udp": ipv4(17, udp(64)),
    "ipv4-options": ipv4(6, tcp(1448), options=b"\x01\x01\x01\x00"),
    "ipv6-tcp": ipv6(6, tcp(1428)),
}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise BenchError("needs root (it loads eBPF programs)")
    times: dict[str, list[int]] = {name: [] for name in ("empty", *FRAMES)}
    with RawProgram(BPF_PROG_TYPE_SCHED_CLS, EMPTY_TC, "bench_null_tc") as empty, \
            Flows(FlowsConfig()) as flows:
        prog = flows.program("flows_ingress")
        for frame in FRAMES.values():
            prog_test_run(prog, frame)  # the flow's first packet: into its cache slot
        for _ in range(args.rounds):
            times["empty"].append(prog_test_run(empty, FRAMES["ipv4-tcp"],
                                                args.repeat).duration_ns)
            for name, frame in FRAMES.items():
                times[name].append(prog_test_run(prog, frame, args.repeat).duration_ns)
        counters = flows.counters()
    runs = args.repeat * args.rounds + 1
    if counters["packets"] != runs * len(FRAMES):
        raise BenchError(f"flows counted {counters['packets']} packets, not {runs * len(FRAMES)}")
    empty_ns = statistics.median(times["empty"])
    print(f"flows_ingress, BPF_PROG_TEST_RUN: {args.rounds} rounds of {args.repeat:,} runs, "
          "medians (min)\n")
    print(f"{'frame':<14}{'ns/run':>8}{'min':>6}{'over empty':>12}")
    results: dict[str, Any] = {"repeat": args.repeat, "rounds": args.rounds, "frames": {}}
    for name, values in times.items():
        median = statistics.median(values)
        over = "" if name == "empty" else f"{median - empty_ns:>12.0f}"
        print(f"{name:<14}{median:>8.0f}{min(values):>6}{over}")
        results["frames"][name] = {"ns_per_run": median, "min": min(values),
                                   "over_empty": median - empty_ns, "all": values}
    print("\nempty: the empty tc program, the loop and call every run pays; over empty: "
          "flows_ingress's own time")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--repeat", type=int, default=1_000_000, help="runs per measurement")
    p.add_argument("--rounds", type=int, default=7, help="interleaved measurements per frame")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    args = p.parse_args(argv)
    if args.repeat < 1 or args.rounds < 1:
        p.error("--repeat and --rounds must be positive")

    def work(children: Children) -> dict[str, Any]:
        return measure(args)

    return run_guarded("bench/flows_prog.py", work, args.json)


if __name__ == "__main__":
    sys.exit(main())
