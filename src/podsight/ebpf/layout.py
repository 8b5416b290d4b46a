"""C struct layouts read from an object's BTF, and a check of numpy dtypes against them.

Why: a record crosses the kernel boundary as bytes. The C side
(``struct event`` in a .bpf.c) and the Python side (a numpy structured
dtype, or a ``struct.pack`` format) are written by hand, twice; when one
side gains a field and the other does not, nothing fails, the numbers are
just wrong. cilium/ebpf's bpf2go avoids that by generating the Go types from
the object's BTF. podsight keeps its hand-written dtypes (they are short and
readable) and instead *checks* them against the same BTF, in a test that
needs neither root nor a kernel: :func:`check_dtype`.

BTF is read with libbpf's ``btf__parse`` (ELF objects and raw BTF files such
as ``/sys/kernel/btf/vmlinux``); the type records are walked here because
libbpf's accessors for them are static inline functions ctypes cannot call.

Naming a type (``c_name``): ``"struct event"``, ``"union u"`` and
``"enum e"`` name tagged types; a bare name is a global variable (the type
of ``cfg`` in the ``.rodata`` section, anonymous struct or not), else a
typedef. Note that clang puts a struct in an object's BTF only when a global
variable, a map definition or a function signature uses it: a record used
only as a local variable (a ring buffer event) is absent until something
references it (:meth:`Btf.has` says so). tests/test_layouts.py then checks
it in the same source compiled with the type referenced (bpf2go's ``-type``
trick); a line such as ``const struct event *unused_event
__attribute__((unused));`` in the .bpf.c would put it in the shipped object
(at the cost of an 8-byte ``.bss`` map).
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np

from podsight.ebpf import _libbpf as L
from podsight.ebpf.btf import _BtfType
from podsight.ebpf.errors import (
    REBUILD_HINT,
    BadObject,
    Closed,
    InvalidArgument,
    PermissionDenied,
    describe_errno,
)

# enum btf_kind (uapi linux/btf.h)
KIND_INT = 1
KIND_PTR = 2
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FWD = 7
KIND_TYPEDEF = 8
KIND_VOLATILE = 9
KIND_CONST = 10
KIND_RESTRICT = 11
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_FLOAT = 16
KIND_DECL_TAG = 17
KIND_TYPE_TAG = 18
KIND_ENUM64 = 19

#: Kinds that only qualify another type: followed through to what they qualify.
_MODIFIERS = (KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG)
_KIND_NAMES = {
    KIND_INT: "int", KIND_PTR: "ptr", KIND_ARRAY: "array", KIND_STRUCT: "struct",
    KIND_UNION: "union", KIND_ENUM: "enum", KIND_FWD: "fwd", KIND_FUNC_PROTO: "func",
    KIND_FLOAT: "float", KIND_ENUM64: "enum",
}
_TAGGED = {"struct": KIND_STRUCT, "union": KIND_UNION, "enum": KIND_ENUM}
#: BTF_INT_SIGNED in the encoding bits of an int's extra word.
_BTF_INT_SIGNED = 1


class _BtfMember(ctypes.Structure):
    """struct btf_member: follows a struct/union's btf_type vlen times."""

    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32),
                ("offset", ctypes.c_uint32)]


class _BtfArray(ctypes.Structure):
    """struct btf_array: follows an array's btf_type."""

    _fields_ = [("type", ctypes.c_uint32), ("index_type", ctypes.c_uint32),
                ("nelems", ctypes.c_uint32)]


class _BtfVarSecinfo(ctypes.Structure):
    """struct btf_var_secinfo: follows a DATASEC's btf_type vlen times."""

    _fields_ = [("type", ctypes.c_uint32), ("offset", ctypes.c_uint32),
                ("size", ctypes.c_uint32)]


@dataclass(frozen=True, slots=True)
class CType:
    """A C type as BTF lays it out.

    ``kind`` is ``struct``, ``union``, ``array``, ``int``, ``enum``,
    ``float``, ``ptr`` (not followed), ``fwd`` (incomplete) or ``func``.
    ``name`` is how C spells it where it is used: ``struct flow_key``,
    ``u32`` (a typedef keeps its own name), ``u8[16]``, ``struct <anon>``.
    """

    kind: str
    name: str
    size: int
    members: tuple[Member, ...] = ()  # struct, union
    element: CType | None = None  # array
    length: int = 0  # array: number of elements
    signed: bool = False  # int

    def member(self, name: str) -> Member:
        """The member called ``name`` (anonymous members' members included)."""
        for m in self.fields():
            if m.name == name:
                return m
        raise InvalidArgument(f"{self.name} has no member {name!r}")

    def fields(self) -> tuple[Member, ...]:
        """Members with anonymous struct/union members flattened into this one (C11 rules)."""
        out: list[Member] = []
        for m in self.members:
            if not m.name and m.type.kind in ("struct", "union"):
                out.extend(
                    Member(inner.name, m.offset + inner.offset, inner.size, inner.type,
                           inner.bits, inner.bit_offset + m.offset * 8 if inner.bits else 0)
                    for inner in m.type.fields()
                )
            else:
                out.append(m)
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a struct or union; offsets are bytes from the start of its struct.

    A bitfield has ``bits`` > 0 and its exact place in ``bit_offset``;
    ``offset`` is then the byte holding its first bit.
    """

    name: str
    offset: int
    size: int
    type: CType
    bits: int = 0
    bit_offset: int = 0


class Btf:
    """The BTF of one ELF object (or a raw BTF file), parsed by libbpf; closed on ``with`` exit.

    Needs no privilege and no kernel: it reads the file. A file libbpf
    cannot parse (truncated, not ELF, no .BTF section) is a :class:`BadObject`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._ptr: int | None = None
        if not self.path.is_file():
            raise BadObject(f"eBPF object {self.path} is missing: {REBUILD_HINT}")
        L.log.take()
        ptr = L.lib().btf__parse(os.fsencode(self.path), None)
        if not ptr:
            err = L.errno()
            if err in (errno_mod.EPERM, errno_mod.EACCES):
                raise PermissionDenied(f"cannot read {self.path}: {os.strerror(err)}", errno=err)
            raise BadObject(f"cannot read the BTF of {self.path}: {describe_errno(err)}"
                            f"{L.log.hint()}: "
                            f"the file is truncated, corrupt or was built without -g; "
                            f"{REBUILD_HINT}", errno=err)
        self._ptr = ptr

    @classmethod
    def kernel(cls) -> Btf:
        """The running kernel's own BTF (world-readable /sys/kernel/btf/vmlinux)."""
        return cls("/sys/kernel/btf/vmlinux")

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise Closed(f"the BTF of {self.path.name} is closed")
        return self._ptr

    def close(self) -> None:
        if self._ptr is not None:
            L.lib().btf__free(self._ptr)
            self._ptr = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw records ------------------------------------------------------------

    def _type(self, type_id: int) -> tuple[_BtfType, int]:
        """The btf_type record of ``type_id`` and the address right after it."""
        addr = L.lib().btf__type_by_id(self.ptr, type_id)
        if not addr:
            raise BadObject(f"{self.path.name}: BTF type id {type_id} does not exist: "
                            f"the BTF is corrupt; {REBUILD_HINT}")
        return _BtfType.from_address(addr), addr + ctypes.sizeof(_BtfType)

    def _name(self, name_off: int) -> str:
        raw = L.lib().btf__name_by_offset(self.ptr, name_off)
        return (raw or b"").decode(errors="replace")

    @staticmethod
    def _kind(head: _BtfType) -> int:
        return int(head.info >> 24) & 0x1F

    def _find(self, name: str, kind: int) -> int | None:
        type_id = int(L.lib().btf__find_by_name_kind(self.ptr, name.encode(), kind))
        return type_id if type_id > 0 else None

    # -- lookup -----------------------------------------------------------------

    def type_id(self, c_name: str) -> int | None:
        """The BTF id ``c_name`` names (see the module doc for the spelling), or None."""
        tag, _, rest = c_name.strip().partition(" ")
        if rest and tag in _TAGGED:
            found = self._find(rest.strip(), _TAGGED[tag])
            if found is None and tag == "enum":
                found = self._find(rest.strip(), KIND_ENUM64)
            return found
        var = self._find(c_name, KIND_VAR)
        if var is not None:
            head, _ = self._type(var)
            return int(head.size)  # a VAR's "size" field is its type id
        return self._find(c_name, KIND_TYPEDEF)

    def has(self, c_name: str) -> bool:
        return self.type_id(c_name) is not None

    def section_of(self, var: str) -> str | None:
        """The DATASEC (``.rodata``, ``.bss``, ``.maps``...) holding global variable ``var``."""
        var_id = self._find(var, KIND_VAR)
        if var_id is None:
            return None
        for type_id in range(1, int(L.lib().btf__type_cnt(self.ptr))):
            head, tail = self._type(type_id)
            if self._kind(head) != KIND_DATASEC:
                continue
            entries = (_BtfVarSecinfo * (head.info & 0xFFFF)).from_address(tail)
            if any(entry.type == var_id for entry in entries):
                return self._name(head.name_off)
        return None

    def layout(self, c_name: str) -> CType:
        """The layout of ``c_name``; :class:`BadObject` when this BTF has no such type."""
        type_id = self.type_id(c_name)
        if type_id is None:
            raise BadObject(f"{self.path.name} has no {c_name} in its BTF: the object does not "
                            f"match this podsight; {REBUILD_HINT}")
        return self._layout(type_id, c_name)

    def _layout(self, type_id: int, spelled: str = "") -> CType:
        head, tail = self._type(type_id)
        kind = self._kind(head)
        name = self._name(head.name_off)
        if kind in _MODIFIERS:
            return self._layout(int(head.size), spelled)
        if kind == KIND_TYPEDEF:
            inner = self._layout(int(head.size))
            return CType(inner.kind, spelled or name, inner.size, inner.members, inner.element,
                         inner.length, inner.signed)
        size = int(L.lib().btf__resolve_size(self.ptr, type_id))
        kind_name = _KIND_NAMES.get(kind, "other")
        if kind in (KIND_STRUCT, KIND_UNION):
            label = spelled or f"{kind_name} {name or '<anon>'}"
            return CType(kind_name, label, size, self._members(head, tail))
        if kind == KIND_ARRAY:
            arr = _BtfArray.from_address(tail)
            element = self._layout(int(arr.type))
            return CType("array", spelled or f"{element.name}[{arr.nelems}]", size,
                         element=element, length=int(arr.nelems))
        if kind == KIND_INT:
            encoding = (ctypes.c_uint32.from_address(tail).value >> 24) & 0x0F
            return CType("int", spelled or name, size,
                         signed=bool(encoding & _BTF_INT_SIGNED))
        if kind in (KIND_ENUM, KIND_ENUM64):
            return CType("enum", spelled or f"enum {name or '<anon>'}", size,
                         signed=bool(head.info >> 31))
        return CType(kind_name, spelled or name or kind_name, max(size, 0))

    def _members(self, head: _BtfType, tail: int) -> tuple[Member, ...]:
        kind_flag = bool(head.info >> 31)
        out = []
        for raw in (_BtfMember * (head.info & 0xFFFF)).from_address(tail):
            if kind_flag:
                bits, bit_offset = raw.offset >> 24, raw.offset & 0xFFFFFF
            else:
                bits, bit_offset = 0, raw.offset
            mtype = self._layout(int(raw.type))
            if bits:
                out.append(Member(self._name(raw.name_off), bit_offset // 8,
                                  math.ceil((bit_offset % 8 + bits) / 8), mtype, bits, bit_offset))
            else:
                out.append(Member(self._name(raw.name_off), bit_offset // 8, mtype.size, mtype))
        return tuple(out)


def c_layout(obj_path: str | os.PathLike[str], c_name: str) -> CType:
    """The layout of ``c_name`` (``"struct event"``, ``"cfg"``) in the BTF of ``obj_path``."""
    with Btf(obj_path) as btf:
        return btf.layout(c_name)


def check_dtype(obj_path: str | os.PathLike[str], c_name: str, dtype: np.dtype | type,
                *, prefix: bool = False) -> list[str]:
    """Where numpy ``dtype`` disagrees with C type ``c_name`` in the BTF of ``obj_path``.

    Empty when they agree. See :func:`compare` for the rules; ``dtype`` may
    also be a ctypes Structure (numpy converts it).
    """
    with Btf(obj_path) as btf:
        if not btf.has(c_name):
            return [f"{c_name}: not in the BTF of {Path(obj_path).name}"]
        return compare(btf.layout(c_name), np.dtype(dtype), prefix=prefix)


def _extent(dtype: np.dtype) -> int:
    """Where the last named field of a structured dtype ends."""
    if dtype.names is None:
        return int(dtype.itemsize)
    return max((dtype.fields[name][1] + dtype.fields[name][0].itemsize  # type: ignore[index]
                for name in dtype.names), default=0)


def compare(ctype: CType, dtype: np.dtype, *, prefix: bool = False, path: str = "") -> list[str]:
    """The disagreements between a C layout and a numpy dtype, one sentence each.

    The rules: the sizes are equal; every C member is a dtype field of the
    same name, at the same offset, of the same size (recursively for nested
    structs and arrays of structs); integer signedness agrees where both
    sides are plain integers. Names starting with ``_`` are padding: a C
    ``_pad`` may be absent from the dtype, and a dtype ``_x`` not in C must
    lie in bytes no named C member uses. A bitfield matches a field that
    covers its bits. With ``prefix`` the dtype declares only the start of
    the C type (a kernel struct that grows at its end, read with its
    length): C members past the dtype's last field are not required.
    """
    where = path or ctype.name
    problems: list[str] = []
    if prefix:
        if _extent(dtype) > ctype.size:
            problems.append(f"{where}: the dtype's fields end at byte {_extent(dtype)}, "
                            f"past the {ctype.size} bytes of C {ctype.name}")
    elif dtype.itemsize != ctype.size:
        problems.append(f"{where}: {dtype.itemsize} bytes in the dtype, "
                        f"{ctype.size} in C {ctype.name}")
    if dtype.subdtype is not None:
        return problems + _compare_array(ctype, dtype, where)
    if dtype.names is None:
        if dtype.kind in "iu" and ctype.kind == "int" and dtype.itemsize == ctype.size \
                and ctype.size > 1 and (dtype.kind == "i") != ctype.signed:
            sign = "signed" if ctype.signed else "unsigned"
            problems.append(f"{where}: {dtype.str} in the dtype, {sign} {ctype.name} in C")
        return problems
    if ctype.kind not in ("struct", "union"):
        return [*problems, f"{where}: the dtype has fields, C {ctype.name} is a {ctype.kind}"]
    fields = {name: dtype.fields[name][:2] for name in dtype.names}  # type: ignore[index]
    limit = _extent(dtype) if prefix else None
    members = ctype.fields()
    for m in members:
        label = f"{path}.{m.name}" if path else m.name
        if limit is not None and m.offset + m.size > limit:
            continue
        got = fields.get(m.name)
        if got is None:
            if not m.name.startswith("_"):
                problems.append(f"{label}: in C at offset {m.offset} ({m.size} bytes), "
                                "missing from the dtype")
            continue
        sub, off = got
        if m.bits:
            if not (off * 8 <= m.bit_offset and m.bit_offset + m.bits <= (off + sub.itemsize) * 8):
                problems.append(f"{label}: bitfield at bit {m.bit_offset} ({m.bits} bits) in C, "
                                f"the dtype has bytes {off}..{off + sub.itemsize}")
            continue
        if off != m.offset:
            problems.append(f"{label}: offset {off} in the dtype, {m.offset} in C")
        elif sub.itemsize != m.size:
            problems.append(f"{label}: {sub.itemsize} bytes in the dtype, {m.size} in C "
                            f"({m.type.name})")
        else:
            problems.extend(compare(m.type, sub, path=label))
    c_names = {m.name for m in members}
    named = [m for m in members if m.name and not m.name.startswith("_")]
    for name, (sub, off) in fields.items():
        if name in c_names:
            continue
        label = f"{path}.{name}" if path else name
        if not name.startswith("_"):
            problems.append(f"{label}: in the dtype at offset {off} ({sub.itemsize} bytes), "
                            f"not a member of C {ctype.name}")
            continue
        hit = [m.name for m in named if off < m.offset + m.size and m.offset < off + sub.itemsize]
        if hit:
            problems.append(f"{label}: dtype padding at bytes {off}..{off + sub.itemsize} "
                            f"overlaps C member {', '.join(hit)}")
    return problems


def _compare_array(ctype: CType, dtype: np.dtype, where: str) -> list[str]:
    """A dtype subarray (``("rules", RULE_DTYPE, (8,))``) against a C array."""
    assert dtype.subdtype is not None
    base, shape = dtype.subdtype
    count = math.prod(shape)
    element, c_count = ctype, 1
    while element.kind == "array" and element.element is not None:
        c_count *= element.length
        element = element.element
    if ctype.kind != "array":
        return [f"{where}: an array of {count} in the dtype, C {ctype.name} is a {ctype.kind}"]
    if c_count != count:
        return [f"{where}: {count} elements in the dtype, {c_count} in C {ctype.name}"]
    return compare(element, base, path=f"{where}[]")
