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

import contextlib
import os
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from podsight.outputs.directio import DirectFile, Stage, open_direct

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


# -- the capture file output -------------------------------------------------------------------

EPB_HEADER = 28


class KeyLog:
    """A TLS key log (SSLKEYLOGFILE format) followed as the application appends to it.

    ``path`` is read on the host if it exists there; otherwise it is taken as a
    path inside a selected pod and read through ``/proc/PID/root`` of a process
    in that pod's network namespace (``netns()`` lists them), so a key log a
    container writes needs no copying out. Only whole lines are taken.
    """

    def __init__(self, path: str, netns: Callable[[], Iterable[int]] = tuple) -> None:
        self.path = path
        self.netns = netns
        self.keys = b""
        self._offset = 0
        self._source: str | None = None

    def _locate(self) -> str | None:
        if os.path.exists(self.path):
            return self.path
        from podsight.net.netns import pids_in_netns

        for inode in self.netns():
            for pid in pids_in_netns(inode):
                candidate = f"/proc/{pid}/root/{self.path.lstrip('/')}"
                if os.path.exists(candidate):
                    return candidate
        return None

    def read_new(self) -> bytes:
        """Key log lines added since the last call."""
        if self._source is None:
            self._source = self._locate()
            if self._source is None:
                return b""
        try:
            with open(self._source, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            self._source = None  # its process went away; look again next time
            return b""
        end = data.rfind(b"\n") + 1
        new = data[:end]
        self._offset += end
        self.keys += new
        return new


@dataclass
class _File:
    fd: int
    path: str
    direct: DirectFile | None = None  # written around the page cache (see .directio)
    bytes: int = 0
    declared: int = 0  # interfaces described so far (ids 0..declared-1)
    stats_written: set[int] = field(default_factory=set)
    names: set[str] = field(default_factory=set)


class PcapngOutput:
    """Frames to one pcapng file, a ring of files, or stdout.

    Every file is complete on its own: a Section Header Block, a description
    of every interface (ids are the kernel's, so a rotated file describes the
    interfaces that closed before it too), the names and TLS keys seen so
    far, then the packets. Name Resolution Blocks and Decryption Secrets
    Blocks are written before the packets they apply to (tshark reads them in
    order); an interface's statistics block is written once per file, when
    it closes or when the file ends. Files are created with mode 0600: they
    hold payloads. Writes are whole blocks, so a file cut at any moment
    (Ctrl-C, a kill, a full disk) ends on a block boundary.
    """

    def __init__(self, target: str, *, application: str = "podsight", force: bool = False,
                 ring: int | None = None, ring_size: int | None = None,
                 max_packets: int | None = None, comments: bool = False,
                 keylog: KeySource | None = None,
                 name_of: Callable[[str], str | None] = lambda addr: None,
                 notation_of: Callable[[str], str] = lambda addr: addr,
                 direct: bool = False) -> None:
        self.target = target
        self.direct = direct
        self._stage: Stage | None = None  # O_DIRECT's staging buffer, shared by ring files
        self.application = application
        self.force = force
        self.ring = ring
        self.ring_size = ring_size
        self.max_packets = max_packets
        self.comments = comments
        self.keylog = keylog
        self.name_of = name_of
        self.notation_of = notation_of
        self.bytes = 0
        self.packets = 0
        self.full = ""
        self.files: list[str] = []
        self._seq = 0
        self._names: dict[str, str] = {}  # address -> name, every one named so far
        self._unnamed: set[bytes] = set()  # packed addresses that have no name
        self._file: _File | None = None
        self._interfaces: Sequence[Any] = ()
        self._open_next()

    # -- files ---------------------------------------------------------------------------

    def _path(self, seq: int) -> str:
        if self.ring_size is None:
            return self.target
        root, ext = os.path.splitext(self.target)
        return f"{root}.{seq:05d}{ext or '.pcapng'}"

    def _open_next(self) -> None:
        if self.target == "-":
            fd = 1
            path = "-"
        else:
            path = self._path(self._seq)
            flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
            flags |= os.O_TRUNC if self.force else os.O_EXCL
            fd = os.open(path, flags, 0o600)
            os.fchmod(fd, 0o600)  # an existing file overwritten with --force keeps no wider mode
        self._seq += 1
        self._file = _File(fd, path, self._open_direct(fd, path))
        self.files.append(path)
        if self.ring is not None:
            while len(self.files) > self.ring:
                old = self.files.pop(0)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(old)
        head = [section_header(self.application, os_name=os.uname().sysname)]
        head += self._describe(self._interfaces)
        if self._names:
            head.append(name_resolution([(a, [n]) for a, n in self._names.items()]))
            self._file.names.update(self._names)
        if self.keylog is not None and self.keylog.keys:
            head.append(decryption_secrets(self.keylog.keys))
        self._put(b"".join(head))

    def _open_direct(self, fd: int, path: str) -> DirectFile | None:
        if not self.direct or fd == 1:
            return None
        if self._stage is None:
            self._stage = Stage()
        return open_direct(fd, path, self._stage)

    def _close_file(self, interfaces: Sequence[Any]) -> None:
        f = self._file
        if f is None:
            return
        self._file = None
        try:
            self._put_to(f, b"".join(self._statistics(f, interfaces, everyone=True)))
        finally:
            if f.direct is not None:
                f.direct.close()
            elif f.fd != 1:
                os.close(f.fd)

    def _put(self, data: bytes) -> None:
        assert self._file is not None
        self._put_to(self._file, data)

    def _put_to(self, f: _File, data: bytes) -> None:
        if not data:
            return
        if f.direct is not None:
            f.direct.append(data)
        else:
            from podsight.outputs.stream import write_fd

            write_fd(f.fd, data)
        f.bytes += len(data)
        self.bytes += len(data)

    # -- blocks ---------------------------------------------------------------------------

    def _describe(self, interfaces: Sequence[Any]) -> list[bytes]:
        f = self._file
        assert f is not None
        out = []
        for iface in interfaces[f.declared:]:
            out.append(interface_description(iface.name, iface.description, iface.snaplen,
                                             iface.filter, iface.linktype))
        f.declared = max(f.declared, len(interfaces))
        return out

    def _statistics(self, f: _File, interfaces: Sequence[Any], everyone: bool) -> list[bytes]:
        out = []
        now = time.time_ns()
        for iface in interfaces[: f.declared]:
            if iface.id in f.stats_written or not (everyone or iface.closed):
                continue
            f.stats_written.add(iface.id)
            out.append(interface_statistics(iface.id, iface.end_ns or now, iface.received,
                                            iface.dropped, iface.start_ns,
                                            iface.end_ns or now, iface.received))
        return out

    def _new_names(self, frames: Any, interfaces: Sequence[Any]) -> bytes:
        """An NRB for the addresses in ``frames`` that have a name and none in this file."""
        f = self._file
        assert f is not None
        fresh: list[tuple[str, Sequence[str]]] = []
        for packed in packet_addresses(frames, [i.linktype for i in interfaces]):
            if packed in self._unnamed:
                continue
            import ipaddress

            addr = str(ipaddress.ip_address(packed))
            if addr in f.names:
                continue
            name = self._names.get(addr) or self.name_of(addr)
            if not name:
                self._unnamed.add(packed)
                continue
            self._names[addr] = name
            f.names.add(addr)
            fresh.append((addr, [name]))
        return name_resolution(fresh) if fresh else b""

    # -- FrameOutput -----------------------------------------------------------------------

    def write_frames(self, frames: Any, interfaces: Sequence[Any]) -> int:
        self._interfaces = interfaces
        if self._file is None:
            return 0
        head = self._describe(interfaces)
        if self.keylog is not None:
            keys = self.keylog.read_new()
            if keys:
                head.append(decryption_secrets(keys))
        n = len(frames)
        if self.max_packets is not None:
            n = min(n, self.max_packets - self.packets)
        if n < len(frames):
            frames = _Slice(frames, 0, n)
        if n:
            head.append(self._new_names(frames, interfaces))
        self._put(b"".join(head))
        start = 0
        while start < n:
            stop = n
            if self.ring_size is not None:
                room = self.ring_size - self._file.bytes
                ends = np.cumsum(frames.lengths[start:n])
                stop = start + max(1, int(np.searchsorted(ends, room, side="right")))
            self._write_packets(frames, start, stop)
            start = stop
            if self.ring_size is not None and self._file.bytes >= self.ring_size:
                self._close_file(interfaces)
                self._open_next()
        # Interfaces that went away: their statistics after their last packets.
        self._put(b"".join(self._statistics(self._file, interfaces, everyone=False)))
        if self._file.direct is not None:
            self._file.direct.settle()  # called every turn, frames or not: see .directio
        self.packets += n
        if self.max_packets is not None and self.packets >= self.max_packets:
            self.full = "--max-packets reached"
        return n

    def _write_packets(self, frames: Any, start: int, stop: int) -> None:
        f = self._file
        assert f is not None
        if self.comments:
            self._put(b"".join(self._commented(frames.block(i)) for i in range(start, stop)))
            return
        from podsight.outputs.stream import writev_all

        iov = frames.iovecs(start, stop)
        n = f.direct.append_iov(iov) if f.direct is not None else writev_all(f.fd, iov)
        f.bytes += n
        self.bytes += n

    def _commented(self, epb: bytes) -> bytes:
        return commented(epb, self.notation_of)

    def close(self, interfaces: Sequence[Any]) -> None:
        self._interfaces = interfaces
        try:
            if self._file is not None:
                self._put(b"".join(self._describe(interfaces)))
            self._close_file(interfaces)
        finally:
            stage, self._stage = self._stage, None
            if stage is not None:
                stage.close()


def commented(epb: bytes, notation_of: Callable[[str], str]) -> bytes:
    """The Enhanced Packet Block with a comment naming both ends
    (``p/ns/pod:port -> s/ns/svc:port``); as it was if the packet is not IP.
    Also what ``podsight agent`` does to each block for ``packets --comments``: the
    names are the node's, the file is the client's."""
    caplen = struct.unpack_from("<I", epb, 20)[0]
    ends = packet_ends(epb[EPB_HEADER: EPB_HEADER + caplen])
    if ends is None:
        return epb
    (src, sport), (dst, dport) = ends
    text = (f"{notation_of(src)}:{sport} -> {notation_of(dst)}:{dport}").encode()
    body = epb[8:-8] + option(OPT_COMMENT, text) + struct.pack("<HH", OPT_END, 0)
    total = len(body) + 12
    return struct.pack("<II", EPB, total) + body + struct.pack("<I", total)


class KeySource(Protocol):
    """Where TLS keys come from: a :class:`KeyLog` followed here, or the keys agents
    send (``kubectl podsight packets --tls-keylog``)."""

    @property
    def keys(self) -> bytes:
        """Every key line so far (each file of a ring starts with them all)."""
        ...

    def read_new(self) -> bytes:
        """Key lines added since the last call."""
        ...


class _Slice:
    """The first blocks of a :class:`podsight.pipeline.Frames` (``--max-packets``), or
    (``which``: indices) some of them, for reading only."""

    def __init__(self, frames: Any, start: int, stop: int,
                 which: np.ndarray | None = None) -> None:
        pick: Any = slice(start, stop) if which is None else which
        self.data = frames.data
        self.offsets = frames.offsets[pick]
        self.lengths = frames.lengths[pick]
        pairs = getattr(frames, "ipv4", None)
        self.ipv4 = None if pairs is None else (pairs[0][pick], pairs[1][pick])
        self._frames = frames
        self._start = start

    def __len__(self) -> int:
        return len(self.offsets)

    def iovecs(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        stop = len(self) if stop is None else stop
        return self._frames.iovecs(self._start + start, self._start + stop)  # type: ignore[no-any-return]

    def block(self, i: int) -> bytes:
        return self._frames.block(self._start + i)  # type: ignore[no-any-return]


def packet_addresses(frames: Any, linktypes: Sequence[int]) -> list[bytes]:
    """The distinct IPv4 and IPv6 addresses (packed) in the packets of EPBs ``frames``.

    Vectorized over the batch, a few numpy gathers whatever its size: the
    capture length, EtherType (or IP version, on raw-IP interfaces) and the
    address bytes are read where the blocks lie, in 16-bit words (blocks
    start 4-aligned and every field read is 2-aligned), each (source,
    destination) pair folded into integers, and only the distinct ones (a
    handful per batch) become bytes. The interface id is read only when
    interfaces differ in link type.
    """
    if not len(frames):
        return []
    pairs = getattr(frames, "ipv4", None)
    if pairs is not None and set(linktypes) <= {LINKTYPE_ETHERNET}:
        return _kernel_addresses(frames, pairs, linktypes)
    data = frames.data
    offs = frames.offsets.astype(np.int64)
    fast = _evenly_spaced(frames, linktypes)
    if fast is not None:
        return fast
    words = data[: (len(data) // 4) * 4].view(np.uint32)
    if (set(linktypes) or {LINKTYPE_ETHERNET}) == {LINKTYPE_ETHERNET}:
        return _ethernet_addresses(data, words, offs)
    return _general_addresses(data, words, offs, linktypes)


def _kernel_addresses(frames: Any, pairs: tuple[np.ndarray, np.ndarray],
                      linktypes: Sequence[int]) -> list[bytes]:
    """The addresses the kernel read for each block (Ethernet + IPv4), and those of the
    other blocks (IPv6, ARP, ...) read from the blocks themselves."""
    src, dst = pairs
    known = (src | dst) != 0
    out = set(_address_pairs(src[known], dst[known])) if known.any() else set()
    if not known.all():
        rest = _Slice(frames, 0, len(frames), np.flatnonzero(~known))
        rest.ipv4 = None
        out.update(packet_addresses(rest, linktypes))
    return sorted(out)


def _general_addresses(data: np.ndarray, words: np.ndarray, offs: np.ndarray,
                       linktypes: Sequence[int]) -> list[bytes]:
    """Any mix of Ethernet and raw-IP interfaces, IPv4 and IPv6, in 16-bit gathers."""
    half = data[: (len(data) // 2) * 2].view(np.uint16)
    caplen = words[(offs + 20) // 4].astype(np.int64)
    kinds = set(linktypes) or {LINKTYPE_ETHERNET}
    if len(kinds) == 1:
        ether = np.full(len(offs), LINKTYPE_ETHERNET in kinds)
    else:
        lts = np.asarray(linktypes, dtype=np.int64)
        ifid = words[(offs + 8) // 4].astype(np.int64)
        ether = lts[np.minimum(ifid, len(lts) - 1)] == LINKTYPE_ETHERNET
    start = offs + EPB_HEADER
    l2 = np.where(ether, 14, 0)
    l3 = start + l2
    version = np.where(caplen >= l2 + 20, data[l3] >> 4, 0)
    if ether.any():
        ethertype = half[(start + 12) // 2]  # big-endian on the wire: 0x0008 is IPv4
        version = np.where(ether & (ethertype != 0x0008) & (ethertype != 0xDD86), 0, version)
    out: list[bytes] = []
    v4 = version == 4
    if v4.any():
        at = (l3[v4] + 12) // 2  # source, then destination: four 16-bit words
        src = half[at].astype(np.uint32) | (half[at + 1].astype(np.uint32) << np.uint32(16))
        dst = half[at + 2].astype(np.uint32) | (half[at + 3].astype(np.uint32) << np.uint32(16))
        out += _address_pairs(src, dst)
    v6 = (version == 6) & (caplen >= l2 + 40)
    if v6.any():
        at = (l3[v6] + 8) // 2
        quarters = [_gather_words(half, at + 4 * k, 4) for k in range(4)]
        mixed = quarters[0]
        for q in quarters[1:]:
            mixed = mixed * np.uint64(0x9E3779B97F4A7C15) ^ q
        _, first = np.unique(mixed, return_index=True)
        for i in first.tolist():
            raw = b"".join(int(q[i]).to_bytes(8, "big") for q in quarters)
            out += [raw[:16], raw[16:]]
    return sorted(set(out))


def _ethernet_addresses(data: np.ndarray, words: np.ndarray, offs: np.ndarray) -> list[bytes]:
    """IPv4 addresses of Ethernet blocks at any offsets (whole packets: blocks lie far apart,
    so each gather is a pass of cache misses), in four 32-bit gathers: the capture length,
    the word holding the EtherType and the IP version (bytes 40-43 of the block), and the
    two addresses (bytes 54-61: 2 mod 4, read through a view that starts 2 bytes in). A
    batch with IPv6 in it takes the general path."""
    caplen = words[(offs + 20) // 4]
    word = words[(offs + 40) // 4]
    ethertype = word & np.uint32(0xFFFF)  # as stored: 0x0008 is IPv4
    if (ethertype == 0xDD86).any():
        return _general_addresses(data, words, offs, [LINKTYPE_ETHERNET])
    v4 = (ethertype == 0x0008) & (caplen >= 34) & ((word >> np.uint32(20)) & np.uint32(0xF) == 4)
    if not v4.any():
        return []
    shifted = data[2: 2 + ((len(data) - 2) // 4) * 4].view(np.uint32)
    at = (offs[v4] + 52) // 4
    return _address_pairs(shifted[at], shifted[at + 1])


def _evenly_spaced(frames: Any, linktypes: Sequence[int]) -> list[bytes] | None:
    """The common case, faster: Ethernet only, blocks at a fixed stride (a ring of fixed-size
    records), IPv4 or not IP. Each field is a strided view of the batch (no index arrays, no
    copy: the ring's lines are read once), the two addresses of a packet are folded into one
    integer in an order that does not depend on the direction, and runs of equal pairs (a
    flow's packets come in runs) are dropped before the hashing dedupe, so the work per
    packet is a handful of vector operations. None when the batch is not like that (then
    the general path runs)."""
    offs = frames.offsets
    n = len(offs)
    if set(linktypes) != {LINKTYPE_ETHERNET} or n < 2:
        return None
    stride = int(offs[1] - offs[0])
    first = int(offs[0])
    if stride < 64 or stride % 4 or int(offs[-1]) != first + stride * (n - 1):
        return None
    data = frames.data
    if first + stride * n > len(data):
        return None

    def column(at: int, dtype: str) -> np.ndarray:
        return np.ndarray((n,), dtype=dtype, buffer=data, offset=first + at, strides=(stride,))

    ethertype = column(EPB_HEADER + 12, "<u2")  # as stored: 0x0008 is IPv4, 0xDD86 IPv6
    if (ethertype == 0xDD86).any():
        return None
    v4 = (ethertype == 0x0008) & (column(20, "<u4") >= 34)
    if not v4.any():
        return []
    src, dst = column(EPB_HEADER + 26, "<u4"), column(EPB_HEADER + 30, "<u4")
    if not v4.all():
        src, dst = src[v4], dst[v4]
    return _address_pairs(src, dst)


def _address_pairs(src: np.ndarray, dst: np.ndarray) -> list[bytes]:
    """The distinct addresses of IPv4 (source, destination) pairs, as read from memory
    (little-endian uint32 of the network-order bytes)."""
    lo, hi = np.minimum(src, dst).astype(np.uint64), np.maximum(src, dst).astype(np.uint64)
    pairs = (hi << np.uint64(32)) | lo
    if len(pairs) > 1:
        pairs = pairs[np.concatenate(([True], pairs[1:] != pairs[:-1]))]
    out: set[bytes] = set()
    for key in np.unique(pairs).tolist():
        out.add((key & 0xFFFFFFFF).to_bytes(4, "little"))
        out.add((key >> 32).to_bytes(4, "little"))
    return sorted(out)


def _gather_words(half: np.ndarray, at: np.ndarray, n: int) -> np.ndarray:
    """``n`` (<= 4) 16-bit words from index ``at`` on, as one big-endian uint64 each."""
    value: np.ndarray = half[at].byteswap().astype(np.uint64)
    for k in range(1, n):
        value = (value << np.uint64(16)) | half[at + k].byteswap()
    return value


def packet_ends(frame: bytes) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """((src, sport), (dst, dport)) of an Ethernet frame carrying IP (ports 0 for non-TCP/UDP)."""
    import ipaddress

    if len(frame) < 14:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    ip = frame[14:]
    if ethertype == 0x0800 and len(ip) >= 20:
        ihl = (ip[0] & 0xF) * 4
        proto = ip[9]
        src, dst = ipaddress.ip_address(ip[12:16]), ipaddress.ip_address(ip[16:20])
        l4 = ip[ihl:]
    elif ethertype == 0x86DD and len(ip) >= 40:
        proto = ip[6]
        src, dst = ipaddress.ip_address(ip[8:24]), ipaddress.ip_address(ip[24:40])
        l4 = ip[40:]
    else:
        return None
    sport = dport = 0
    if proto in (6, 17, 132) and len(l4) >= 4:
        sport, dport = struct.unpack_from("!HH", l4)
    return (str(src), sport), (str(dst), dport)
