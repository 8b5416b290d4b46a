"""The ctypes declarations of the libbpf.so.1 functions podsight calls.

Every function returning a pointer is declared with ``restype = c_void_p``:
the ctypes default (int) truncates 64-bit pointers and the process crashes
later, far from the cause. libbpf 1.x returns NULL or a negative errno and
sets ``errno``; :func:`check` and :func:`check_ptr` turn both into
:class:`LibbpfError` with the function's name.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from functools import cache
from typing import Any

from podsight.errors import EnvironmentProblem

c_int = ctypes.c_int
c_uint = ctypes.c_uint
c_void_p = ctypes.c_void_p
c_char_p = ctypes.c_char_p
c_size_t = ctypes.c_size_t
c_uint32 = ctypes.c_uint32
c_uint64 = ctypes.c_uint64

LIBBPF_PRINT = ctypes.CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)

# enum bpf_tc_attach_point
BPF_TC_INGRESS = 1
BPF_TC_EGRESS = 2


class LibbpfError(OSError):
    """A libbpf call failed; ``errno`` and the libbpf function name are kept."""

    def __init__(self, func: str, err: int, detail: str = "") -> None:
        msg = f"{func}: {os.strerror(err)}"
        if detail:
            msg += f" ({detail})"
        super().__init__(err, msg)
        self.func = func


class BpfTcHook(ctypes.Structure):
    """struct bpf_tc_hook (libbpf.h): sz, ifindex, attach_point, parent."""

    _fields_ = [
        ("sz", c_size_t),
        ("ifindex", c_int),
        ("attach_point", c_int),
        ("parent", c_uint32),
        ("_pad", c_uint32),
    ]


class BpfTcOpts(ctypes.Structure):
    """struct bpf_tc_opts (libbpf.h): sz, prog_fd, flags, prog_id, handle, priority."""

    _fields_ = [
        ("sz", c_size_t),
        ("prog_fd", c_int),
        ("flags", c_uint32),
        ("prog_id", c_uint32),
        ("handle", c_uint32),
        ("priority", c_uint32),
        ("_pad", c_uint32),
    ]


class BpfTestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (bpf.h, libbpf 1.1): BPF_PROG_TEST_RUN's in and out."""

    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class BpfMapBatchOpts(ctypes.Structure):
    """struct bpf_map_batch_opts (bpf.h): sz, elem_flags, flags."""

    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "libbpf_set_print": (c_void_p, [LIBBPF_PRINT]),
    "libbpf_num_possible_cpus": (c_int, []),
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    "bpf_program__name": (c_char_p, [c_void_p]),
    "bpf_program__section_name": (c_char_p, [c_void_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_program__set_autoload": (c_int, [c_void_p, ctypes.c_bool]),
    "bpf_program__attach": (c_void_p, [c_void_p]),
    "bpf_link__destroy": (c_int, [c_void_p]),
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__max_entries": (c_uint32, [c_void_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
    "bpf_map__key_size": (c_uint32, [c_void_p]),
    "bpf_map__value_size": (c_uint32, [c_void_p]),
    "bpf_map__type": (c_int, [c_void_p]),
    "bpf_map__initial_value": (c_void_p, [c_void_p, ctypes.POINTER(c_size_t)]),
    "bpf_map__set_initial_value": (c_int, [c_void_p, c_void_p, c_size_t]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_uint64]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_lookup_batch": (
        c_int,
        [c_int, c_void_p, c_void_p, c_void_p, c_void_p, ctypes.POINTER(c_uint32), c_void_p],
    ),
    "bpf_map_lookup_and_delete_batch": (
        c_int,
        [c_int, c_void_p, c_void_p, c_void_p, c_void_p, ctypes.POINTER(c_uint32), c_void_p],
    ),
    "btf__load_vmlinux_btf": (c_void_p, []),
    "btf__free": (None, [c_void_p]),
    "btf__find_by_name_kind": (c_int, [c_void_p, c_char_p, c_uint32]),
    "btf__type_by_id": (c_void_p, [c_void_p, c_uint32]),
    "btf__name_by_offset": (c_char_p, [c_void_p, c_uint32]),
    "bpf_link_create": (c_int, [c_int, c_int, c_int, c_void_p]),
    "bpf_tc_hook_create": (c_int, [ctypes.POINTER(BpfTcHook)]),
    "bpf_tc_hook_destroy": (c_int, [ctypes.POINTER(BpfTcHook)]),
    "bpf_tc_attach": (c_int, [ctypes.POINTER(BpfTcHook), ctypes.POINTER(BpfTcOpts)]),
    "bpf_tc_detach": (c_int, [ctypes.POINTER(BpfTcHook), ctypes.POINTER(BpfTcOpts)]),
    "bpf_prog_load": (c_int, [c_int, c_char_p, c_char_p, c_void_p, c_size_t, c_void_p]),
    "bpf_prog_test_run_opts": (c_int, [c_int, ctypes.POINTER(BpfTestRunOpts)]),
    "bpf_enable_stats": (c_int, [c_int]),
}


class _Log:
    """libbpf's log lines, kept so that a failed load can say why."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.verbose = bool(os.environ.get("PODSIGHT_LIBBPF_DEBUG"))

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


log = _Log()


@cache
def lib() -> ctypes.CDLL:
    """libbpf.so.1 with every function podsight uses declared; loaded once."""
    try:
        so = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError:
        raise EnvironmentProblem(
            "libbpf.so.1 not found: install it (Debian: apt-get install libbpf1)"
        ) from None
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(so, name)
        fn.restype = restype
        fn.argtypes = argtypes
    _install_print(so)
    return so


def _install_print(so: ctypes.CDLL) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    vsnprintf = libc.vsnprintf
    vsnprintf.restype = c_int
    vsnprintf.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
    buf = ctypes.create_string_buffer(4096)

    def on_print(level: int, fmt: bytes | None, args: int | None) -> int:
        if fmt is None:
            return 0
        vsnprintf(buf, len(buf), fmt, args)
        line = buf.value.decode(errors="replace").rstrip()
        log.lines.append(line)
        del log.lines[:-200]
        if log.verbose:
            print(f"libbpf: {line}", flush=True)
        return 0

    # Keep the callback alive for the life of the process: libbpf holds it.
    callback = LIBBPF_PRINT(on_print)
    _install_print.callback = callback  # type: ignore[attr-defined]
    so.libbpf_set_print(callback)


def errno() -> int:
    return ctypes.get_errno() or 1


def check(func: str, ret: int) -> int:
    """Raise LibbpfError when a libbpf int-returning call failed."""
    if ret < 0:
        # libbpf >= 1.0 returns -errno from every call (and sets errno too).
        raise LibbpfError(func, -ret)
    return ret


def check_ptr(func: str, ptr: int | None) -> int:
    """Raise LibbpfError when a libbpf pointer-returning call returned NULL."""
    if not ptr:
        raise LibbpfError(func, errno())
    return ptr
