"""Preflight: what the kernel and the process need before any program loads.

Each check fails with one sentence that says what to do, instead of the
EPERM or ENOENT that libbpf would report three calls later.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

from podsight.errors import EnvironmentProblem

BTF_PATH = Path("/sys/kernel/btf/vmlinux")
BPFFS = Path("/sys/fs/bpf")
TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))

# linux/magic.h
BPF_FS_MAGIC = 0xCAFE4A11
TRACEFS_MAGIC = 0x74726163

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


def effective_caps() -> int:
    """The effective capability set of this process, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def require_privileges(*, net_admin: bool = False) -> None:
    """Fail clearly unless this process may load tracing programs (and tc ones)."""
    caps = effective_caps()
    has_sys_admin = bool(caps & (1 << CAP_SYS_ADMIN))
    has_bpf = has_sys_admin or (caps & (1 << CAP_BPF) and caps & (1 << CAP_PERFMON))
    if not has_bpf:
        raise EnvironmentProblem(
            "podsight needs root (or CAP_BPF and CAP_PERFMON) to load eBPF programs: "
            "run it with sudo"
        )
    if net_admin and not caps & (1 << CAP_NET_ADMIN):
        raise EnvironmentProblem("podsight needs CAP_NET_ADMIN to attach tc programs")


def require_btf() -> None:
    """CO-RE programs are relocated against the running kernel's BTF."""
    if not BTF_PATH.exists():
        raise EnvironmentProblem(
            f"{BTF_PATH} is missing: this kernel was built without BTF "
            "(CONFIG_DEBUG_INFO_BTF=y is needed)"
        )


def _fs_magic(path: Path) -> int | None:
    class Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 120)]

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    buf = Statfs()
    if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return None
    return int(buf.f_type) & 0xFFFFFFFF


def _mount(fstype: str, target: Path) -> bool:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    target.mkdir(parents=True, exist_ok=True)
    rc: int = libc.mount(fstype.encode(), os.fsencode(target), fstype.encode(), 0, None)
    return rc == 0


def ensure_bpffs() -> Path:
    """Mount bpffs at /sys/fs/bpf when it is not there and we may."""
    if _fs_magic(BPFFS) == BPF_FS_MAGIC:
        return BPFFS
    if os.geteuid() == 0 and _mount("bpf", BPFFS):
        return BPFFS
    raise EnvironmentProblem(
        f"bpffs is not mounted at {BPFFS} and could not be mounted: "
        f"run 'mount -t bpf bpf {BPFFS}' as root"
    )


def ensure_tracefs() -> Path:
    """Mount tracefs when missing; `ip netns exec` hides it by remounting /sys."""
    for path in TRACEFS_CANDIDATES:
        if _fs_magic(path) == TRACEFS_MAGIC:
            return path
    primary = TRACEFS_CANDIDATES[0]
    if os.geteuid() == 0 and primary.is_dir() and _mount("tracefs", primary):
        return primary
    raise EnvironmentProblem(
        f"tracefs is not mounted at {primary} and could not be mounted: "
        f"run 'mount -t tracefs tracefs {primary}' as root"
    )


def preflight(*, net_admin: bool = False, tracefs: bool = False) -> None:
    """All checks a gadget needs before it opens its object, in the order a user fixes them."""
    require_privileges(net_admin=net_admin)
    require_btf()
    ensure_bpffs()
    if tracefs:
        ensure_tracefs()


def possible_cpus() -> int:
    """How many per-CPU slots a per-CPU map value has (possible, not online, CPUs)."""
    from podsight.ebpf._libbpf import lib

    n = int(lib().libbpf_num_possible_cpus())
    if n <= 0:
        raise EnvironmentProblem("cannot read the number of possible CPUs")
    return n
