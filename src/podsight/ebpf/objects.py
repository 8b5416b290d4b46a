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
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np

from podsight.ebpf import _libbpf as L
from podsight.ebpf.system import possible_cpus
from podsight.errors import EnvironmentProblem

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

    def close(self) -> None:
        if self._ptr is not None:
            L.lib().bpf_link__destroy(self._ptr)
            self._ptr = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Program:
    """One program of a loaded object."""

    def __init__(self, owner: BpfObject, ptr: int) -> None:
        self._owner = owner
        self._ptr = ptr
        self.name = (L.lib().bpf_program__name(ptr) or b"").decode()
        self.section = (L.lib().bpf_program__section_name(ptr) or b"").decode()

    @property
    def fd(self) -> int:
        return L.check("bpf_program__fd", L.lib().bpf_program__fd(self._ptr))

    def set_autoload(self, autoload: bool) -> None:
        """Skip loading this program (call before load), e.g. an optional feature."""
        L.check("bpf_program__set_autoload", L.lib().bpf_program__set_autoload(self._ptr, autoload))

    def attach(self) -> Link:
        """Attach where the section name says (tp_btf/, raw_tp/, tracepoint/)."""
        ptr = L.lib().bpf_program__attach(self._ptr)
        if not ptr:
            err = L.errno()
            raise EnvironmentProblem(
                f"cannot attach {self.section}: {os.strerror(err)}{_libbpf_hint()}"
            )
        link = Link(ptr, self.section)
        self._owner._links.append(link)
        return link


class Map:
    """One map of an object: resize before load; read and write after."""

    def __init__(self, owner: BpfObject, ptr: int) -> None:
        self._owner = owner
        self._ptr = ptr
        self.name = (L.lib().bpf_map__name(ptr) or b"").decode()

    @property
    def fd(self) -> int:
        return L.check("bpf_map__fd", L.lib().bpf_map__fd(self._ptr))

    @property
    def type(self) -> int:
        return int(L.lib().bpf_map__type(self._ptr))

    @property
    def max_entries(self) -> int:
        return int(L.lib().bpf_map__max_entries(self._ptr))

    @property
    def key_size(self) -> int:
        return int(L.lib().bpf_map__key_size(self._ptr))

    @property
    def value_size(self) -> int:
        return int(L.lib().bpf_map__value_size(self._ptr))

    def resize(self, max_entries: int) -> None:
        """Set max_entries; only between open and load."""
        rc = L.lib().bpf_map__set_max_entries(self._ptr, max_entries)
        L.check("bpf_map__set_max_entries", rc)

    def set_initial_value(self, data: bytes) -> None:
        """Replace the whole initial value of a global-data map (.rodata, .data) before load."""
        buf = ctypes.create_string_buffer(data, len(data))
        rc = L.lib().bpf_map__set_initial_value(self._ptr, buf, len(data))
        if rc < 0:
            raise ValueError(
                f"{self.name}: initial value of {len(data)} bytes does not fit "
                f"(the map holds {self.value_size})"
            )

    # -- element access ---------------------------------------------------

    def _value_bytes(self) -> int:
        if self.type in PERCPU_TYPES:
            return ((self.value_size + 7) // 8 * 8) * possible_cpus()
        return self.value_size

    def lookup(self, key: bytes) -> bytes | None:
        value = ctypes.create_string_buffer(self._value_bytes())
        rc = L.lib().bpf_map_lookup_elem(self.fd, key, value)
        if rc == -errno_mod.ENOENT:
            return None
        L.check("bpf_map_lookup_elem", rc)
        return value.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        L.check("bpf_map_update_elem", L.lib().bpf_map_update_elem(self.fd, key, value, flags))

    def delete(self, key: bytes) -> bool:
        rc = L.lib().bpf_map_delete_elem(self.fd, key)
        if rc == -errno_mod.ENOENT:
            return False
        L.check("bpf_map_delete_elem", rc)
        return True

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
            raise ValueError(
                f"{self.name}: key dtype is {key_dtype.itemsize} bytes, map has {self.key_size}"
            )
        if value_dtype.itemsize != self._value_bytes():
            raise ValueError(
                f"{self.name}: value dtype is {value_dtype.itemsize} bytes, "
                f"map has {self._value_bytes()}"
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
            L.check("bpf_map_lookup_batch", rc)
            ctypes.memmove(batch_in, batch_out, token)
            first = False
        return keys[:got], values[:got]


def _libbpf_hint() -> str:
    lines = [ln for ln in L.log.take() if ln.strip()]
    return f"; libbpf: {lines[-1]}" if lines else ""


class BpfObject:
    """An opened (then loaded) BPF ELF object: its maps, programs and links.

    Use as a context manager; :meth:`close` destroys links, then the object.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise EnvironmentProblem(f"eBPF object {self.path} is missing: reinstall podsight")
        self._links: list[Link] = []
        self._loaded = False
        L.log.take()
        ptr = L.lib().bpf_object__open_file(os.fsencode(self.path), None)
        if not ptr:
            err = L.errno()
            raise EnvironmentProblem(
                f"cannot open {self.path.name}: {os.strerror(err)}{_libbpf_hint()}"
            )
        self._ptr: int | None = ptr

    @classmethod
    def from_package(cls, package: str, filename: str, stack: ExitStack | None = None) -> BpfObject:
        """Open an object shipped as package data of ``package``."""
        ref = resources.files(package) / filename
        if stack is not None:
            return cls(stack.enter_context(resources.as_file(ref)))
        return cls(Path(str(ref)))

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise ValueError("BPF object is closed")
        return self._ptr

    def map(self, name: str) -> Map:
        ptr = L.lib().bpf_object__find_map_by_name(self.ptr, name.encode())
        if not ptr:
            raise KeyError(f"{self.path.name} has no map {name!r}")
        return Map(self, ptr)

    def program(self, name: str) -> Program:
        ptr = L.lib().bpf_object__find_program_by_name(self.ptr, name.encode())
        if not ptr:
            raise KeyError(f"{self.path.name} has no program {name!r}")
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
            if err in (errno_mod.EPERM, errno_mod.EACCES):
                raise EnvironmentProblem(
                    f"the kernel refused to load {self.path.name} ({os.strerror(err)}): "
                    "run podsight as root"
                )
            raise EnvironmentProblem(
                f"cannot load {self.path.name}: {os.strerror(err)}{_libbpf_hint()}"
            )
        self._loaded = True

    def attach_all(self) -> list[Link]:
        """Attach every loaded program where its section name says."""
        return [p.attach() for p in self.programs()]

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
