"""Parsers for flag values, one per :class:`podsight.spec.Kind`; bad input is one line.

Every parser checks the bounds of what it returns: a value that would
overflow a kernel field (``--min-latency 99999999999999999999999h``), a
size that is not finite (``--max-bytes inf``) or an empty list is refused
here, with the flag's value in the message, instead of failing later in
``struct.pack`` or a libbpf call.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import re
from collections.abc import Callable
from typing import Any

from podsight.spec import Kind

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d)?\s*$")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
            "m": 60_000_000_000, "h": 3_600_000_000_000, "d": 86_400_000_000_000}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _bad(message: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(message)


def _readable_ns(ns: int) -> str:
    for unit in ("d", "h", "m", "s", "ms", "us"):
        if ns >= _UNIT_NS[unit] and ns % _UNIT_NS[unit] == 0:
            return f"{ns // _UNIT_NS[unit]}{unit}"
    return f"{ns}ns"


def duration_ns(value: str, lo: int = 0, hi: int = (1 << 63) - 1) -> int:
    """``5ms``, ``250us``, ``1.5s``, ``2m``, ``1h``, ``1d``; a bare number is seconds."""
    m = _DURATION.match(value)
    if not m:
        raise _bad(f"invalid duration {value!r} (examples: 5ms, 250us, 1.5s, 2m)")
    number = float(m.group(1))
    ns = number * _UNIT_NS[m.group(2) or "s"]
    if not math.isfinite(ns) or ns > hi:
        raise _bad(f"invalid duration {value!r}: at most {_readable_ns(hi)}")
    out = int(ns)
    if out < lo:
        raise _bad(f"invalid duration {value!r}: at least {_readable_ns(lo)}")
    return out


def looks_like_duration(value: str) -> bool:
    """Is ``value`` meant as a duration: does it start with a number (``2s``, ``500ms``,
    ``3``)? Not whether it is a valid one: ``5x`` or ``99999999999h`` look like one, and
    get their own error. (No tcpdump expression starts with a number.)"""
    return value.lstrip()[:1].isdigit()


def seconds(value: str, lo: int = 1, hi: int = 366 * 86400 * 1_000_000_000) -> float:
    """A positive duration in seconds (``30``, ``30s``, ``2m``); zero or less is refused."""
    ns = duration_ns(value, 0, hi)
    if ns < max(lo, 1):
        raise _bad(f"invalid duration {value!r}: must be positive")
    return ns / 1e9


def size(value: str, lo: int = 1, hi: int = 1 << 50) -> int:
    """``1048576``, ``500K``, ``50M``, ``1G`` (binary units; a trailing B or iB is allowed)."""
    m = _SIZE.match(value)
    if not m:
        raise _bad(f"invalid size {value!r}: e.g. 1048576, 500K, 50M")
    n = float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()]
    if not math.isfinite(n) or n > hi:
        raise _bad(f"invalid size {value!r}: at most {hi}")
    if n < lo:
        raise _bad(f"invalid size {value!r}: at least {lo}")
    return int(n)


def power_of_two(value: str, lo: int, hi: int) -> int:
    n = size(value, lo, hi)
    if n & (n - 1):
        raise _bad(f"invalid size {value!r}: a power of two from {lo} to {hi}")
    return n


def integer(value: str, lo: int, hi: int) -> int:
    text = value.strip()
    if not text.lstrip("-").isdigit() or len(text) > 20 or not lo <= int(text) <= hi:
        raise _bad(f"invalid number {value!r}: {lo} to {hi}")
    return int(text)


def port(value: str) -> int:
    text = value.strip()
    if not text.isdigit() or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise _bad(f"invalid port {value!r} (1-65535)")
    return int(text)


def pid(value: str) -> int:
    text = value.strip()
    if not text.isdigit() or len(text) > 10 or not 1 <= int(text) <= 0x3FFFFFFF:
        raise _bad(f"invalid pid {value!r}")
    return int(text)


def cidr(value: str) -> Network:
    """A CIDR or a single address; host bits are allowed (10.0.0.5/8 means 10.0.0.0/8)."""
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise _bad(f"invalid CIDR {value!r}") from None


def cidr_list(value: str) -> list[Network]:
    """Comma-separated CIDRs."""
    parts = [p for p in value.split(",") if p.strip()]
    if not parts:
        raise _bad(f"invalid CIDR {value!r}: needs at least one")
    return [cidr(p) for p in parts]


def names(value: str) -> list[str]:
    """A comma list of names (or patterns); at least one."""
    out = [v.strip() for v in value.split(",") if v.strip()]
    if not out:
        raise _bad("needs at least one name")
    return out


def text(value: str) -> str:
    if not value.strip():
        raise _bad("needs a value")
    return value


def parser_for(kind: Kind) -> Callable[[str], Any] | None:
    """The argparse ``type=`` for a kind (None for a flag, which takes no value)."""
    lo, hi = kind.lo, kind.hi
    if kind.name == "flag":
        return None
    simple: dict[str, Callable[[str], Any]] = {
        "text": text, "names": names, "port": port, "pid": pid, "cidrs": cidr_list,
        "netns": names,
    }
    if kind.name in simple:
        return simple[kind.name]
    assert lo is not None and hi is not None, kind
    bounded: dict[str, Callable[[str], Any]] = {
        "duration": lambda v: duration_ns(v, lo, hi),
        "seconds": lambda v: seconds(v, lo, hi),
        "size": lambda v: size(v, lo, hi),
        "pow2": lambda v: power_of_two(v, lo, hi),
        "int": lambda v: integer(v, lo, hi),
    }
    return bounded[kind.name]
