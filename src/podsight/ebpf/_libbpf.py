"""The ctypes declarations of the libbpf.so.1 functions podsight calls.

Every function returning a pointer is declared with ``restype = c_void_p``:
the ctypes default (int) truncates 64-bit pointers and the process crashes
later, far from the cause. libbpf 1.x returns NULL or a negative errno and
sets ``errno``; :func:`check` and :func:`check_ptr` turn both into an
error of :mod:`podsight.ebpf.errors` whose message names the operation and
the object (the libbpf function is kept in ``LibbpfError.func``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import os
from functools import cache
from typing import Any

from podsight.ebpf.errors import BpfError, LibbpfError, NotSupported, PermissionDenied
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


#: The kernel's ENOTSUPP (include/linux/errno.h, not uapi): "operation is not supported".
ENOTSUPP = 524
NOT_SUPPORTED_ERRNOS = (errno_mod.EOPNOTSUPP, ENOTSUPP)


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


class BpfProgInfo(ctypes.Structure):
    """The prefix of struct bpf_prog_info (uapi linux/bpf.h) up to ``verified_insns``.

    Offsets (bytes) as linux/bpf.h lays them out; ctypes computes the same
    ones from these fields, and tests/test_layouts.py checks them against the
    running kernel's own BTF of ``struct bpf_prog_info``. The pointer fields
    (``__aligned_u64``) stay zero so the kernel copies no arrays back.
    ``bpf_obj_get_info_by_fd`` is given this struct's size: an older kernel
    fills less (and says how much in ``info_len``), a newer one fills only
    this much; see :meth:`podsight.ebpf.Program.info`.
    """

    _fields_ = [
        ("type", c_uint32),                      # 0
        ("id", c_uint32),                        # 4
        ("tag", ctypes.c_uint8 * 8),             # 8    BPF_TAG_SIZE
        ("jited_prog_len", c_uint32),            # 16
        ("xlated_prog_len", c_uint32),           # 20
        ("jited_prog_insns", c_uint64),          # 24   __aligned_u64 (a user pointer)
        ("xlated_prog_insns", c_uint64),         # 32
        ("load_time", c_uint64),                 # 40   ns since boot
        ("created_by_uid", c_uint32),            # 48
        ("nr_map_ids", c_uint32),                # 52
        ("map_ids", c_uint64),                   # 56
        ("name", ctypes.c_char * 16),            # 64   BPF_OBJ_NAME_LEN
        ("ifindex", c_uint32),                   # 80
        ("gpl_compatible", c_uint32),            # 84   gpl_compatible:1 + 31 bits of pad
        ("netns_dev", c_uint64),                 # 88
        ("netns_ino", c_uint64),                 # 96
        ("nr_jited_ksyms", c_uint32),            # 104
        ("nr_jited_func_lens", c_uint32),        # 108
        ("jited_ksyms", c_uint64),               # 112
        ("jited_func_lens", c_uint64),           # 120
        ("btf_id", c_uint32),                    # 128
        ("func_info_rec_size", c_uint32),        # 132
        ("func_info", c_uint64),                 # 136
        ("nr_func_info", c_uint32),              # 144
        ("nr_line_info", c_uint32),              # 148
        ("line_info", c_uint64),                 # 152
        ("jited_line_info", c_uint64),           # 160
        ("nr_jited_line_info", c_uint32),        # 168
        ("line_info_rec_size", c_uint32),        # 172
        ("jited_line_info_rec_size", c_uint32),  # 176
        ("nr_prog_tags", c_uint32),              # 180
        ("prog_tags", c_uint64),                 # 184
        ("run_time_ns", c_uint64),               # 192  Linux 5.1; counts with bpf_stats_enabled
        ("run_cnt", c_uint64),                   # 200  Linux 5.1; likewise
        ("recursion_misses", c_uint64),          # 208  Linux 5.12; runs skipped: nested on a CPU
        ("verified_insns", c_uint32),            # 216  Linux 5.16
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


class BpfIterAttachOpts(ctypes.Structure):
    """struct bpf_iter_attach_opts (libbpf.h): sz, link_info, link_info_len."""

    _fields_ = [
        ("sz", c_size_t),
        ("link_info", c_void_p),
        ("link_info_len", c_uint32),
        ("_pad", c_uint32),
    ]


class BpfMapBatchOpts(ctypes.Structure):
    """struct bpf_map_batch_opts (bpf.h): sz, elem_flags, flags."""

    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "libbpf_set_print": (c_void_p, [LIBBPF_PRINT]),
    "libbpf_strerror": (c_int, [c_int, c_char_p, c_size_t]),
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
    "bpf_link__fd": (c_int, [c_void_p]),
    "bpf_program__attach_iter": (c_void_p, [c_void_p, ctypes.POINTER(BpfIterAttachOpts)]),
    "bpf_iter_create": (c_int, [c_int]),
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
    "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, ctypes.POINTER(c_uint32)]),
    "btf__load_vmlinux_btf": (c_void_p, []),
    "btf__parse": (c_void_p, [c_char_p, c_void_p]),
    "btf__type_cnt": (c_uint32, [c_void_p]),
    "btf__resolve_size": (ctypes.c_int64, [c_void_p, c_uint32]),
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

    def hint(self, prefix: str = "; libbpf: ") -> str:
        """libbpf's last line since the last take() (the closest it says to why), or ""."""
        lines = [ln.removeprefix("libbpf: ") for ln in self.take() if ln.strip()]
        return f"{prefix}{lines[-1]}" if lines else ""


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
    # libbpf prints a failed load's whole verifier log in one call, and a
    # va_list cannot be formatted twice: 1 MiB holds the logs of our
    # programs; anything longer is cut at the end and says so.
    buf = ctypes.create_string_buffer(1 << 20)

    def on_print(level: int, fmt: bytes | None, args: int | None) -> int:
        if fmt is None:
            return 0
        need = vsnprintf(buf, len(buf), fmt, args)
        line = buf.value.decode(errors="replace").rstrip()
        if need >= len(buf):
            line += f" [... {need - len(buf) + 1} more bytes of libbpf output cut]"
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


def libbpf_strerror(err: int) -> str:
    """libbpf's text for its own error codes (4000+: "Invalid ELF format", ...)."""
    buf = ctypes.create_string_buffer(128)
    if lib().libbpf_strerror(err, buf, len(buf)) < 0:
        return f"libbpf error {err}"
    return buf.value.decode(errors="replace")


def privileged() -> bool:
    """May this process load BPF programs (CAP_SYS_ADMIN or CAP_BPF)?"""
    from podsight.ebpf.system import CAP_BPF, CAP_SYS_ADMIN, effective_caps

    return bool(effective_caps() & ((1 << CAP_SYS_ADMIN) | (1 << CAP_BPF)))


def error(func: str, err: int, op: str = "", detail: str = "") -> BpfError:
    """The error class for ``err`` from libbpf's ``func``, doing ``op`` ("attach x to y").

    EPERM (and EACCES when the process lacks CAP_BPF; with it, EACCES is
    the verifier's "invalid access") is :class:`PermissionDenied`;
    EOPNOTSUPP and ENOTSUPP are :class:`NotSupported`; anything else a
    :class:`LibbpfError`. Callers that know more (a vanished interface)
    check before calling this.
    """
    text = LibbpfError(func, err, detail, op=op).message
    if err == errno_mod.EPERM or (err == errno_mod.EACCES and not privileged()):
        return PermissionDenied(f"{text}: run podsight as root", errno=err)
    if err in NOT_SUPPORTED_ERRNOS:
        return NotSupported(f"{text}: this kernel does not support it", errno=err)
    return LibbpfError(func, err, detail, op=op)


def check(func: str, ret: int, op: str = "") -> int:
    """Raise the error for a failed libbpf int-returning call (libbpf >= 1.0 returns -errno)."""
    if ret < 0:
        raise error(func, -ret, op)
    return ret


def check_ptr(func: str, ptr: int | None, op: str = "") -> int:
    """Raise the error for a libbpf pointer-returning call that returned NULL (errno is set)."""
    if not ptr:
        raise error(func, errno(), op)
    return ptr
