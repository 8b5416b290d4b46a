"""A thin ctypes binding over libbpf.so.1; no gadget knowledge lives here.

Objects own one kernel resource each and close deterministically:
:class:`BpfObject` (programs + maps of one ELF file), :class:`Program`,
:class:`Map`, :class:`Link`, :class:`RingBuffer` and :class:`TcHook`.
"""

from podsight.ebpf._libbpf import LibbpfError
from podsight.ebpf.objects import BPF_ANY, BPF_EXIST, BPF_NOEXIST, BpfObject, Link, Map, Program
from podsight.ebpf.ringbuf import RingBuffer
from podsight.ebpf.system import preflight
from podsight.ebpf.tc import TcHook

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_NOEXIST",
    "BpfObject",
    "LibbpfError",
    "Link",
    "Map",
    "Program",
    "RingBuffer",
    "TcHook",
    "preflight",
]
