"""How a connect event reads in a table and in JSON (the JSON keys are a contract)."""

from __future__ import annotations

from dataclasses import dataclass

from podsight.events import Field
from podsight.gadgets.tcpconnect.tcpconnect import ConnectEvent
from podsight.identity import Endpoint
from podsight.outputs.jsonlines import json_string
from podsight.timefmt import Clock, format_duration


@dataclass(slots=True)
class ConnectRow:
    """A connect event with its identity resolved and its wall-clock time."""

    event: ConnectEvent
    src: Endpoint
    dst: Endpoint
    wall_ns: int


def _endpoint_json(ep: Endpoint, addr: str, port: int) -> str:
    return (
        f'{{"addr":"{addr}","port":{port},"endpoint":"{ep.notation}:{port}",{ep.json_fragment}}}'
    )


def to_json(row: ConnectRow, clock: Clock) -> str:
    """The JSON object of one event; keys: time, pid, tid, comm, uid, netns, ip, saddr, sport,
    daddr, dport, src, dst, result, errno, latency_ns, syn_retries."""
    e = row.event
    return (
        f'{{"time":"{clock.rfc3339(row.wall_ns)}","pid":{e.pid},"tid":{e.tid},'
        f'"comm":{json_string(e.comm)},"uid":{e.uid},"netns":{e.netns},"ip":{e.ip},'
        f'"saddr":"{e.saddr}","sport":{e.sport},"daddr":"{e.daddr}","dport":{e.dport},'
        f'"src":{_endpoint_json(row.src, e.saddr, e.sport)},'
        f'"dst":{_endpoint_json(row.dst, e.daddr, e.dport)},'
        f'"result":"{e.result}","errno":{e.errno},"latency_ns":{e.latency_ns},'
        f'"syn_retries":{e.syn_retries}}}'
    )


def _podname(row: ConnectRow) -> str:
    return row.src.name if row.src.kind == "pod" else ""


K8S_COLUMNS = ("k8s.namespace", "k8s.podname", "k8s.containername")


def fields(clock: Clock) -> list[Field[ConnectRow]]:
    """Every column ``-o columns=`` can name; the defaults are those BCC users expect."""
    return [
        Field("k8s.node", "K8S.NODE", 12, lambda r: r.src.node, default=False),
        Field("k8s.namespace", "K8S.NAMESPACE", 14, lambda r: r.src.namespace, default=False),
        Field("k8s.podname", "K8S.PODNAME", 16, _podname, default=False),
        Field("k8s.containername", "K8S.CONTAINERNAME", 18, lambda r: r.src.container,
              default=False),
        Field("time", "TIME", 12, lambda r: clock.hms(r.wall_ns), default=False),
        Field("pid", "PID", 7, lambda r: str(r.event.pid), right=True),
        Field("tid", "TID", 7, lambda r: str(r.event.tid), right=True, default=False),
        Field("comm", "COMM", 16, lambda r: r.event.comm),
        Field("uid", "UID", 6, lambda r: str(r.event.uid), right=True, default=False),
        Field("netns", "NETNS", 10, lambda r: str(r.event.netns), default=False),
        Field("ip", "IP", 2, lambda r: str(r.event.ip)),
        Field("saddr", "SADDR", 15, lambda r: r.event.saddr, default=False),
        Field("sport", "SPORT", 5, lambda r: str(r.event.sport), right=True, default=False),
        Field("daddr", "DADDR", 15, lambda r: r.event.daddr, default=False),
        Field("dport", "DPORT", 5, lambda r: str(r.event.dport), right=True, default=False),
        Field("src", "SRC", 30, lambda r: r.src.with_port(r.event.sport)),
        Field("dst", "DST", 30, lambda r: r.dst.with_port(r.event.dport)),
        Field("latency", "LATENCY", 9, lambda r: format_duration(r.event.latency_ns), right=True),
        Field("result", "RESULT", 11, lambda r: r.event.result),
        Field("errno", "ERRNO", 5, lambda r: str(r.event.errno), right=True, default=False),
        Field("syn_retries", "RETRIES", 7, lambda r: str(r.event.syn_retries), right=True,
              default=False),
    ]
