"""Program.info() and BpfObject.run_stats(): what the kernel counts about each program, above
all the runs it skipped. A skip is forced for real: a program on the bpf_trace_printk
tracepoint that calls bpf_printk itself nests on its own CPU, and the kernel must skip the
nested run (tests/bpf/recursion.bpf.c)."""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

import pytest
from bpfbuild import compile_bpf

from podsight.ebpf import BpfError, BpfObject, Closed, ProgramInfo
from podsight.ebpf import _libbpf as L
from podsight.ebpf.objects import _info_field
from podsight.ebpf.system import preflight

HERE = Path(__file__).resolve().parent
SYS_getpgid = 121  # x86_64
libc = ctypes.CDLL(None, use_errno=True)
TRIGGERS = 5


@pytest.fixture(scope="module")
def recursion(tmp_path_factory) -> Path:
    return compile_bpf(HERE / "bpf/recursion.bpf.c",
                       tmp_path_factory.mktemp("bpf") / "recursion.bpf.o")


def loaded(path: Path) -> BpfObject:
    preflight()
    obj = BpfObject(path)
    try:
        obj.load()
        obj.map("tgid").update(struct.pack("<I", 0), struct.pack("<I", os.getpid()))
    except BaseException:
        obj.close()
        raise
    return obj


def trigger(times: int) -> None:
    """getpgid() -> printk_on_getpgid prints -> nests runs, prints, and is skipped nested."""
    for _ in range(times):
        libc.syscall(SYS_getpgid, ctypes.c_long(0))


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_a_nested_run_is_skipped_and_counted_in_recursion_misses(recursion):
    with loaded(recursion) as obj:
        obj.attach_all()
        before = obj.run_stats()
        trigger(TRIGGERS)
        after = obj.run_stats()
        runs = obj.map("runs").percpu_u64_sums().tolist()
    assert runs == [TRIGGERS, TRIGGERS, 2 * TRIGGERS]  # never_nests ran inside nests too
    infos = {i.name: i for i in after.programs}
    assert set(infos) == {"printk_on_getpgid", "nests", "never_nests"}
    assert infos["nests"].recursion_misses == TRIGGERS  # one skipped nested run per trigger
    assert infos["never_nests"].recursion_misses == 0
    assert infos["printk_on_getpgid"].recursion_misses == 0
    assert before.recursion_misses == 0 and after.recursion_misses == TRIGGERS
    for info in after.programs:
        assert info.id > 0 and info.verified_insns and info.verified_insns > 0


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_run_counts_while_statistics_are_enabled(recursion):
    with loaded(recursion) as obj:
        obj.attach_all()
        bpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
        stats_fd = bpf.bpf_enable_stats(0)  # BPF_STATS_RUN_TIME, on while the fd is open
        assert stats_fd >= 0, os.strerror(-stats_fd)
        try:
            trigger(TRIGGERS)
            infos = {i.name: i for i in obj.run_stats().programs}
        finally:
            os.close(stats_fd)
    # never_nests also runs for other processes' bpf_printk, and returns at once for them.
    assert infos["never_nests"].run_cnt is not None
    assert infos["never_nests"].run_cnt >= 2 * TRIGGERS
    assert infos["nests"].run_time_ns is not None and infos["nests"].run_time_ns > 0


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_run_stats_skips_programs_not_loaded_and_info_needs_an_open_object(recursion):
    preflight()
    obj = BpfObject(recursion)
    with obj:
        obj.program("nests").set_autoload(False)
        obj.load()
        names = [i.name for i in obj.run_stats().programs]
        assert names == ["printk_on_getpgid", "never_nests"]
        with pytest.raises(BpfError, match=r"nests of recursion\.bpf\.o is not loaded"):
            obj.program("nests").info()
        prog = obj.program("never_nests")
    with pytest.raises(Closed):
        prog.info()


def test_fields_an_older_kernel_did_not_fill_are_none():
    """info_len comes back as what the kernel filled: 5.10 stops before recursion_misses."""
    info = L.BpfProgInfo(id=7, run_cnt=3, recursion_misses=9, verified_insns=4)
    filled = L.BpfProgInfo.recursion_misses.offset  # 208: up to run_cnt
    assert _info_field(info, filled, "run_cnt") == 3
    assert _info_field(info, filled, "recursion_misses") is None
    assert _info_field(info, filled, "verified_insns") is None
    assert _info_field(info, ctypes.sizeof(info), "verified_insns") == 4
    assert ProgramInfo.__slots__  # a small frozen record, not a dict
