"""A thin ctypes binding over libbpf.so.1; no gadget knowledge lives here.

Objects own one kernel resource each and close deterministically:
:class:`BpfObject` (programs + maps of one ELF file), :class:`Program`,
:class:`Map`, :class:`Link`, :class:`RingBuffer`, :class:`TcHook`,
:class:`RawProgram` (loaded from raw instructions) and :class:`RunTimeStats`
(the kernel's per-program run time, on while open); :func:`prog_test_run` is
BPF_PROG_TEST_RUN.
Every error they raise is a :class:`BpfError` (see :mod:`podsight.ebpf.errors`)
or a :class:`~podsight.errors.UserError`, printed by the CLI as one line.
"""

from podsight.ebpf.errors import (
    BadObject,
    BpfError,
    Closed,
    InterfaceGone,
    InvalidArgument,
    LibbpfError,
    NotSupported,
    PermissionDenied,
)
from podsight.ebpf.objects import (
    BPF_ANY,
    BPF_EXIST,
    BPF_NOEXIST,
    BpfObject,
    Link,
    Map,
    Program,
    ProgramInfo,
    RunStats,
)
from podsight.ebpf.progs import RawProgram, RunResult, RunTimeStats, prog_test_run
from podsight.ebpf.ringbuf import RingBuffer
from podsight.ebpf.system import preflight
from podsight.ebpf.tc import TcHook

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_NOEXIST",
    "BadObject",
    "BpfError",
    "BpfObject",
    "Closed",
    "InterfaceGone",
    "InvalidArgument",
    "LibbpfError",
    "Link",
    "Map",
    "NotSupported",
    "PermissionDenied",
    "Program",
    "ProgramInfo",
    "RawProgram",
    "RingBuffer",
    "RunResult",
    "RunStats",
    "RunTimeStats",
    "TcHook",
    "preflight",
    "prog_test_run",
]
