"""What one captured packet costs on each side of `podsight packets`, without traffic noise.

usage (root, from the repository root):

    .venv/bin/python bench/packets_path.py [--seconds 4] [--rate 400000] [--rounds 3]

Kernel side: ``BPF_PROG_TEST_RUN`` of the real programs on a 1514-byte TCP
frame, in ns per run: a no-op tc program (the hook's floor), the entry
program with a filter that rejects everything, and entry + tail call +
capture program at snaplen 96 (fixed ring records) and whole packets (per-CPU
streams). These run with the ring's memory hot in this CPU's cache; on real
traffic the capture program's first write into ring memory that the reader
last touched on another CPU costs more (see ``bench/packets.py
--prog-stats``).

User side: a thread pinned to CPU 1 runs the entry program the same way at
a paced rate (2 data frames to 1 ACK, like one TCP stream), so the ring is
filled by another CPU as on real traffic; the main thread, pinned to CPU 0,
is the pipeline's frame path (wait, ``Capture.frames``,
``PcapngOutput.write_frames`` into a file under /tmp, release). Reported:
its CPU time (user and system) per packet written, and what the kernel
counted as lost. No namespace, no interface, no tc attachment: nothing here
touches the network, so it does not take the shared test lock.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchlib import BenchError, Children, run_guarded

from podsight.ebpf.progs import BPF_PROG_TYPE_SCHED_CLS, RawProgram, prog_test_run
from podsight.gadgets.packets.capture import Capture
from podsight.gadgets.packets.filter import compile_filter, entry_program
from podsight.outputs.pcapng import PcapngOutput
from podsight.pipeline import CaptureInterface


def frame(payload: bytes) -> bytes:
    """An Ethernet/IPv4/TCP frame from 10.254.7.1:5301 to 10.254.7.2:40000."""
    tcp = struct.pack("!HHIIBBHHH", 5301, 40000, 1, 1, 0x50, 0x10, 512, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0, 64, 6, 0,
                     bytes([10, 254, 7, 1]), bytes([10, 254, 7, 2]))
    return bytes.fromhex("020000000002020000000001") + b"\x08\x00" + ip + tcp + payload


DATA, ACK = frame(b"x" * 1460), frame(b"")
NOOP = struct.pack("<BBhi", 0xB7, 0, 0, -1) + struct.pack("<BBhi", 0x95, 0, 0, 0)  # r0 = -1


def empty_capture(cap: Capture) -> None:
    """Give every byte the programs wrote back, as a reader that wrote it all would."""
    ring = cap.ring
    if ring._cons is not None:
        ring._cons.value = int(ring._prod[0])
    if cap.stream:
        for cpu, cons in enumerate(cap._cons):
            cons.value = int.from_bytes(cap._pos_mm[cpu * 16: cpu * 16 + 8], "little")


def per_run_ns(prog: RawProgram, cap: Capture | None, repeat: int, rounds: int = 15) -> float:
    """The fastest of ``rounds`` runs of ``repeat`` packets, in ns per packet."""
    best = []
    for _ in range(rounds):
        if cap is not None:
            empty_capture(cap)
        best.append(prog_test_run(prog, DATA, repeat).duration_ns)
    return float(min(best))


def kernel_side() -> dict[str, float]:
    out: dict[str, float] = {}
    noop = RawProgram(BPF_PROG_TYPE_SCHED_CLS, NOOP, "bench_noop")
    try:
        out["no-op tc program"] = per_run_ns(noop, None, 20000)
    finally:
        noop.close()
    for label, snap, repeat in (("snaplen 96", 96, 20000), ("whole packets", 65535, 500)):
        cap = Capture(snap, 64 << 20 if snap > 256 else 32 << 20)
        try:
            reject = RawProgram(BPF_PROG_TYPE_SCHED_CLS, entry_program(
                compile_filter("udp port 9", snap, 1), "ingress", cap.jump_fd, cap.meta_fd, 0),
                "bench_reject")
            accept = RawProgram(BPF_PROG_TYPE_SCHED_CLS, entry_program(
                None, "ingress", cap.jump_fd, cap.meta_fd, 0), "bench_accept")
            try:
                if snap == 96:
                    out["entry, reject-all filter"] = per_run_ns(reject, cap, 20000)
                out[f"entry + capture, {label}"] = per_run_ns(accept, cap, repeat)
            finally:
                reject.close()
                accept.close()
        finally:
            cap.close()
    return out


def user_side(snaplen: int, seconds: float, rate: float,
              buffer: int | None = None, wake: int | None = None) -> dict[str, Any]:
    """The frame path's CPU per packet while another CPU fills the ring at ``rate``."""
    if len(os.sched_getaffinity(0)) < 2:
        raise BenchError("needs two CPUs")
    cap = Capture(snaplen, buffer) if wake is None else Capture(snaplen, buffer, wake)
    prog = RawProgram(BPF_PROG_TYPE_SCHED_CLS, entry_program(
        None, "ingress", cap.jump_fd, cap.meta_fd, 0), "bench_accept")
    iface = CaptureInterface(id=0, name="bench", description="bench", snaplen=snaplen)
    stop = threading.Event()

    def producer() -> None:
        os.sched_setaffinity(0, {1})
        t0, n = time.monotonic(), 0
        while not stop.is_set():
            prog_test_run(prog, DATA, 200)
            prog_test_run(prog, ACK, 100)
            n += 300
            ahead = n / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)

    with tempfile.TemporaryDirectory(prefix="podsight-bench-") as tmp:
        out = PcapngOutput(os.path.join(tmp, "p.pcapng"))
        thread = threading.Thread(target=producer)
        cpus = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {0})
        thread.start()
        try:
            time.sleep(0.3)
            written = 0
            r0 = resource.getrusage(resource.RUSAGE_THREAD)
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds:
                cap.wait(0.05)
                frames = cap.frames()
                written += out.write_frames(frames, [iface])
                frames.release()
                del frames
            r1 = resource.getrusage(resource.RUSAGE_THREAD)
            elapsed = time.monotonic() - t0
        finally:
            stop.set()
            thread.join()
            os.sched_setaffinity(0, cpus)
        counts = cap.counts([0]).get(0)
        out.close([iface])
        prog.close()
        cap.close()
    n = max(written, 1)
    return {"snaplen": snaplen, "written_pps": round(written / elapsed),
            "lost": int(counts["lost_ring"]) if counts is not None else 0,
            "user_us": round((r1.ru_utime - r0.ru_utime) / n * 1e6, 3),
            "sys_us": round((r1.ru_stime - r0.ru_stime) / n * 1e6, 3)}


def work(args: argparse.Namespace, children: Children) -> dict[str, Any]:
    kernel = kernel_side() if not args.no_kernel else {}
    print("kernel side (BPF_PROG_TEST_RUN, 1514-byte frame, ns per packet):")
    for label, ns in kernel.items():
        print(f"  {label:34} {ns:6.0f}")
    rows = []
    for rnd in range(args.rounds):
        for snap in args.snaplens:
            row = user_side(snap, args.seconds, args.rate, args.buffer, args.wake)
            row["round"] = rnd
            rows.append(row)
            print(row, file=sys.stderr)
    print(f"user side (frame path, {args.rate:,.0f} packets/s from CPU 1, CPU s per Mpkt; "
          f"median and range of {args.rounds}):")
    for snap in args.snaplens:
        mine = [r for r in rows if r["snaplen"] == snap]
        for key in ("user_us", "sys_us"):
            v = [r[key] for r in mine]
            print(f"  snaplen {snap:5} {key[:-3]:5} {statistics.median(v):.3f} "
                  f"({min(v):.3f}-{max(v):.3f})")
        print(f"  snaplen {snap:5} lost  {sum(r['lost'] for r in mine)}")
    return {"kernel_ns": kernel, "user": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rate", type=float, default=400e3, help="packets/s the producer sends")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--snaplens", type=lambda t: [int(w) for w in t.split(",")],
                        default=[96, 65535], help="user side: these snap lengths")
    parser.add_argument("--buffer", type=lambda t: int(float(t.rstrip("M")) * (1 << 20)),
                        help="user side: --buffer-size, e.g. 8M (default: podsight's)")
    parser.add_argument("--wake", type=lambda t: int(float(t.rstrip("K")) * 1024),
                        help="user side, whole packets: the stream's wake mark, e.g. 256K "
                             "(0: a quarter of the stream)")
    parser.add_argument("--no-kernel", action="store_true", help="skip the kernel side")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("packets path bench: run as root", file=sys.stderr)
        return 1
    return run_guarded("packets path bench", lambda children: work(args, children), args.json)


if __name__ == "__main__":
    sys.exit(main())
