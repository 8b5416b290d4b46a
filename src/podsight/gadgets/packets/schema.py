"""A captured packet as the live view shows it.

packets writes no JSON and no SQLite: its output is the capture file (pcapng),
whose blocks the kernel builds, and tshark reads any field of it. These
records exist for the live view only (the CLI offers no ``--json``/``--sqlite``
for packets: ``GadgetSpec.record_files``), so every field is a table column
and none is a JSON key or an SQLite column. The view's detail pane decodes
``data`` (the captured bytes) as hex and headers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from podsight.gadgets.packets.records import PacketRecord
from podsight.net.protocols import PORT_PROTOCOLS, flag_names
from podsight.schema import Field, Schema, Sides, endpoint
from podsight.timefmt import Clock


def _has_port(r: PacketRecord) -> bool:
    return r.proto in PORT_PROTOCOLS


def _column(name: str, header: str, width: int, text: Callable[[PacketRecord], str], doc: str,
            *, default: bool = False, right: bool = False,
            total: Callable[[PacketRecord], int] | None = None) -> Field[Any]:
    return Field(name, header, width, text, None, (), right=right, default=default, doc=doc,
                 total=total)


def _view_only(f: Field[Any]) -> Field[Any]:
    """An identity field as a column only (no JSON key, no SQLite columns)."""
    return replace(f, json=None, sql=())


def _info(r: PacketRecord) -> str:
    if r.proto == 6:
        return ",".join(flag_names(r.tcp_flags))
    if r.caplen < r.length:
        return f"{r.caplen} of {r.length} bytes captured"
    return ""


def schema(clock: Clock) -> Schema[PacketRecord]:
    """Every column of a packet, in display order."""
    return Schema(
        fields=[
            _column("time", "TIME", 12, lambda r: clock.hms(r.wall_ns),
                    "when the packet passed tc (wall clock)", default=True),
            _column("interface", "IFACE", 18, lambda r: r.interface,
                    "the captured interface: p/ns/pod, n/node/ifname or netns/name/eth0",
                    default=True),
            _column("direction", "DIR", 7, lambda r: r.direction,
                    "ingress or egress, as the interface sees it", default=True),
            _column("ip", "IP", 2, lambda r: str(r.ip) if r.ip else "",
                    "IP version, 4 or 6 (empty when not IP)"),
            _column("proto", "PROTO", 6, lambda r: r.protocol,
                    "tcp, udp, icmp, ..., arp, or the EtherType", default=True),
            _column("saddr", "SADDR", 15, lambda r: r.saddr, "source address"),
            _column("sport", "SPORT", 5, lambda r: str(r.sport) if _has_port(r) else "",
                    "source port", right=True),
            _column("daddr", "DADDR", 15, lambda r: r.daddr, "destination address"),
            _column("dport", "DPORT", 5, lambda r: str(r.dport) if _has_port(r) else "",
                    "destination port", right=True),
            _view_only(endpoint("src", "SRC", "saddr", "sport", "source", has_port=_has_port)),
            _view_only(endpoint("dst", "DST", "daddr", "dport", "destination",
                                has_port=_has_port)),
            _column("length", "LEN", 6, lambda r: str(r.length), "bytes on the wire",
                    default=True, right=True, total=lambda r: r.length),
            _column("caplen", "CAPLEN", 6, lambda r: str(r.caplen),
                    "bytes captured (up to the snaplen)", right=True),
            _column("info", "INFO", 16, _info,
                    "TCP flags; for a packet cut by the snaplen, how much was captured",
                    default=True),
        ],
        defaults=("time", "interface", "direction", "src", "dst", "proto", "length", "info"),
        sides=Sides(time="ts_ns", remote=(("src", "saddr"), ("dst", "daddr")),
                    subjects=("src", "dst")),
        order=lambda r: r.wall_ns,
        payload=lambda r: r.data,
    )
