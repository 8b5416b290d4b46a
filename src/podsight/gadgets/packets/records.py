"""Packets as records for the live view, decoded from the blocks the kernel wrote.

The capture path never decodes a packet: blocks go to the file as they lie.
The live view samples (see :meth:`podsight.outputs.live.LiveFeed.offer`): only
the blocks it picks are decoded here. The Enhanced Packet Block headers of
those are read with numpy in one go (interface, timestamp, lengths, and the
``epb_flags`` direction the kernel put after the data); the link, network
and transport headers of each are then read from its captured bytes.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from podsight.gadgets.packets.filter import LINKTYPE_RAW

if TYPE_CHECKING:
    from podsight.identity.endpoint import Endpoint
    from podsight.pipeline import CaptureInterface, Frames

EPB_HDR = 28
ETH_P_IP, ETH_P_IPV6, ETH_P_ARP = 0x0800, 0x86DD, 0x0806
VLAN_TYPES = (0x8100, 0x88A8)
ETHERTYPES = {ETH_P_ARP: "arp", 0x88CC: "lldp", 0x8035: "rarp"}
# TCP header flag bits, as podsight.net.protocols.flag_names reads them (the low 8 bits).
_TCP_FLAG_MASK = 0xFF


@dataclass(slots=True, eq=False)
class PacketRecord:
    """One captured packet, as the live view shows it."""

    ts_ns: int  # kernel time (CLOCK_BOOTTIME ns), for identity
    wall_ns: int  # the block's timestamp (wall clock, ns)
    interface: str  # the pcapng interface's name: p/ns/pod, n/node/if, netns/name/eth0
    direction: str  # ingress or egress, as the interface sees it ("" when unknown)
    ip: int  # 4, 6, or 0 (not IP)
    proto: int  # IP protocol number (0 when not IP)
    protocol: str  # tcp, udp, icmp, ..., arp, or the EtherType in hex
    saddr: str  # source IP (or MAC when not IP)
    sport: int
    daddr: str
    dport: int
    length: int  # on the wire
    caplen: int  # captured (<= snaplen)
    tcp_flags: int
    data: bytes  # the captured bytes, link layer first (none for raw IP devices)
    src: Endpoint | None = None
    dst: Endpoint | None = None


def headers(frames: Frames, which: np.ndarray) -> np.ndarray:
    """Blocks ``which`` of ``frames``: (interface id, timestamp, caplen, length, flags)."""
    off = frames.offsets[which].astype(np.int64)
    raw = frames.data[off[:, None] + np.arange(EPB_HDR, dtype=np.int64)]
    words = np.ascontiguousarray(raw).view("<u4")
    out = np.zeros(len(off), dtype=[("iface", "<u4"), ("ts", "<u8"), ("caplen", "<u4"),
                                    ("len", "<u4"), ("flags", "<u4")])
    out["iface"] = words[:, 2]
    out["ts"] = (words[:, 3].astype(np.uint64) << np.uint64(32)) | words[:, 4]
    caplen = words[:, 5]
    out["caplen"] = caplen
    out["len"] = words[:, 6]
    # The first option after the data: epb_flags (code 2, length 4) when the block has it.
    opt = off + ((EPB_HDR + caplen.astype(np.int64) + 3) & ~3)
    block_end = off + frames.lengths[which].astype(np.int64)
    has = opt + 8 <= block_end
    at = np.where(has, opt, 0)
    code = frames.data[at].astype(np.uint32) | (frames.data[at + 1].astype(np.uint32) << 8)
    value = frames.data[at + 4].astype(np.uint32)
    out["flags"] = np.where(has & (code == 2), value, 0)
    return out


def decode(frames: Frames, which: np.ndarray, interfaces: Sequence[CaptureInterface],
           boot_offset_ns: int) -> list[PacketRecord]:
    """Records for blocks ``which`` of ``frames`` (their bytes copied: the frames may go).

    ``boot_offset_ns``: wall clock minus CLOCK_BOOTTIME, to give each packet its kernel
    time for identity."""
    if not len(which):
        return []
    h = headers(frames, which)
    out = []
    data = frames.data
    for i, k in enumerate(which):
        start = int(frames.offsets[k]) + EPB_HDR
        caplen = int(h["caplen"][i])
        payload = data[start: start + caplen].tobytes()
        iface_id = int(h["iface"][i])
        iface = interfaces[iface_id] if iface_id < len(interfaces) else None
        flags = int(h["flags"][i]) & 3
        wall = int(h["ts"][i])
        linktype = iface.linktype if iface is not None else 1
        ip, proto, protocol, saddr, sport, daddr, dport, tcp = parse(payload, linktype)
        out.append(PacketRecord(
            ts_ns=wall - boot_offset_ns, wall_ns=wall,
            interface=iface.name if iface is not None else str(iface_id),
            direction={1: "ingress", 2: "egress"}.get(flags, ""),
            ip=ip, proto=proto, protocol=protocol, saddr=saddr, sport=sport, daddr=daddr,
            dport=dport, length=int(h["len"][i]), caplen=caplen, tcp_flags=tcp,
            data=payload))
    return out


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def parse(data: bytes, linktype: int = 1
          ) -> tuple[int, int, str, str, int, str, int, int]:
    """(ip, proto, protocol, saddr, sport, daddr, dport, tcp flags) of a packet's bytes."""
    from podsight.net.protocols import protocol_name

    if linktype == LINKTYPE_RAW:
        kind = {4: ETH_P_IP, 6: ETH_P_IPV6}.get(data[0] >> 4 if data else 0, 0)
        off = 0
        src_mac = dst_mac = ""
    else:
        if len(data) < 14:
            return 0, 0, "?", "", 0, "", 0, 0
        dst_mac, src_mac = _mac(data[0:6]), _mac(data[6:12])
        kind = int.from_bytes(data[12:14], "big")
        off = 14
        while kind in VLAN_TYPES and len(data) >= off + 4:
            kind = int.from_bytes(data[off + 2: off + 4], "big")
            off += 4
    if kind == ETH_P_IP and len(data) >= off + 20:
        ihl = (data[off] & 0x0F) * 4
        proto = data[off + 9]
        saddr = socket.inet_ntop(socket.AF_INET, data[off + 12: off + 16])
        daddr = socket.inet_ntop(socket.AF_INET, data[off + 16: off + 20])
        frag = int.from_bytes(data[off + 6: off + 8], "big") & 0x1FFF
        l4 = off + ihl if not frag else -1
        ip = 4
    elif kind == ETH_P_IPV6 and len(data) >= off + 40:
        proto = data[off + 6]
        saddr = socket.inet_ntop(socket.AF_INET6, data[off + 8: off + 24])
        daddr = socket.inet_ntop(socket.AF_INET6, data[off + 24: off + 40])
        l4 = off + 40
        ip = 6
    elif kind == ETH_P_ARP and len(data) >= off + 28:
        spa = socket.inet_ntop(socket.AF_INET, data[off + 14: off + 18])
        tpa = socket.inet_ntop(socket.AF_INET, data[off + 24: off + 28])
        return 0, 0, "arp", spa, 0, tpa, 0, 0
    else:
        name = ETHERTYPES.get(kind, f"0x{kind:04x}")
        return 0, 0, name, src_mac, 0, dst_mac, 0, 0
    sport = dport = tcp = 0
    if l4 >= 0 and proto in (6, 17, 132) and len(data) >= l4 + 4:
        sport, dport = struct.unpack_from("!HH", data, l4)
        if proto == 6 and len(data) >= l4 + 14:
            tcp = data[l4 + 13] & _TCP_FLAG_MASK
    return ip, proto, protocol_name(proto), saddr, sport, daddr, dport, tcp
