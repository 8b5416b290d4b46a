"""The filter-rule flags of network gadgets: netobserv's set, several rules joined with ``or``.

``podsight flows --protocol tcp --dport 80-90 or --cidr 10.0.0.0/8 --icmp-type 8``
is two rules (:class:`podsight.net.rules.Rule`); a packet is kept if any rule
takes it. Each gadget runs the rules where it can (flows: in its tc program).
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Sequence

from podsight.errors import UserError
from podsight.net.protocols import PROTOCOL_NUMBERS, TCP_FLAG_BITS
from podsight.net.rules import DIRECTIONS, Rule

MAX_RULES = 8


def port_range(value: str) -> tuple[int, int]:
    """``80`` or ``80-100`` (inclusive), ports 1-65535."""
    lo_text, sep, hi_text = value.partition("-")
    try:
        lo = int(lo_text)
        hi = int(hi_text) if sep else lo
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {value!r}: use 80 or 80-100") from None
    if not (1 <= lo <= hi <= 65535):
        raise argparse.ArgumentTypeError(
            f"invalid port {value!r}: ports are 1-65535, a range is low-high"
        )
    return lo, hi


def protocol(value: str) -> int:
    name = value.lower()
    if name in PROTOCOL_NUMBERS:
        return PROTOCOL_NUMBERS[name]
    raise argparse.ArgumentTypeError(
        f"invalid protocol {value!r}: use {', '.join(PROTOCOL_NUMBERS)}"
    )


def icmp_value(value: str) -> int:
    if value.isdigit() and int(value) <= 255:
        return int(value)
    raise argparse.ArgumentTypeError(f"invalid ICMP type/code {value!r}: a number 0-255")


def tcp_flags(value: str) -> int:
    """``SYN``, ``SYN-ACK``, ``RST,ACK``: the packet must carry all of them."""
    bits = 0
    if not value.strip():
        raise argparse.ArgumentTypeError("--tcp-flags needs at least one flag")
    for name in value.upper().replace("-", "_").split(","):
        name = name.strip()
        if name not in TCP_FLAG_BITS:
            known = ", ".join(n.replace("_", "-") for n in TCP_FLAG_BITS)
            raise argparse.ArgumentTypeError(f"invalid TCP flag {name!r}: use {known}")
        bits |= TCP_FLAG_BITS[name]
    return bits


def network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid CIDR {value!r}") from None


def networks(value: str) -> list[str]:
    items = [v for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("needs at least one CIDR")
    return [network(v) for v in items]


def peer_ip(value: str) -> str:
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid IP address {value!r}") from None
    return str(ipaddress.ip_network(ip))


def add_filter_flags(p: argparse.ArgumentParser) -> None:
    """The flags one rule is made of (the same before and after each ``or``)."""
    g = p.add_argument_group("filters (kernel side; join rules with a bare 'or')")
    g.add_argument("--direction", choices=("ingress", "egress"),
                   help="only this direction, as the observed interface sees it")
    g.add_argument("--cidr", type=networks, action="extend", metavar="CIDR[,CIDR]",
                   help="source or destination in these networks")
    g.add_argument("--peer-cidr", type=networks, action="extend", metavar="CIDR[,CIDR]",
                   help="the other end (with --cidr) or either end in these networks")
    g.add_argument("--peer-ip", type=peer_ip, action="append", metavar="IP",
                   help="the other end (with --cidr) or either end is this address")
    g.add_argument("--protocol", type=protocol, help="tcp, udp, sctp, icmp or icmpv6")
    g.add_argument("--port", type=port_range, metavar="PORT[-PORT]",
                   help="source or destination port in this range")
    g.add_argument("--sport", type=port_range, metavar="PORT[-PORT]", help="source port")
    g.add_argument("--dport", type=port_range, metavar="PORT[-PORT]", help="destination port")
    g.add_argument("--icmp-type", type=icmp_value, help="ICMP or ICMPv6 type")
    g.add_argument("--icmp-code", type=icmp_value, help="ICMP or ICMPv6 code")
    g.add_argument("--tcp-flags", type=tcp_flags, metavar="FLAG[,FLAG]",
                   help="packets carrying these TCP flags (SYN, SYN-ACK, FIN, RST, ACK, ...)")


def rule_from(ns: argparse.Namespace) -> Rule:
    return Rule(
        port=ns.port or (0, 0), sport=ns.sport or (0, 0), dport=ns.dport or (0, 0),
        tcp_flags=ns.tcp_flags or 0, direction=DIRECTIONS[ns.direction],
        protocol=ns.protocol or 0,
        cidrs=tuple(ns.cidr or ()), peers=tuple((ns.peer_cidr or []) + (ns.peer_ip or [])),
        icmp_type=ns.icmp_type, icmp_code=ns.icmp_code,
    )


def split_rules(words: Sequence[str]) -> list[list[str]]:
    """``or --port 80 or --port 443`` -> [["--port", "80"], ["--port", "443"]]."""
    if not words:
        return []
    if words[0] != "or":
        raise UserError(f"unexpected argument {words[0]!r} (rules are joined with a bare 'or')")
    groups: list[list[str]] = []
    for word in words:
        if word == "or":
            groups.append([])
        else:
            groups[-1].append(word)
    if any(not g for g in groups):
        raise UserError("'or' must be followed by filter flags")
    return groups


def parse_rules(first: argparse.Namespace, more: Sequence[str]) -> list[Rule]:
    """The rules of the command line; none at all means every packet."""
    from podsight.cli.parser import OneLineParser

    rules = [rule_from(first)]
    parser = OneLineParser(prog="podsight ... or", add_help=False)
    add_filter_flags(parser)
    for words in split_rules(more):
        rules.append(rule_from(parser.parse_args(words)))
    if len(rules) > 1 and any(r.empty for r in rules):
        raise UserError("every rule joined with 'or' needs at least one filter flag")
    if len(rules) > MAX_RULES:
        raise UserError(f"at most {MAX_RULES} filter rules (joined with 'or'), not {len(rules)}")
    return [] if rules == [Rule()] else rules
