"""The libbpf binding on its own: ring buffer decoding across wrap-around, batch map reads,
per-CPU counters, .rodata, tc attach/detach, and close-on-exit. Uses a test object compiled
here from tests/bpf/testprog.bpf.c, so the binding is tested without any gadget."""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from podsight.ebpf import BpfObject, RingBuffer, TcHook
from podsight.ebpf.system import preflight
from podsight.errors import EnvironmentProblem

HERE = Path(__file__).resolve().parent
RECORD = np.dtype([("seq", "<u8"), ("square", "<u8"), ("tgid", "<u4"), ("_pad", "<u4")])
libc = ctypes.CDLL(None, use_errno=True)
SYS_getpgid = 121  # x86_64


@pytest.fixture(scope="session")
def testprog(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bpf") / "testprog.bpf.o"
    machine = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True).stdout
    subprocess.run(
        ["clang", "-g", "-O2", "-target", "bpf", "-Wall", "-Werror",
         f"-I/usr/include/{machine.strip() or 'x86_64-linux-gnu'}",
         "-c", str(HERE / "bpf/testprog.bpf.c"), "-o", str(out)],
        check=True,
    )
    return out


def open_loaded(path: Path, *, ring_bytes: int = 4096) -> BpfObject:
    preflight(tracefs=True)
    obj = BpfObject(path)
    obj.map(".rodata").set_initial_value(struct.pack("<II", os.getpid(), 0))
    obj.map("ring").resize(ring_bytes)
    obj.load()
    return obj


def emit(seq: int) -> None:
    libc.syscall(SYS_getpgid, ctypes.c_long(seq))


def test_ring_buffer_decodes_every_record_in_order_across_wraps(testprog):
    with open_loaded(testprog) as obj:
        obj.program("on_getpgid").attach()
        ring = RingBuffer(obj.map("ring"), RECORD)
        seen: list[np.ndarray] = []
        # 4 KiB holds 128 records of 32 bytes: 20k records wrap the ring ~150 times.
        for start in range(0, 20_000, 100):
            for seq in range(start, start + 100):
                emit(seq)
            seen.append(ring.drain())
        seen.append(ring.drain())
        got = np.concatenate(seen)
        lost = int(obj.map("counters").percpu_u64_sums()[0])
        ring.close()
    assert lost == 0
    assert got["seq"].tolist() == list(range(20_000))
    assert (got["square"] == got["seq"] * got["seq"]).all()
    assert (got["tgid"] == os.getpid()).all()


def test_ring_buffer_full_is_counted_not_silent(testprog):
    with open_loaded(testprog) as obj:
        obj.program("on_getpgid").attach()
        ring = RingBuffer(obj.map("ring"), RECORD)
        for seq in range(1000):
            emit(seq)
        got = ring.drain()
        lost = int(obj.map("counters").percpu_u64_sums()[0])
        ring.close()
    assert 0 < len(got) < 1000
    assert len(got) + lost == 1000
    assert got["seq"].tolist() == list(range(len(got)))


def test_batch_lookup_and_delete(testprog):
    with open_loaded(testprog) as obj:
        table = obj.map("table")
        for k in range(10):
            table.update(struct.pack("<I", k), struct.pack("<Q", k * 1000))
        keys, values = table.lookup_batch(np.dtype("<u4"), np.dtype("<u8"))
        assert dict(zip(keys.tolist(), values.tolist(), strict=True)) == {
            k: k * 1000 for k in range(10)
        }
        keys, _ = table.lookup_batch(np.dtype("<u4"), np.dtype("<u8"), delete=True)
        assert sorted(keys.tolist()) == list(range(10))
        assert len(table.lookup_batch(np.dtype("<u4"), np.dtype("<u8"))[0]) == 0
        assert table.lookup(struct.pack("<I", 3)) is None
        with pytest.raises(ValueError):
            table.lookup_batch(np.dtype("<u8"), np.dtype("<u8"))


def test_links_are_destroyed_on_close(testprog):
    def our_links() -> int:
        out = subprocess.run(["bpftool", "-j", "link", "list"], capture_output=True, text=True)
        import json

        progs = {p["id"] for p in json.loads(
            subprocess.run(["bpftool", "-j", "prog", "list"], capture_output=True,
                           text=True).stdout) if p.get("name") == "on_getpgid"}
        return sum(1 for link in json.loads(out.stdout or "[]") if link.get("prog_id") in progs)

    before = our_links()
    obj = open_loaded(testprog)
    obj.program("on_getpgid").attach()
    assert our_links() == before + 1
    obj.close()
    assert our_links() == before


def test_tc_hook_counts_packets_and_detaches(testprog):
    ns = "psl-test-tc"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "link", "add", "psltc0", "type", "veth", "peer", "name", "psltc1",
                        "netns", ns], check=True)
        subprocess.run(["ip", "addr", "add", "192.0.2.201/30", "dev", "psltc0"], check=True)
        subprocess.run(["ip", "link", "set", "psltc0", "up"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", "192.0.2.202/30", "dev", "psltc1"],
                       check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "psltc1", "up"], check=True)
        with open_loaded(testprog) as obj, TcHook(obj.program("count_packets"), "psltc0",
                                                  "egress"):
            shown = subprocess.run(["tc", "filter", "show", "dev", "psltc0", "egress"],
                                   capture_output=True, text=True).stdout
            assert "count_packets" in shown
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                for _ in range(3):
                    udp.sendto(b"x", ("192.0.2.202", 9))
            assert int(obj.map("counters").percpu_u64_sums()[1]) >= 3
        shown = subprocess.run(["tc", "qdisc", "show", "dev", "psltc0"], capture_output=True,
                               text=True).stdout
        assert "clsact" not in shown
    finally:
        subprocess.run(["ip", "link", "del", "psltc0"], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_missing_object_is_a_clear_error(tmp_path):
    with pytest.raises(EnvironmentProblem, match="missing"):
        BpfObject(tmp_path / "nope.bpf.o")
