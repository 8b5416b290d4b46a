"""Recorded connections for the policy tests, written by the gadgets' own schemas and outputs
(JSON lines and SQLite, exactly what trace tcpconnect and flows write), not by hand."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from podsight.identity.endpoint import Endpoint, PodInfo
from podsight.timefmt import Clock

CLOCK = Clock()
T0 = 10_000_000_000  # boot ns of the first event


def pod_ep(addr: str, ns: str, name: str, labels: dict[str, str], *, node: str = "lab-node",
           workload: tuple[str, str] = ("", "")) -> Endpoint:
    info = PodInfo(namespace=ns, name=name, ips=(addr,), node=node, labels=labels,
                   containers=(name,), workload_kind=workload[0], workload_name=workload[1])
    return Endpoint.for_pod(addr, info)


def connect(src: Endpoint | None, dst: Endpoint | None, saddr: str, sport: int, daddr: str,
            dport: int, *, result: str = "ok", at: int = 0) -> Any:
    from podsight.gadgets.tcpconnect.schema import Connect

    src = src or Endpoint.raw(saddr)
    dst = dst or Endpoint.raw(daddr)
    return Connect(ts_ns=T0 + at, pid=100, tid=100, comm="curl", uid=0, netns=1, cgroup_id=0,
                   ip=6 if ":" in saddr else 4, saddr=saddr, sport=sport, daddr=daddr,
                   dport=dport, result=result, errno=0, latency_ns=1000, syn_retries=0,
                   src=src, dst=dst)


def flow(src: Endpoint | None, dst: Endpoint | None, saddr: str, sport: int, daddr: str,
         dport: int, *, proto: int = 6, flags: int = 0, at: int = 0) -> Any:
    from podsight.gadgets.flows.records import FlowRecord

    return FlowRecord(ip=6 if ":" in saddr else 4, saddr=saddr, daddr=daddr, sport=sport,
                      dport=dport, proto=proto, bytes=100, packets=1, first_ns=T0 + at,
                      last_ns=T0 + at + 1000, tcp_flags=flags, dscp=0, icmp_type=None,
                      icmp_code=None, interfaces=[("pslh2", "ingress")],
                      src=src or Endpoint.raw(saddr), dst=dst or Endpoint.raw(daddr))


SYN, SYN_ACK, ACK = 0x02, 0x100 | 0x12, 0x10


def _schema(gadget: str) -> Any:
    if gadget == "tcpconnect":
        from podsight.gadgets.tcpconnect.schema import schema
    else:
        from podsight.gadgets.flows.schema import schema
    return schema(CLOCK)


def write_json(path: Path, gadget: str, records: list[Any]) -> Path:
    from podsight.outputs.json import JsonLines

    out = io.StringIO()
    JsonLines(_schema(gadget), out).write(records)
    path.write_text(out.getvalue())
    return path


def write_sqlite(path: Path, gadget: str, records: list[Any]) -> Path:
    from podsight.outputs.sqlite import SqliteOutput

    db = SqliteOutput(str(path), gadget, _schema(gadget), {"gadget": gadget})
    db.write(records)
    db.close()
    return path
