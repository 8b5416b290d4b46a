"""TLS ClientHello and ServerHello, parsed from the first bytes of their TCP segment.

The tc program copies the first TLS_MAX bytes of a segment that starts a TLS
handshake record; a hello cut short there still yields what came before the cut
(SNI comes early in every common client's extensions). What is read:

- ClientHello: the server name (SNI), the versions offered (supported_versions, else
  the legacy version) and the ALPN protocols;
- ServerHello: the version chosen (supported_versions, else the legacy version) and
  the cipher suite.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VERSIONS = {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2",
            0x0304: "TLS 1.3"}

CIPHERS = {
    0x1301: "TLS_AES_128_GCM_SHA256", 0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256", 0x1304: "TLS_AES_128_CCM_SHA256",
    0xC02B: "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    0xC02C: "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    0xC02F: "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    0xC030: "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    0xCCA8: "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    0xCCA9: "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    0x009C: "TLS_RSA_WITH_AES_128_GCM_SHA256", 0x009D: "TLS_RSA_WITH_AES_256_GCM_SHA384",
    0xC013: "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", 0xC014: "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    0x002F: "TLS_RSA_WITH_AES_128_CBC_SHA", 0x0035: "TLS_RSA_WITH_AES_256_CBC_SHA",
    0x009E: "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256", 0x009F: "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
}

EXT_SNI, EXT_ALPN, EXT_SUPPORTED_VERSIONS = 0, 16, 43


def version_name(v: int) -> str:
    return VERSIONS.get(v, f"0x{v:04x}")


def cipher_name(c: int) -> str:
    return CIPHERS.get(c, f"0x{c:04x}")


def _grease(v: int) -> bool:
    """RFC 8701 reserved values (0x?a?a) that clients offer to keep servers honest."""
    return (v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)


@dataclass(frozen=True, slots=True)
class Hello:
    """What one hello said; fields the hello does not carry are empty."""

    kind: str  # client | server
    sni: str = ""
    versions: tuple[str, ...] = ()  # offered (client) or chosen (server, one)
    alpn: tuple[str, ...] = ()
    cipher: str = ""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise IndexError
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack("!H", self.take(2))[0]
        return value

    def vec(self, size_bytes: int) -> bytes:
        n = self.u8() if size_bytes == 1 else self.u16()
        return self.take(n)


def parse(data: bytes) -> Hello | None:
    """A ClientHello or ServerHello from the start of a TLS record, or None."""
    if len(data) < 9 or data[0] != 0x16 or data[1] != 0x03 or data[5] not in (1, 2):
        return None
    kind = "client" if data[5] == 1 else "server"
    r = _Reader(data[9:])  # record header (5) + handshake type (1) + length (3)
    sni, cipher = "", ""
    alpn: tuple[str, ...] = ()
    versions: tuple[str, ...] = ()
    try:
        legacy = r.u16()
        versions = (version_name(legacy),)
        r.take(32)  # random
        r.vec(1)  # session id
        if kind == "client":
            r.vec(2)  # cipher suites
            r.vec(1)  # compression methods
        else:
            cipher = cipher_name(r.u16())
            r.u8()  # compression method
        ext_len = r.u16() if len(r.data) - r.pos >= 2 else 0
    except IndexError:
        return Hello(kind, versions=versions, cipher=cipher) if versions else None
    # Extensions: read as far as the captured bytes go.
    ext = _Reader(r.data[r.pos:r.pos + ext_len])
    try:
        while ext.pos < len(ext.data):
            etype, body = ext.u16(), ext.vec(2)
            b = _Reader(body)
            if etype == EXT_SNI and kind == "client":
                names = _Reader(b.vec(2))
                while names.pos < len(names.data):
                    name_type, name = names.u8(), names.vec(2)
                    if name_type == 0:
                        sni = name.decode("ascii", errors="replace")
                        break
            elif etype == EXT_ALPN:
                protos = _Reader(b.vec(2))
                found = []
                while protos.pos < len(protos.data):
                    found.append(protos.vec(1).decode("ascii", errors="replace"))
                alpn = tuple(found)
            elif etype == EXT_SUPPORTED_VERSIONS:
                if kind == "client":
                    raw = b.vec(1)
                    offered = [int.from_bytes(raw[i:i + 2], "big")
                               for i in range(0, len(raw) - 1, 2)]
                    versions = tuple(version_name(v) for v in offered if not _grease(v))
                else:
                    versions = (version_name(b.u16()),)
    except IndexError:
        pass  # cut short by the capture: what came before stands
    return Hello(kind, sni=sni, versions=versions, alpn=alpn, cipher=cipher)
