"""Packet filter rules, netobserv's set: what a rule selects, independent of where it runs.

``podsight flows --protocol tcp --dport 80-90 or --cidr 10.0.0.0/8`` is two
rules; a packet is kept if any rule takes it, and within a rule every field
must hold. A gadget turns rules into its own kernel form (flows packs them
into its tc program's config and puts CIDRs in LPM tries, see
:func:`lpm_entries`); the parsing of the flags lives in ``podsight.cli.rules``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from podsight.errors import UserError
from podsight.net.protocols import PROTOCOL_NUMBERS

DIRECTIONS = {None: 0, "ingress": 1, "egress": 2}


@dataclass(frozen=True)
class Rule:
    """One rule; zero, empty or None means "any".

    Ports are inclusive ranges (``(0, 0)`` is any). ``cidrs``: either end in
    one of these networks. ``peers``: the other end (with ``cidrs``) or either
    end (alone) in one of these. ``tcp_flags``: the packet carries all of these
    bits. ``direction``: 0 any, 1 ingress, 2 egress (as the observed interface
    sees it).
    """

    port: tuple[int, int] = (0, 0)
    sport: tuple[int, int] = (0, 0)
    dport: tuple[int, int] = (0, 0)
    tcp_flags: int = 0
    direction: int = 0
    protocol: int = 0
    cidrs: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()
    icmp_type: int | None = None
    icmp_code: int | None = None

    def __post_init__(self) -> None:
        icmp = (PROTOCOL_NUMBERS["icmp"], PROTOCOL_NUMBERS["icmpv6"])
        if (self.icmp_type is not None or self.icmp_code is not None) and \
                self.protocol not in (0, *icmp):
            raise UserError("--icmp-type and --icmp-code need --protocol icmp or icmpv6")
        if self.tcp_flags and self.protocol not in (0, PROTOCOL_NUMBERS["tcp"]):
            raise UserError("--tcp-flags needs --protocol tcp")

    @property
    def empty(self) -> bool:
        return self == Rule()


def _mapped(text: str) -> ipaddress.IPv6Network:
    """A network as the kernel keys it: IPv4 as its IPv4-mapped IPv6 network."""
    net = ipaddress.ip_network(text, strict=False)
    if isinstance(net, ipaddress.IPv4Network):
        return ipaddress.IPv6Network((int(net.network_address) | 0xFFFF00000000,
                                      96 + net.prefixlen))
    return net


def lpm_entries(rules: tuple[Rule, ...] | list[Rule], attr: str) -> dict[bytes, int]:
    """LPM trie content: each prefix -> the bits of every rule whose network contains it.

    ``attr`` is ``"cidrs"`` or ``"peers"``. The kernel returns only the longest
    matching prefix, so a narrower prefix must also carry the bits of the
    wider ones that contain it. Keys are ``struct lpm_key``: a u32 prefix
    length and 16 address bytes.
    """
    nets: list[tuple[ipaddress.IPv6Network, int]] = []
    for i, rule in enumerate(rules):
        for text in getattr(rule, attr):
            nets.append((_mapped(text), 1 << i))
    out: dict[bytes, int] = {}
    for net, _ in nets:
        mask = 0
        for other, bit in nets:
            if net.subnet_of(other):
                mask |= bit
        key = struct.pack("<I", net.prefixlen) + net.network_address.packed
        out[key] = out.get(key, 0) | mask
    return out
