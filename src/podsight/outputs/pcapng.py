"""pcapng blocks, as stock Wireshark and tshark read them (draft-ietf-opsawg-pcapng).

A capture file is a Section Header Block, then Interface Description
Blocks (one per captured interface, named after the pod it belongs to),
then packets (Enhanced Packet Blocks) interleaved with Name Resolution
Blocks (pod, service and node names for the addresses seen), Decryption
Secrets Blocks (TLS key logs) and, at the end of an interface, Interface
Statistics Blocks (packets received and dropped). Blocks are built here as
bytes; :class:`PcapngWriter` only appends whole blocks, so a file cut at
any block boundary is valid.

Little-endian throughout (the byte-order magic says so; readers swap as
needed). Every block is padded to 4 bytes and carries its length at both
ends.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SHB, IDB, EPB, NRB, ISB, DSB = 0x0A0D0D0A, 0x00000001, 0x00000006, 0x00000004, 0x00000005, 0x0A
BYTE_ORDER_MAGIC = 0x1A2B3C4D
LINKTYPE_ETHERNET = 1
TLS_KEY_LOG = 0x544C534B  # "TLSK": NSS key log format

# Option codes.
OPT_END, OPT_COMMENT = 0, 1
SHB_HARDWARE, SHB_OS, SHB_USERAPPL = 2, 3, 4
IF_NAME, IF_DESCRIPTION, IF_TSRESOL, IF_FILTER, IF_OS = 2, 3, 9, 11, 12
EPB_FLAGS = 2
ISB_STARTTIME, ISB_ENDTIME, ISB_IFRECV, ISB_IFDROP, ISB_FILTERACCEPT, ISB_OSDROP = 2, 3, 4, 5, 6, 7
NRB_IPV4, NRB_IPV6, NRB_END = 1, 2, 0

#: epb_flags direction bits (as the capturing interface, here the pod's eth0, sees it).
INBOUND, OUTBOUND = 0b01, 0b10


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + _pad(value)


def options(items: Iterable[tuple[int, bytes]]) -> bytes:
    """An options list, ended by opt_endofopt (none at all when there are none)."""
    body = b"".join(option(code, value) for code, value in items)
    return body + struct.pack("<HH", OPT_END, 0) if body else b""


def block(kind: int, body: bytes) -> bytes:
    """A whole block: type, total length, body (padded), total length again."""
    body = _pad(body)
    total = len(body) + 12
    return struct.pack("<II", kind, total) + body + struct.pack("<I", total)


def section_header(application: str, os_name: str = "", hardware: str = "") -> bytes:
    opts = [(SHB_USERAPPL, application.encode())]
    if os_name:
        opts.append((SHB_OS, os_name.encode()))
    if hardware:
        opts.append((SHB_HARDWARE, hardware.encode()))
    return block(SHB, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + options(opts))


def interface_description(name: str, description: str, snaplen: int,
                          filter_text: str = "", linktype: int = LINKTYPE_ETHERNET) -> bytes:
    """An interface with nanosecond timestamps (if_tsresol 9)."""
    opts = [(IF_NAME, name.encode()), (IF_DESCRIPTION, description.encode()),
            (IF_TSRESOL, bytes([9]))]
    if filter_text:
        opts.append((IF_FILTER, b"\0" + filter_text.encode()))  # 0: a libpcap filter string
    return block(IDB, struct.pack("<HHI", linktype, 0, snaplen) + options(opts))


def enhanced_packet(interface: int, ts_ns: int, data: bytes, original_len: int,
                    flags: int = 0, comment: str = "") -> bytes:
    """One packet: ``data`` is what was captured (cut at the snap length), ``original_len``
    what was on the wire."""
    opts: list[tuple[int, bytes]] = []
    if flags:
        opts.append((EPB_FLAGS, struct.pack("<I", flags)))
    if comment:
        opts.append((OPT_COMMENT, comment.encode()))
    head = struct.pack("<IIIII", interface, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(data),
                       original_len)
    return block(EPB, head + _pad(data) + options(opts))


def name_resolution(names: Sequence[tuple[str, Sequence[str]]]) -> bytes:
    """Addresses and their names (``10.244.0.5`` -> ``backend.shop``)."""
    import ipaddress

    records = b""
    for addr, hostnames in names:
        ip = ipaddress.ip_address(addr)
        kind = NRB_IPV4 if ip.version == 4 else NRB_IPV6
        value = ip.packed + b"".join(n.encode() + b"\0" for n in hostnames)
        records += struct.pack("<HH", kind, len(value)) + _pad(value)
    records += struct.pack("<HH", NRB_END, 0)
    return block(NRB, records)


def decryption_secrets(secrets: bytes, kind: int = TLS_KEY_LOG) -> bytes:
    """TLS key log lines (SSLKEYLOGFILE format): Wireshark decrypts with no key file."""
    return block(DSB, struct.pack("<II", kind, len(secrets)) + _pad(secrets))


def interface_statistics(interface: int, ts_ns: int, received: int, dropped: int,
                         start_ns: int = 0, end_ns: int = 0, accepted: int | None = None
                         ) -> bytes:
    """Packets the kernel saw (``received``) and could not deliver (``dropped``)."""
    def ts(ns: int) -> bytes:
        return struct.pack("<II", ns >> 32, ns & 0xFFFFFFFF)

    opts = [(ISB_IFRECV, struct.pack("<Q", received)), (ISB_IFDROP, struct.pack("<Q", dropped))]
    if start_ns:
        opts.append((ISB_STARTTIME, ts(start_ns)))
    if end_ns:
        opts.append((ISB_ENDTIME, ts(end_ns)))
    if accepted is not None:
        opts.append((ISB_FILTERACCEPT, struct.pack("<Q", accepted)))
    return block(ISB, struct.pack("<I", interface) + ts(ts_ns) + options(opts))


@dataclass
class Interface:
    """One interface of the file: its index in the section, and whether it is still open."""

    index: int
    name: str
    description: str
    closed: bool = False


class PcapngWriter:
    """Appends whole blocks to a file (or stdout), written with one ``os.write`` each batch.

    A batch either goes out whole or, on a regular file, is cut back to where it
    began (see :func:`podsight.outputs.stream.write_all`): the file ends on a
    block boundary, valid at every moment.
    """

    def __init__(self, fd: int, application: str) -> None:
        self.fd = fd
        self.bytes = 0
        self.interfaces: list[Interface] = []
        self._pending: list[bytes] = [section_header(application, os_name=os.uname().sysname)]

    def add_interface(self, name: str, description: str, snaplen: int,
                      filter_text: str = "") -> Interface:
        iface = Interface(len(self.interfaces), name, description)
        self.interfaces.append(iface)
        self._pending.append(interface_description(name, description, snaplen, filter_text))
        return iface

    def add(self, data: bytes) -> None:
        """Queue blocks (already built) for the next :meth:`flush`."""
        self._pending.append(data)

    def flush(self) -> None:
        if not self._pending:
            return
        from podsight.outputs.stream import write_fd

        data = b"".join(self._pending)
        self._pending = []
        write_fd(self.fd, data)
        self.bytes += len(data)
