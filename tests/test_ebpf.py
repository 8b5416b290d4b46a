"""The libbpf binding on its own: ring buffer decoding across wrap-around, batch map reads,
per-CPU counters, .rodata, tc attach/detach, and close-on-exit. Uses a test object compiled
here from tests/bpf/testprog.bpf.c, so the binding is tested without any gadget."""

from __future__ import annotations

import ctypes
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from bpfbuild import compile_bpf

from podsight.ebpf import BadObject, BpfObject, RingBuffer, TcHook
from podsight.ebpf.system import preflight
from podsight.ebpf.tc import filters_on
from podsight.errors import EnvironmentProblem

pytestmark = pytest.mark.root

HERE = Path(__file__).resolve().parent
RECORD = np.dtype([("seq", "<u8"), ("square", "<u8"), ("tgid", "<u4"), ("_pad", "<u4")])
libc = ctypes.CDLL(None, use_errno=True)
SYS_getpgid = 121  # x86_64


@pytest.fixture(scope="session")
def testprog(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bpf") / "testprog.bpf.o"
    return compile_bpf(HERE / "bpf/testprog.bpf.c", out)


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
        with pytest.raises(BadObject, match="4-byte keys, the key dtype 8"):
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


@pytest.fixture
def veth():
    """psltc0 (root netns, 10.251.0.1/30) <-> psltc1 in netns psl-test-tc (10.251.0.2)."""
    ns = "psl-test-tc"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "link", "add", "psltc0", "type", "veth", "peer", "name", "psltc1",
                        "netns", ns], check=True)
        subprocess.run(["ip", "addr", "add", "10.251.0.1/30", "dev", "psltc0"], check=True)
        subprocess.run(["ip", "link", "set", "psltc0", "up"], check=True)
        subprocess.run(["ip", "-n", ns, "addr", "add", "10.251.0.2/30", "dev", "psltc1"],
                       check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "psltc1", "up"], check=True)
        yield "psltc0"
    finally:
        subprocess.run(["ip", "link", "del", "psltc0"], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _tc(*argv: str) -> str:
    return subprocess.run(["tc", *argv], capture_output=True, text=True).stdout


def _tcx_links(ifindex: int) -> list[int]:
    """Ids of the tcx links on ifindex, from the kernel's own link info.

    bpftool 7.1 (Debian 12) predates tcx and prints neither its name nor
    its interface, so the info is read with BPF_OBJ_GET_INFO_BY_FD.
    """
    bpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
    out = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    found = []
    for link in json.loads(out or "[]"):
        if link.get("type") not in (11, "tcx"):  # BPF_LINK_TYPE_TCX
            continue
        fd = bpf.bpf_link_get_fd_by_id(ctypes.c_uint32(link["id"]))
        if fd < 0:
            continue  # gone since the listing
        try:
            info = ctypes.create_string_buffer(64)
            size = ctypes.c_uint32(len(info))
            # struct bpf_link_info: type, id, prog_id, then the union at 16: tcx.ifindex
            if (bpf.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size)) == 0
                    and struct.unpack_from("<I", info, 16)[0] == ifindex):
                found.append(link["id"])
        finally:
            os.close(fd)
    return found


def _send_udp(count: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for _ in range(count):
            udp.sendto(b"x", ("10.251.0.2", 9))


@pytest.mark.parametrize("mode", ["tcx", "clsact"])
def test_tc_hook_counts_packets_and_detaches(testprog, veth, mode):
    ifindex = socket.if_nametoindex(veth)
    with open_loaded(testprog) as obj, TcHook(obj.program("count_packets"), veth, "egress",
                                              mode=mode) as hook:
        assert hook.mode == mode
        if mode == "tcx":
            assert len(_tcx_links(ifindex)) == 1
            assert "clsact" not in _tc("qdisc", "show", "dev", veth)
        else:
            assert "count_packets" in _tc("filter", "show", "dev", veth, "egress")
        _send_udp(3)
        assert int(obj.map("counters").percpu_u64_sums()[1]) >= 3
    assert not _tcx_links(ifindex)
    assert "clsact" not in _tc("qdisc", "show", "dev", veth)


def test_tc_hook_prefers_tcx(testprog, veth):
    """tcx is detached by the kernel when its owner dies: auto must pick it where it exists."""
    with open_loaded(testprog) as obj, \
            TcHook(obj.program("count_packets"), veth, "ingress") as hook:
        assert hook.mode == "tcx"


def test_tcx_passes_packets_on_to_clsact_filters(testprog, veth):
    """An observer must not end the chain: a CNI's clsact filter still sees every packet."""
    with open_loaded(testprog) as obj, \
            TcHook(obj.program("count_packets_too"), veth, "egress", mode="clsact"), \
            TcHook(obj.program("count_packets"), veth, "egress", mode="tcx"):
        _send_udp(5)
        sums = obj.map("counters").percpu_u64_sums()
        assert int(sums[1]) >= 5 and int(sums[2]) >= 5, sums


def test_tcx_link_goes_away_when_its_process_is_killed(testprog, veth):
    """SIGKILL gives podsight no chance to detach; the kernel must do it."""
    ifindex = socket.if_nametoindex(veth)
    child = subprocess.Popen(
        [sys.executable, "-c", f"""
import sys, time
sys.path.insert(0, {str(HERE)!r})
from test_ebpf import open_loaded
from pathlib import Path
from podsight.ebpf import TcHook
obj = open_loaded(Path({str(testprog)!r}))
prog = obj.program("count_packets")
hooks = [TcHook(prog, {veth!r}, d, mode="tcx") for d in ("ingress", "egress")]
print("ready", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        assert len(_tcx_links(ifindex)) == 2
    finally:
        child.kill()
        child.wait()
    for _ in range(50):  # the links go with the last fd, as the process is reaped
        if not _tcx_links(ifindex):
            break
        time.sleep(0.1)
    assert not _tcx_links(ifindex)


def test_tc_hooks_share_the_qdisc_until_the_last_one_closes(testprog, veth):
    """Closing the hook that created clsact must not remove a filter attached after it.

    Two podsight runs (or ingress and egress of one run) share one qdisc;
    deleting it with the first close would silently stop the other.
    """
    with open_loaded(testprog) as obj:
        prog = obj.program("count_packets")
        first = TcHook(prog, veth, "egress", mode="clsact")
        second = TcHook(prog, veth, "egress", mode="clsact")
        third = TcHook(prog, veth, "ingress", mode="clsact")
        assert filters_on(socket.if_nametoindex(veth)) >= 3
        first.close()
        assert "count_packets" in _tc("filter", "show", "dev", veth, "egress")
        second.close()
        assert "count_packets" not in _tc("filter", "show", "dev", veth, "egress")
        assert "clsact" in _tc("qdisc", "show", "dev", veth)
        third.close()
    assert "clsact" not in _tc("qdisc", "show", "dev", veth)
    assert filters_on(socket.if_nametoindex(veth)) == 0


def test_tc_hook_leaves_a_qdisc_it_did_not_create(testprog, veth):
    subprocess.run(["tc", "qdisc", "add", "dev", veth, "clsact"], check=True)
    with open_loaded(testprog) as obj:
        TcHook(obj.program("count_packets"), veth, "ingress", mode="clsact").close()
    assert "clsact" in _tc("qdisc", "show", "dev", veth)


def test_missing_object_is_a_clear_error(tmp_path):
    with pytest.raises(EnvironmentProblem, match="missing"):
        BpfObject(tmp_path / "nope.bpf.o")
