"""Programs without an ELF object, test runs, and the kernel's run-time statistics.

- :class:`RawProgram`: a program loaded from raw instructions with
  ``bpf_prog_load``. A benchmark's floor (an empty tc program, two
  instructions) needs no compiler and no object file.
- :func:`prog_test_run`: ``BPF_PROG_TEST_RUN``, the kernel running a program on a
  packet we give it, ``repeat`` times, and timing it: what one more helper
  call or map lookup costs, measured without any traffic.
- :class:`RunTimeStats`: ``BPF_ENABLE_STATS``, the kernel's per-program
  run count and run time, on for as long as this holds its fd. Unlike the
  ``kernel.bpf_stats_enabled`` sysctl, nothing stays on if the process dies.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass
from typing import Protocol, Self

from podsight.ebpf import _libbpf as L
from podsight.ebpf.errors import Closed, InvalidArgument

#: enum bpf_prog_type: a tc classifier (what tcx and clsact attach).
BPF_PROG_TYPE_SCHED_CLS = 3
#: enum bpf_stats_type
BPF_STATS_RUN_TIME = 0

_INSN = struct.Struct("<BBhi")  # struct bpf_insn: code, dst_reg:4|src_reg:4, off, imm


class HasFd(Protocol):
    """Anything that is a loaded program: :class:`~podsight.ebpf.Program`, :class:`RawProgram`."""

    @property
    def fd(self) -> int: ...


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One eBPF instruction (struct bpf_insn), for hand-written programs."""
    return _INSN.pack(code, (src << 4) | dst, off, imm)


#: ``r0 = -1; exit``: a tc program that returns TC_ACT_UNSPEC (tcx: next) and does nothing.
EMPTY_TC = insn(0xB7, imm=-1) + insn(0x95)


class RawProgram:
    """A program loaded from raw instructions; its fd is closed on :meth:`close`.

    The kernel frees the program when the last reference goes: this fd, and
    any link or tc filter holding it.
    """

    def __init__(self, prog_type: int, insns: bytes, name: str,
                 license: str = "GPL") -> None:
        if not insns or len(insns) % _INSN.size:
            raise InvalidArgument(f"instructions must be a multiple of {_INSN.size} bytes")
        fd = L.lib().bpf_prog_load(prog_type, name.encode()[:15], license.encode(), insns,
                                   len(insns) // _INSN.size, None)
        self._fd = L.check(f"bpf_prog_load({name})", fd)
        self.name = name

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise Closed(f"program {self.name} is closed")
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class RunResult:
    """What one BPF_PROG_TEST_RUN returned."""

    retval: int  # the program's return value (of the last repetition)
    duration_ns: int  # mean time per repetition, as the kernel measured it


def prog_test_run(program: HasFd, data: bytes, repeat: int = 1) -> RunResult:
    """Run ``program`` on the packet ``data`` (a whole frame for tc) ``repeat`` times.

    The kernel builds one skb from ``data`` (on the loopback device of the
    caller's netns) and runs the program on it ``repeat`` times in a loop,
    so map updates made by the first run are seen by the next ones.
    """
    buf = ctypes.create_string_buffer(data, len(data))
    opts = L.BpfTestRunOpts(sz=ctypes.sizeof(L.BpfTestRunOpts), data_in=ctypes.addressof(buf),
                            data_size_in=len(data), repeat=repeat)
    L.check("bpf_prog_test_run_opts",
            L.lib().bpf_prog_test_run_opts(program.fd, ctypes.byref(opts)))
    return RunResult(retval=ctypes.c_int32(opts.retval).value, duration_ns=int(opts.duration))


class RunTimeStats:
    """The kernel's per-program run time statistics, on while this is open.

    ``bpftool prog show`` (``run_time_ns``, ``run_cnt``) reads them. They add
    two clock reads to every run of every program, so keep them on only while
    measuring.
    """

    def __init__(self) -> None:
        self._fd = L.check("bpf_enable_stats", L.lib().bpf_enable_stats(BPF_STATS_RUN_TIME))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
