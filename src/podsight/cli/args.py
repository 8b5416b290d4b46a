"""Parsers for flag values shared by commands; each raises a one-line error on bad input."""

from __future__ import annotations

import argparse
import ipaddress
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
            "m": 60_000_000_000, "h": 3_600_000_000_000}


def duration_ns(value: str) -> int:
    """``5ms``, ``250us``, ``1.5s``, ``2m``; a bare number is seconds."""
    m = _DURATION.match(value)
    if not m:
        raise argparse.ArgumentTypeError(f"invalid duration {value!r} (examples: 5ms, 250us, 1.5s)")
    return int(float(m.group(1)) * _UNIT_NS[m.group(2) or "s"])


def seconds(value: str) -> float:
    """A positive number of seconds (units allowed: ``30``, ``30s``, ``2m``)."""
    ns = duration_ns(value)
    if ns <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {value!r}: must be positive")
    return ns / 1e9


def port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {value!r} (1-65535)")
    return int(value)


def pid(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 0x3FFFFFFF:
        raise argparse.ArgumentTypeError(f"invalid pid {value!r}")
    return int(value)


def cidr(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR or a single address; host bits are allowed (10.0.0.5/8 means 10.0.0.0/8)."""
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid CIDR {value!r}") from None


def cidr_list(value: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Comma-separated CIDRs."""
    parts = [p for p in value.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"invalid CIDR {value!r}")
    return [cidr(p) for p in parts]
