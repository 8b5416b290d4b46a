"""``podsight lab probe``: who can reach whom, on which ports, right now.

From every lab pod to every lab pod (itself included) on each port and
protocol, all at once: one :mod:`podsight.lab.prober` per source pod,
started in its network namespace, every probe of a pod in parallel within
it. The answer is what the kernel did, with whatever policies are applied:
a connect that completed (or a UDP answer) is ``connected``.

:func:`run` also takes arbitrary probes (an address outside the lab pods, a
source that is the node itself), for tests that compare the checker's
verdicts with what the lab lets through.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from podsight.lab import system
from podsight.lab.errors import LabError
from podsight.lab.topology import LabPod

PROBER_MODULE = "podsight.lab.prober"
NODE = "node"  # a source that is the node itself (the root network namespace)


@dataclass(frozen=True)
class Probe:
    """One connect: from a pod (or the node), to an address and port, over a protocol."""

    source: str  # "namespace/name" of a lab pod, or NODE
    target: str  # what to call the destination ("namespace/name", or an address)
    addr: str
    port: int
    proto: str  # tcp | udp


@dataclass(frozen=True)
class Result:
    probe: Probe
    connected: bool
    result: str  # ok | refused | timeout | unreachable | ...

    def json(self) -> dict[str, object]:
        p = self.probe
        return {"from": p.source, "to": p.target, "addr": p.addr, "port": p.port,
                "proto": p.proto, "connected": self.connected, "result": self.result}


def run(pods: Sequence[LabPod], probes: Sequence[Probe], timeout: float) -> list[Result]:
    """Run every probe, all sources in parallel; results in the order of ``probes``."""
    by_ref = {p.ref: p for p in pods}
    groups: dict[str, list[tuple[int, Probe]]] = {}
    for i, probe in enumerate(probes):
        if probe.source != NODE and probe.source not in by_ref:
            raise LabError(f"no lab pod {probe.source}")
        groups.setdefault(probe.source, []).append((i, probe))
    procs = []
    for source, items in groups.items():
        argv = [system.python(), "-m", PROBER_MODULE, "--timeout", f"{timeout:g}"]
        if source != NODE:
            netns = by_ref[source].netns
            if not system.netns_exists(netns):
                raise LabError(f"lab pod {source} is not running (run: podsight lab up)")
            argv = ["ip", "netns", "exec", netns, *argv]
        targets = [{"id": i, "addr": p.addr, "port": p.port, "proto": p.proto}
                   for i, p in items]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=system.child_env())
        procs.append((source, proc, json.dumps(targets)))
    results: dict[int, Result] = {}
    try:
        for source, proc, stdin in procs:
            out, err = proc.communicate(stdin, timeout=timeout * 4 + 30)
            if proc.returncode != 0:
                why = system.first_line(err) or f"exit {proc.returncode}"
                raise LabError(f"probing from {source} failed: {why}")
            for line in out.splitlines():
                got = json.loads(line)
                results[got["id"]] = Result(probes[got["id"]], bool(got["connected"]),
                                            str(got["result"]))
    finally:
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [results[i] for i in range(len(probes))]


def all_pairs(pods: Sequence[LabPod], ports: Sequence[int], protocols: Sequence[str],
              families: Sequence[int] = (4,)) -> list[Probe]:
    """Every pod to every pod, on every port and protocol, over each IP family."""
    out = []
    for src in pods:
        for dst in pods:
            for family in families:
                addr = dst.ipv4 if family == 4 else dst.ipv6
                for proto in protocols:
                    for port in ports:
                        out.append(Probe(src.ref, dst.ref, addr, port, proto))
    return out


def table(results: Sequence[Result], pods: Sequence[LabPod]) -> str:
    """One truth table per (protocol, port, address family): rows from, columns to."""
    cell = {"ok": "yes", "timeout": "-", "refused": "refused", "unreachable": "unreach"}
    groups: dict[tuple[str, int, int], dict[tuple[str, str], str]] = {}
    for r in results:
        p = r.probe
        family = 6 if ":" in p.addr else 4
        groups.setdefault((p.proto, p.port, family), {})[(p.source, p.target)] = \
            cell.get(r.result, r.result)
    refs = [p.ref for p in pods]
    width = max(len(x) for x in [*refs, "FROM \\ TO"]) + 2
    col = max(9, *(len(r) + 2 for r in refs))
    lines = []
    for (proto, port, family), cells in sorted(groups.items()):
        title = f"{proto}/{port}" + (" (IPv6)" if family == 6 else "")
        lines.append(f"{title}:")
        lines.append("FROM \\ TO".ljust(width) + "".join(r.ljust(col) for r in refs).rstrip())
        for src in refs:
            row = "".join(cells.get((src, dst), "").ljust(col) for dst in refs).rstrip()
            lines.append(src.ljust(width) + row)
        lines.append("")
    connected = sum(r.connected for r in results)
    lines.append(f"{len(results)} probes: {connected} connected, {len(results) - connected} not "
                 "(yes: connected; -: no answer, dropped; refused: nothing listens)")
    return "\n".join(lines) + "\n"
