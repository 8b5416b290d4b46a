"""Kernel objects as Python objects that each own one resource and close deterministically.

Modelled on cilium/ebpf: :class:`BpfObject` (a collection: programs and maps
from one ELF file), :class:`Program`, :class:`Map` and :class:`Link`. Links
are closed before the object that made them; everything closes on ``with``
exit, which the CLI reaches on Ctrl-C and SIGTERM too.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np

from podsight.ebpf import _libbpf as L
from podsight.ebpf.errors import (
    REBUILD_HINT,
    BadObject,
    BpfError,
    Closed,
    LibbpfError,
    NotSupported,
    PermissionDenied,
    describe_errno,
)
from podsight.ebpf.system import possible_cpus

BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

# enum bpf_map_type values podsight cares about
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_RINGBUF = 27
PERCPU_TYPES = (BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, 10)


class Link:
    """An attachment of a program to a hook; detached on close."""

    def __init__(self, ptr: int, description: str) -> None:
        self._ptr: int | None = ptr
        self.description = description

    @property
    def closed(self) -> bool:
        return self._ptr is None

    @property
    def fd(self) -> int:
        if self._ptr is None:
            raise Closed(f"link {self.description} is closed")
        return int(L.lib().bpf_link__fd(self._ptr))

    def close(self) -> None:
        if self._ptr is not None:
            L.lib().bpf_link__destroy(self._ptr)
            self._ptr = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class ProgramInfo:
    """What the kernel says about one loaded program (struct bpf_prog_info).

    ``recursion_misses`` counts the runs the kernel *skipped* because the
    program was already running on that CPU (a tracing program whose hook
    fired again inside it: silent loss unless someone reads this).
    ``run_cnt`` and ``run_time_ns`` count only while run statistics are on
    (a BPF_ENABLE_STATS fd is open, or sysctl ``kernel.bpf_stats_enabled=1``);
    they read 0 otherwise. A field is ``None`` when the running kernel is too old
    to report it. ``name`` is the full C name (the kernel keeps 15 bytes).
    """

    id: int
    name: str
    run_cnt: int | None
    run_time_ns: int | None
    recursion_misses: int | None
    verified_insns: int | None


@dataclass(frozen=True, slots=True)
class RunStats:
    """Sums over the loaded programs of one object, and each program's info."""

    recursion_misses: int
    run_cnt: int
    run_time_ns: int
    programs: tuple[ProgramInfo, ...]


def _info_field(info: L.BpfProgInfo, filled: int, name: str) -> int | None:
    """A field of ``info``, or None when the kernel filled fewer bytes than it needs."""
    field = getattr(L.BpfProgInfo, name)
    if filled < field.offset + field.size:
        return None
    return int(getattr(info, name))


class Program:
    """One program of a loaded object; usable while its object is open."""

    def __init__(self, owner: BpfObject, ptr: int) -> None:
        self._owner = owner
        self._ptr = ptr
        self.name = (L.lib().bpf_program__name(ptr) or b"").decode()
        self.section = (L.lib().bpf_program__section_name(ptr) or b"").decode()

    def _live(self) -> int:
        """This program's pointer; Closed once its object is closed (libbpf freed it)."""
        if self._owner.closed:
            raise Closed(f"program {self.name} of {self._owner.name} is closed")
        return self._ptr

    @property
    def fd(self) -> int:
        fd = int(L.lib().bpf_program__fd(self._live()))
        if fd < 0:
            raise BpfError(
                f"program {self.name} of {self._owner.name} is not loaded "
                "(load() not called yet, or autoload was turned off)"
            )
        return fd

    @property
    def loaded(self) -> bool:
        return int(L.lib().bpf_program__fd(self._live())) >= 0

    def set_autoload(self, autoload: bool) -> None:
        """Skip loading this program (call before load), e.g. an optional feature."""
        rc = L.lib().bpf_program__set_autoload(self._live(), autoload)
        L.check("bpf_program__set_autoload", rc,
                f"set autoload of {self.name} in {self._owner.name} (after load?)")

    def attach(self) -> Link:
        """Attach where the section name says (tp_btf/, raw_tp/, tracepoint/)."""
        self.fd  # noqa: B018 -- a program that is not loaded: say so, not "EINVAL"
        L.log.take()
        ptr = L.lib().bpf_program__attach(self._live())
        if not ptr:
            err = L.errno()
            op = f"attach {self.name} of {self._owner.name} to {self.section}"
            if err in (errno_mod.EINVAL, errno_mod.ENOENT, *L.NOT_SUPPORTED_ERRNOS):
                # The hook is missing from this kernel (a tracepoint, an attach type).
                raise NotSupported(
                    f"cannot {op}: {os.strerror(err)}: this kernel lacks that hook"
                    f"{L.log.hint()}", errno=err)
            raise L.error("bpf_program__attach", err, op, L.log.hint(prefix=""))
        link = Link(ptr, self.section)
        self._owner._links.append(link)
        return link

    def attach_iter(self, map: Map | None = None) -> Link:
        """Attach an iterator program (``iter/...``); ``map`` for map iterators
        (``iter/bpf_sk_storage_map``, ``iter/bpf_map_elem``). Read it with
        :func:`podsight.ebpf.iters.read_iter`."""
        self.fd  # noqa: B018 -- a program that is not loaded: say so, not "EINVAL"
        L.log.take()
        opts = None
        info = ctypes.c_uint32(map.fd if map is not None else 0)
        if map is not None:
            opts = L.BpfIterAttachOpts(sz=ctypes.sizeof(L.BpfIterAttachOpts),
                                       link_info=ctypes.addressof(info),
                                       link_info_len=ctypes.sizeof(info))
        ptr = L.lib().bpf_program__attach_iter(self._live(),
                                               ctypes.byref(opts) if opts is not None else None)
        if not ptr:
            err = L.errno()
            op = f"attach {self.name} of {self._owner.name} as {self.section}"
            if err in (errno_mod.EINVAL, errno_mod.ENOENT, *L.NOT_SUPPORTED_ERRNOS):
                raise NotSupported(f"cannot {op}: {os.strerror(err)}: this kernel lacks that "
                                   f"iterator{L.log.hint()}", errno=err)
            raise L.error("bpf_program__attach_iter", err, op, L.log.hint(prefix=""))
        link = Link(ptr, self.section)
        self._owner._links.append(link)
        return link

    def info(self) -> ProgramInfo:
        """Read struct bpf_prog_info from the kernel (BPF_OBJ_GET_INFO_BY_FD).

        No privilege is needed beyond holding the fd. ``info_len`` goes in as
        the size of our prefix of the struct and comes back as what this
        kernel filled: fields past it are reported as None.
        """
        info = L.BpfProgInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        rc = L.lib().bpf_obj_get_info_by_fd(self.fd, ctypes.byref(info), ctypes.byref(size))
        L.check("bpf_obj_get_info_by_fd", rc,
                f"read the info of program {self.name} of {self._owner.name}")
        filled = int(size.value)
        return ProgramInfo(
            id=int(info.id),
            name=self.name,
            run_cnt=_info_field(info, filled, "run_cnt"),
            run_time_ns=_info_field(info, filled, "run_time_ns"),
            recursion_misses=_info_field(info, filled, "recursion_misses"),
            verified_insns=_info_field(info, filled, "verified_insns"),
        )


class Map:
    """One map of an object: resize before load; read and write after; usable while open."""

    def __init__(self, owner: BpfObject, ptr: int) -> None:
        self._owner = owner
        self._ptr = ptr
        self.name = (L.lib().bpf_map__name(ptr) or b"").decode()

    def _live(self) -> int:
        """This map's pointer; Closed once its object is closed (libbpf freed it)."""
        if self._owner.closed:
            raise Closed(f"map {self.name} of {self._owner.name} is closed")
        return self._ptr

    def _what(self) -> str:
        return f"map {self.name} of {self._owner.name}"

    @property
    def fd(self) -> int:
        fd = int(L.lib().bpf_map__fd(self._live()))
        if fd < 0:
            raise BpfError(f"{self._what()} is not created yet: load() the object first")
        return fd

    @property
    def type(self) -> int:
        return int(L.lib().bpf_map__type(self._live()))

    @property
    def max_entries(self) -> int:
        return int(L.lib().bpf_map__max_entries(self._live()))

    @property
    def key_size(self) -> int:
        return int(L.lib().bpf_map__key_size(self._live()))

    @property
    def value_size(self) -> int:
        return int(L.lib().bpf_map__value_size(self._live()))

    def resize(self, max_entries: int) -> None:
        """Set max_entries; only between open and load."""
        rc = L.lib().bpf_map__set_max_entries(self._live(), max_entries)
        L.check("bpf_map__set_max_entries", rc,
                f"resize {self._what()} to {max_entries} entries (after load?)")

    def set_initial_value(self, data: bytes) -> None:
        """Replace the whole initial value of a global-data map (.rodata, .data) before load.

        A size that differs from the object's section means the object and
        the code packing ``data`` disagree: a stale object, :class:`BadObject`.
        """
        if len(data) != self.value_size:
            raise BadObject(
                f"{self._what()} holds {self.value_size} bytes but podsight packs "
                f"{len(data)}: the object does not match this podsight; {REBUILD_HINT}"
            )
        buf = ctypes.create_string_buffer(data, len(data))
        rc = L.lib().bpf_map__set_initial_value(self._live(), buf, len(data))
        L.check("bpf_map__set_initial_value", rc, f"set the initial value of {self._what()}")

    # -- element access ---------------------------------------------------

    def _value_bytes(self) -> int:
        if self.type in PERCPU_TYPES:
            return ((self.value_size + 7) // 8 * 8) * possible_cpus()
        return self.value_size

    def lookup(self, key: bytes) -> bytes | None:
        self._check_len("key", key, self.key_size)
        value = ctypes.create_string_buffer(self._value_bytes())
        rc = L.lib().bpf_map_lookup_elem(self.fd, key, value)
        if rc == -errno_mod.ENOENT:
            return None
        L.check("bpf_map_lookup_elem", rc, f"look up an element of {self._what()}")
        return value.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        self._check_len("key", key, self.key_size)
        self._check_len("value", value, self._value_bytes())
        rc = L.lib().bpf_map_update_elem(self.fd, key, value, flags)
        L.check("bpf_map_update_elem", rc, f"update an element of {self._what()}")

    def delete(self, key: bytes) -> bool:
        self._check_len("key", key, self.key_size)
        rc = L.lib().bpf_map_delete_elem(self.fd, key)
        if rc == -errno_mod.ENOENT:
            return False
        L.check("bpf_map_delete_elem", rc, f"delete an element of {self._what()}")
        return True

    def _check_len(self, what: str, data: bytes, size: int) -> None:
        """The kernel reads exactly ``size`` bytes from our buffer: a shorter one is read past."""
        if len(data) != size:
            raise BadObject(
                f"{self._what()} has {size}-byte {what}s but podsight passed {len(data)} "
                f"bytes: the object does not match this podsight; {REBUILD_HINT}"
            )

    def percpu_u64_sums(self) -> np.ndarray:
        """Sum over CPUs of every slot of a per-CPU array of u64 counters."""
        ncpu = possible_cpus()
        out = np.zeros(self.max_entries, dtype=np.uint64)
        for slot in range(self.max_entries):
            raw = self.lookup(slot.to_bytes(4, "little"))
            if raw is not None:
                out[slot] = np.frombuffer(raw, dtype=np.uint64, count=ncpu).sum()
        return out

    def lookup_batch(
        self, key_dtype: np.dtype, value_dtype: np.dtype, *, delete: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Read every entry with BPF_MAP_LOOKUP_BATCH into two numpy arrays.

        One syscall per batch instead of two per entry: 65k entries take tens
        of milliseconds, against half a second with get_next_key + lookup.
        With ``delete`` the entries are removed as they are read.
        """
        if key_dtype.itemsize != self.key_size:
            raise BadObject(
                f"{self._what()} has {self.key_size}-byte keys, the key dtype "
                f"{key_dtype.itemsize}: the object does not match this podsight; {REBUILD_HINT}"
            )
        if value_dtype.itemsize != self._value_bytes():
            raise BadObject(
                f"{self._what()} has {self._value_bytes()}-byte values, the value dtype "
                f"{value_dtype.itemsize}: the object does not match this podsight; {REBUILD_HINT}"
            )
        cap = self.max_entries
        keys = np.zeros(cap, dtype=key_dtype)
        values = np.zeros(cap, dtype=value_dtype)
        token = max(self.key_size, 8)
        batch_in = ctypes.create_string_buffer(token)
        batch_out = ctypes.create_string_buffer(token)
        opts = L.BpfMapBatchOpts(sz=ctypes.sizeof(L.BpfMapBatchOpts))
        fn = L.lib().bpf_map_lookup_and_delete_batch if delete else L.lib().bpf_map_lookup_batch
        got = 0
        first = True
        while got < cap:
            count = ctypes.c_uint32(cap - got)
            rc = fn(
                self.fd,
                None if first else batch_in,
                batch_out,
                keys.ctypes.data + got * keys.itemsize,
                values.ctypes.data + got * values.itemsize,
                ctypes.byref(count),
                ctypes.byref(opts),
            )
            got += count.value
            if rc == -errno_mod.ENOENT:
                break
            L.check("bpf_map_lookup_batch", rc, f"read {self._what()} in batches")
            ctypes.memmove(batch_in, batch_out, token)
            first = False
        return keys[:got], values[:got]


#: libbpf/verifier log lines that mean "this kernel lacks it", not "the object is wrong".
_UNSUPPORTED_LOG = ("unknown func", "cannot use helper", "helper call is not allowed",
                    "invalid func", "failed to find kernel BTF type", "failed to find BTF for")
#: ... and those that mean "this file is not a usable object".
_BAD_OBJECT_LOG = ("missing or corrupted", "invalid elf", "not a valid ebpf",
                   "failed to get elf", "corrupted")


class BpfObject:
    """An opened (then loaded) BPF ELF object: its maps, programs and links.

    Use as a context manager; :meth:`close` destroys links, then the object.
    A file that is missing, truncated or not a BPF object raises
    :class:`BadObject` here, at open, with what to do about it.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self._links: list[Link] = []
        self._loaded = False
        self._ptr: int | None = None
        if not self.path.is_file():
            raise BadObject(f"eBPF object {self.path} is missing: {REBUILD_HINT}")
        L.log.take()
        ptr = L.lib().bpf_object__open_file(os.fsencode(self.path), None)
        if not ptr:
            err = L.errno()
            if err in (errno_mod.EACCES, errno_mod.EPERM):
                raise PermissionDenied(f"cannot read eBPF object {self.path}: {os.strerror(err)}",
                                       errno=err)
            raise BadObject(
                f"cannot open eBPF object {self.path}: {describe_errno(err)}"
                f"{L.log.hint()}: the file is truncated, corrupt or not a BPF object; "
                f"{REBUILD_HINT}", errno=err)
        self._ptr = ptr

    @classmethod
    def from_package(cls, package: str, filename: str, stack: ExitStack | None = None) -> BpfObject:
        """Open an object shipped as package data of ``package``."""
        ref = resources.files(package) / filename
        if stack is not None:
            return cls(stack.enter_context(resources.as_file(ref)))
        return cls(Path(str(ref)))

    @property
    def closed(self) -> bool:
        return self._ptr is None

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise Closed(f"eBPF object {self.name} is closed")
        return self._ptr

    def map(self, name: str) -> Map:
        ptr = L.lib().bpf_object__find_map_by_name(self.ptr, name.encode())
        if not ptr:
            raise BadObject(f"{self.name} has no map {name!r}: the object does not match "
                            f"this podsight; {REBUILD_HINT}")
        return Map(self, ptr)

    def program(self, name: str) -> Program:
        ptr = L.lib().bpf_object__find_program_by_name(self.ptr, name.encode())
        if not ptr:
            raise BadObject(f"{self.name} has no program {name!r}: the object does not match "
                            f"this podsight; {REBUILD_HINT}")
        return Program(self, ptr)

    def programs(self) -> Iterator[Program]:
        ptr = L.lib().bpf_object__next_program(self.ptr, None)
        while ptr:
            yield Program(self, ptr)
            ptr = L.lib().bpf_object__next_program(self.ptr, ptr)

    def load(self) -> None:
        """Verify and load every program; map sizes and .rodata are final after this."""
        L.log.take()
        rc = L.lib().bpf_object__load(self.ptr)
        if rc < 0:
            err = -rc
            lines = [ln.removeprefix("libbpf: ") for ln in L.log.take() if ln.strip()]
            hint = f"; libbpf: {lines[-1]}" if lines else ""
            text = "\n".join(lines).lower()
            what = f"cannot load {self.name}: {describe_errno(err)}{hint}"
            if err == errno_mod.EPERM or (err == errno_mod.EACCES and not L.privileged()):
                raise PermissionDenied(f"the kernel refused to load {self.name} "
                                       f"({os.strerror(err)}): run podsight as root", errno=err)
            if any(s in text for s in _UNSUPPORTED_LOG) or err in L.NOT_SUPPORTED_ERRNOS:
                raise NotSupported(f"{what}: this kernel lacks a helper or hook it needs",
                                   errno=err)
            if any(s in text for s in _BAD_OBJECT_LOG):
                raise BadObject(f"{what}: {REBUILD_HINT}", errno=err)
            raise LibbpfError("bpf_object__load", err, lines[-1] if lines else "",
                                op=f"load {self.name}")
        self._loaded = True

    def attach_all(self) -> list[Link]:
        """Attach every loaded program where its section name says."""
        return [p.attach() for p in self.programs() if p.loaded]

    def run_stats(self) -> RunStats:
        """Skipped runs (recursion_misses), runs and run time summed over the loaded programs.

        A tracing program is skipped, silently, when its hook fires again on a
        CPU where it is already running; the kernel counts each skip in the
        program's info and nowhere else, so outputs must read it here.
        """
        infos = tuple(p.info() for p in self.programs() if p.loaded)
        return RunStats(
            recursion_misses=sum(i.recursion_misses or 0 for i in infos),
            run_cnt=sum(i.run_cnt or 0 for i in infos),
            run_time_ns=sum(i.run_time_ns or 0 for i in infos),
            programs=infos,
        )

    @property
    def links(self) -> list[Link]:
        return [link for link in self._links if not link.closed]

    def close(self) -> None:
        for link in self._links:
            link.close()
        self._links.clear()
        if self._ptr is not None:
            L.lib().bpf_object__close(self._ptr)
            self._ptr = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
