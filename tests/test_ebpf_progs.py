"""podsight.ebpf.progs: programs from raw instructions, BPF_PROG_TEST_RUN, run-time statistics.

Real kernel, no gadget: the empty tc program (what bench/flows.py attaches as
its floor) is loaded from two instructions, run by the kernel on a frame we
give it, attached with TcHook, and counted by the kernel's statistics, read
back with bpftool (an independent reader).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from podsight.ebpf import Closed, RawProgram, RunTimeStats, TcHook, prog_test_run
from podsight.ebpf.progs import BPF_PROG_TYPE_SCHED_CLS, EMPTY_TC, insn
from podsight.ebpf.system import preflight

TC_ACT_UNSPEC = -1
FRAME = bytes(12) + b"\x08\x00" + bytes(46)  # an Ethernet frame; the program reads nothing

pytestmark = pytest.mark.root  # loading programs needs root


def prog_id(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("prog_id:"):
            return int(line.split()[1])
    raise AssertionError(f"fd {fd} is not a BPF program")


def bpftool_prog(ident: int) -> dict[str, object]:
    assert shutil.which("bpftool"), "needs bpftool: run 'make setup-test'"
    out = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(ident)],
                         capture_output=True, text=True, check=True).stdout
    info: dict[str, object] = json.loads(out)
    return info


def test_raw_program_loads_runs_and_closes():
    preflight()
    with RawProgram(BPF_PROG_TYPE_SCHED_CLS, EMPTY_TC, "podsight_null") as prog:
        ident = prog_id(prog.fd)
        info = bpftool_prog(ident)
        assert info["type"] == "sched_cls" and info["name"] == "podsight_null"
        run = prog_test_run(prog, FRAME, repeat=1000)
        assert run.retval == TC_ACT_UNSPEC
        assert run.duration_ns > 0
    with pytest.raises(Closed):
        _ = prog.fd
    gone = subprocess.run(["bpftool", "prog", "show", "id", str(ident)], capture_output=True)
    assert gone.returncode != 0, "the program outlived its only fd"


def test_test_run_returns_what_the_program_returns():
    """r0 = 2 (TC_ACT_SHOT); exit: the retval is the program's, not a constant of ours."""
    with RawProgram(BPF_PROG_TYPE_SCHED_CLS, insn(0xB7, imm=2) + insn(0x95), "podsight_two") as p:
        assert prog_test_run(p, FRAME).retval == 2


def test_bad_instructions_are_refused():
    with pytest.raises(ValueError):
        RawProgram(BPF_PROG_TYPE_SCHED_CLS, EMPTY_TC[:-1], "podsight_bad")
    with pytest.raises(OSError):  # no exit: the verifier says no
        RawProgram(BPF_PROG_TYPE_SCHED_CLS, insn(0xB7, imm=-1), "podsight_bad")


def test_run_time_stats_count_runs_while_open_only():
    with RawProgram(BPF_PROG_TYPE_SCHED_CLS, EMPTY_TC, "podsight_null") as prog:
        ident = prog_id(prog.fd)
        with RunTimeStats():
            prog_test_run(prog, FRAME, repeat=500)
            on = bpftool_prog(ident)
        assert int(on.get("run_cnt", 0)) >= 500, on
        assert int(on.get("run_time_ns", 0)) > 0, on
        if Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip() != "0":
            return  # someone else has them on system-wide: nothing more to check
        prog_test_run(prog, FRAME, repeat=500)
        off = bpftool_prog(ident)
        assert int(off.get("run_cnt", 0)) == int(on.get("run_cnt", 0)), (on, off)


def test_tc_hook_attaches_a_raw_program(lab):
    """The empty program on a lab veth, with tcx: bpftool sees the link, and it goes on close."""
    ifname = "pslh2"  # default/mypod's host side: nothing else of the tests attaches there
    ifindex = socket.if_nametoindex(ifname)
    with RawProgram(BPF_PROG_TYPE_SCHED_CLS, EMPTY_TC, "podsight_null") as prog:
        ident = prog_id(prog.fd)
        with TcHook(prog, ifindex, "ingress") as hook:
            links = json.loads(subprocess.run(["bpftool", "-j", "link"], capture_output=True,
                                              text=True, check=True).stdout)
            if hook.mode == "tcx":
                assert any(link.get("prog_id") == ident for link in links), links
        links = json.loads(subprocess.run(["bpftool", "-j", "link"], capture_output=True,
                                          text=True, check=True).stdout)
        assert not any(link.get("prog_id") == ident for link in links), links
