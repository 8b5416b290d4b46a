"""Names from the running kernel's own BTF, read through libbpf.

Why BTF and not a table in podsight: ``enum skb_drop_reason`` grows with
every kernel release and its values shift (6.18 has ~130 reasons, 5.17 had
5). The tracefs ``skb/kfree_skb/format`` file carries the same names in a
``__print_symbolic`` list, but tracefs may be unmounted while
``/sys/kernel/btf/vmlinux`` is what CO-RE needs anyway, so BTF is the one
source that is always there when podsight runs at all.
"""

from __future__ import annotations

import ctypes
from functools import cache

from podsight.ebpf import _libbpf as L

BTF_KIND_ENUM = 6
BTF_KIND_ENUM64 = 19


class _BtfType(ctypes.Structure):
    """struct btf_type: name_off, info (vlen in the low 16 bits), size."""

    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size", ctypes.c_uint32)]


class _BtfEnum(ctypes.Structure):
    """struct btf_enum: name_off, val; follows its btf_type vlen times."""

    _fields_ = [("name_off", ctypes.c_uint32), ("val", ctypes.c_int32)]


def enum_values(name: str, strip_prefix: str = "") -> dict[int, str]:
    """Return {value: name} for the kernel enum ``name`` (empty if it has none).

    ``strip_prefix`` is cut from every enumerator, so that
    ``SKB_DROP_REASON_NETFILTER_DROP`` reads ``NETFILTER_DROP`` exactly as
    the kernel's own tracepoint output prints it.
    """
    so = L.lib()
    btf = L.check_ptr("btf__load_vmlinux_btf", so.btf__load_vmlinux_btf(),
                      f"read enum {name} from the kernel's BTF")
    try:
        type_id = so.btf__find_by_name_kind(btf, name.encode(), BTF_KIND_ENUM)
        if type_id < 0:
            return {}
        ptr = L.check_ptr("btf__type_by_id", so.btf__type_by_id(btf, type_id),
                          f"read enum {name} from the kernel's BTF")
        head = _BtfType.from_address(ptr)
        vlen = head.info & 0xFFFF
        entries = (_BtfEnum * vlen).from_address(ptr + ctypes.sizeof(_BtfType))
        out: dict[int, str] = {}
        for entry in entries:
            raw = so.btf__name_by_offset(btf, entry.name_off) or b""
            text = raw.decode()
            if strip_prefix and text.startswith(strip_prefix):
                text = text[len(strip_prefix):]
            out[entry.val & 0xFFFFFFFF] = text
        return out
    finally:
        so.btf__free(btf)


@cache
def drop_reasons() -> dict[int, str]:
    """The kernel's ``enum skb_drop_reason`` as {value: "NETFILTER_DROP", ...}."""
    return enum_values("skb_drop_reason", "SKB_DROP_REASON_")
