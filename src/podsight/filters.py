"""Filters that run in user space, on records, whatever the gadget.

Kernel-side filters are each gadget's own (its programs' config; network
gadgets share the rule model in :mod:`podsight.net.rules`); what the kernel
cannot decide, a gadget declares on a parameter (``Param.filter``) and the
pipeline applies one of these. Each carries the record attribute it reads
(``attr``), so the JSON templates know whether a filter can be decided once
per identity.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class FieldIn:
    """Keep records whose ``attr`` is one of ``values`` (``--comm curl,wget``)."""

    attr: str
    values: frozenset[str]

    def __call__(self, record: Any) -> bool:
        return getattr(record, self.attr) in self.values


class AddressIn:
    """Keep records whose address ``attr`` is in one of the networks (``--dst 10.0.0.0/8``);
    answers are cached per address (addresses repeat; the cache is bounded)."""

    def __init__(self, attr: str, networks: Sequence[Network]) -> None:
        self.attr = attr
        self.networks = list(networks)
        self._cache: dict[str, bool] = {}

    def __call__(self, record: Any) -> bool:
        addr = getattr(record, self.attr)
        hit = self._cache.get(addr)
        if hit is None:
            ip = ipaddress.ip_address(addr)
            hit = any(ip.version == n.version and ip in n for n in self.networks)
            if len(self._cache) > 65536:
                self._cache.clear()
            self._cache[addr] = hit
        return hit
