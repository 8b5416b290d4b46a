"""DNS answers as the tc program saw them: id, name, type, response code, latency.

The kernel copies the question section raw (up to 128 bytes); names are
decoded here, where a Python loop over labels costs nothing next to the
per-packet path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# RFC 1035 / 6895 response codes.
RCODES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE",
}
QTYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
    33: "SRV", 65: "HTTPS", 255: "ANY",
}


@dataclass(slots=True)
class DnsAnswer:
    """One response matched to its query."""

    id: int
    name: str
    qtype: str
    rcode: str
    latency_ns: int
    ts_ns: int
    flags: int
    carried: bool = False  # waited one interval for its flow record

    @property
    def errno(self) -> int:
        """The response code as a number (0 is NOERROR), as netobserv's DnsErrno."""
        return self.flags & 0x0F


def parse_question(raw: bytes) -> tuple[str, str]:
    """(name, type) of the first question; type is "" when it was cut off."""
    labels: list[str] = []
    i = 0
    while i < len(raw):
        n = raw[i]
        if n == 0:
            i += 1
            break
        if n & 0xC0 or i + 1 + n > len(raw):
            # A compression pointer has no place in a question; a cut name ends here.
            return ".".join(labels), ""
        labels.append(raw[i + 1 : i + 1 + n].decode("ascii", errors="replace"))
        i += 1 + n
    else:
        return ".".join(labels), ""
    if i + 2 <= len(raw):
        qtype = int.from_bytes(raw[i : i + 2], "big")
        return ".".join(labels) or ".", QTYPES.get(qtype, str(qtype))
    return ".".join(labels) or ".", ""


def decode_answer(ev: np.void) -> DnsAnswer:
    raw = bytes(ev["qname"])[: int(ev["qname_len"])]
    name, qtype = parse_question(raw)
    flags = int(ev["dns_flags"])
    return DnsAnswer(
        id=int(ev["dns_id"]), name=name, qtype=qtype, rcode=RCODES.get(flags & 0x0F,
                                                                       str(flags & 0x0F)),
        latency_ns=int(ev["latency_ns"]), ts_ns=int(ev["ts_ns"]), flags=flags,
    )
