"""Raw bytes for people: a hex dump and the headers decoded, one line per layer.

Used by the live view's detail pane for any record that carries bytes (a
packet, link layer first). Enough of Ethernet, 802.1Q, ARP, IPv4, IPv6,
TCP, UDP, ICMP and ICMPv6 to read a capture at a glance; whatever it does
not know it says so and stops.
"""

from __future__ import annotations

import ipaddress
import struct

from podsight.net.protocols import flag_names, protocol_name


def hexdump(data: bytes, width: int = 16) -> list[str]:
    """``0000  45 00 00 3c ...  E..<`` lines."""
    out = []
    for off in range(0, len(data), width):
        chunk = data[off: off + width]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        out.append(f"{off:04x}  {hexes:<{width * 3 - 1}}  {text}")
    return out


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def decode_headers(data: bytes) -> list[str]:
    """One line per header, outermost first (Ethernet, or IP when the bytes start there)."""
    out: list[str] = []
    first = data[0] >> 4 if data else 0
    if len(data) >= 20 and first in (4, 6) and _looks_like_ip(data):
        _ip(data, out)
        return out
    if len(data) < 14:
        out.append(f"{len(data)} bytes: too short for Ethernet")
        return out
    etype = struct.unpack_from("!H", data, 12)[0]
    out.append(f"Ethernet {_mac(data[6:12])} > {_mac(data[0:6])} type 0x{etype:04x}")
    off = 14
    while etype in (0x8100, 0x88A8) and len(data) >= off + 4:
        tci, etype = struct.unpack_from("!HH", data, off)
        out.append(f"802.1Q vlan {tci & 0xFFF} prio {tci >> 13} type 0x{etype:04x}")
        off += 4
    rest = data[off:]
    if etype in (0x0800, 0x86DD):
        _ip(rest, out)
    elif etype == 0x0806 and len(rest) >= 28:
        op = struct.unpack_from("!H", rest, 6)[0]
        spa, tpa = ipaddress.ip_address(rest[14:18]), ipaddress.ip_address(rest[24:28])
        out.append(f"ARP {'request' if op == 1 else 'reply' if op == 2 else op}: "
                   f"{spa} ({_mac(rest[8:14])}) asks/tells {tpa}")
    else:
        out.append(f"ethertype 0x{etype:04x}: {len(rest)} bytes not decoded")
    return out


def _looks_like_ip(data: bytes) -> bool:
    if data[0] >> 4 == 4:
        return 20 <= (data[0] & 0xF) * 4 <= len(data)
    return len(data) >= 40


def _ip(data: bytes, out: list[str]) -> None:
    if not data:
        out.append("IP: no bytes")
        return
    version = data[0] >> 4
    if version == 4 and len(data) >= 20:
        ihl = (data[0] & 0xF) * 4
        total, ident, frag, ttl, proto = struct.unpack_from("!HHHBB", data, 2)
        src, dst = ipaddress.ip_address(data[12:16]), ipaddress.ip_address(data[16:20])
        flags = []
        if frag & 0x4000:
            flags.append("DF")
        if frag & 0x2000:
            flags.append("MF")
        out.append(f"IPv4 {src} > {dst} {protocol_name(proto)} len {total} id {ident} "
                   f"ttl {ttl} tos 0x{data[1]:02x}" + (f" [{','.join(flags)}]" if flags else "")
                   + (f" frag offset {(frag & 0x1FFF) * 8}" if frag & 0x1FFF else ""))
        if frag & 0x1FFF:
            return
        _l4(proto, data[ihl:], out)
    elif version == 6 and len(data) >= 40:
        plen, nxt, hops = struct.unpack_from("!HBB", data, 4)
        src, dst = ipaddress.ip_address(data[8:24]), ipaddress.ip_address(data[24:40])
        out.append(f"IPv6 {src} > {dst} {protocol_name(nxt)} payload {plen} hlim {hops}")
        off = 40
        # Extension headers: hop-by-hop, routing, destination options (8-octet units).
        while nxt in (0, 43, 60) and len(data) >= off + 8:
            nxt, hlen = data[off], (data[off + 1] + 1) * 8
            off += hlen
        _l4(nxt, data[off:], out)
    else:
        out.append(f"IP version {version}: {len(data)} bytes not decoded")


def _l4(proto: int, data: bytes, out: list[str]) -> None:
    if proto == 6 and len(data) >= 20:
        sport, dport, seq, ack, off_flags, win = struct.unpack_from("!HHIIHH", data)
        flags = ",".join(flag_names(off_flags & 0xFF)) or "none"
        hlen = (off_flags >> 12) * 4
        out.append(f"TCP {sport} > {dport} [{flags}] seq {seq} ack {ack} win {win} "
                   f"payload {max(len(data) - hlen, 0)}")
    elif proto == 17 and len(data) >= 8:
        sport, dport, length = struct.unpack_from("!HHH", data)
        out.append(f"UDP {sport} > {dport} len {length}")
    elif proto in (1, 58) and len(data) >= 4:
        out.append(f"{'ICMP' if proto == 1 else 'ICMPv6'} type {data[0]} code {data[1]}")
    else:
        out.append(f"{protocol_name(proto)}: {len(data)} bytes not decoded")
