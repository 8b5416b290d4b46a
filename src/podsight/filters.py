"""Filters that run in user space, on decoded events (kernel-side ones live in each gadget's
config). Each is built once from flags and is a cheap predicate, cached per distinct value."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import TypeVar

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")


class CidrMatcher:
    """Does an address fall in any of these networks? Answers are cached per address."""

    def __init__(self, networks: Sequence[Network]) -> None:
        self.networks = list(networks)
        self._cache: dict[str, bool] = {}

    def __call__(self, addr: str) -> bool:
        hit = self._cache.get(addr)
        if hit is None:
            ip = ipaddress.ip_address(addr)
            hit = any(ip.version == n.version and ip in n for n in self.networks)
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[addr] = hit
        return hit


def combine(predicates: Sequence[Callable[[T], bool]]) -> Callable[[T], bool] | None:
    """All predicates must hold; None when there are none (so callers can skip the loop)."""
    preds = list(predicates)
    if not preds:
        return None
    if len(preds) == 1:
        return preds[0]
    return lambda item: all(p(item) for p in preds)
