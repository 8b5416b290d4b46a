"""IP protocol numbers and TCP flags by name, as people and netobserv spell them."""

from __future__ import annotations

PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
PROTOCOL_NUMBERS = {name: number for number, name in PROTOCOLS.items()}
ICMP_PROTOCOLS = (1, 58)
PORT_PROTOCOLS = (6, 17, 132)

# TCP flag bits as podsight's kernel programs report them (netobserv's encoding: the 8
# header bits plus three combinations, so that a SYN-ACK is told from a SYN at a glance).
TCP_FLAGS = (
    (0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"), (0x20, "URG"),
    (0x40, "ECE"), (0x80, "CWR"), (0x100, "SYN_ACK"), (0x200, "FIN_ACK"), (0x400, "RST_ACK"),
)
TCP_FLAG_BITS = {name: bit for bit, name in TCP_FLAGS}


def protocol_name(number: int) -> str:
    return PROTOCOLS.get(number, str(number))


def flag_names(bits: int) -> list[str]:
    return [name for bit, name in TCP_FLAGS if bits & bit]
