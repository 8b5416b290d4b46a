"""Kernel addresses (16 bytes, IPv4 as ``::ffff:a.b.c.d`` or by family) to text, in bulk.

Addresses repeat a lot in a batch (a pod talks to a few peers), so each
distinct one is formatted once and cached; the cache is dropped whole when
it grows past a bound, so a scan of many addresses cannot grow it forever.
"""

from __future__ import annotations

import socket

import numpy as np

V4_MAPPED = b"\x00" * 10 + b"\xff\xff"
AF_INET, AF_INET6 = 2, 10
CACHE_LIMIT = 65536


def address(raw: bytes) -> str:
    """A 16-byte address, IPv4-mapped for IPv4, as text."""
    if raw.startswith(V4_MAPPED):
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return socket.inet_ntop(socket.AF_INET6, raw)


def ip_version(raw: bytes) -> int:
    return 4 if raw.startswith(V4_MAPPED) else 6


def split16(column: np.ndarray) -> list[bytes]:
    """A numpy column of 16-byte addresses as a list of bytes objects."""
    raw = column.tobytes()
    return [raw[i : i + 16] for i in range(0, len(raw), 16)]


class AddressFormatter:
    """(family, 16 raw bytes) -> (ip version, text); a v4-mapped address reads as IPv4."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, bytes], tuple[int, str]] = {}

    def __call__(self, family: int, raw: bytes) -> tuple[int, str]:
        key = (family, raw)
        hit = self._cache.get(key)
        if hit is None:
            if family == AF_INET:
                hit = (4, socket.inet_ntop(socket.AF_INET, raw[:4]))
            elif raw.startswith(V4_MAPPED):
                hit = (4, socket.inet_ntop(socket.AF_INET, raw[12:]))
            else:
                hit = (6, socket.inet_ntop(socket.AF_INET6, raw))
            if len(self._cache) > CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = hit
        return hit
