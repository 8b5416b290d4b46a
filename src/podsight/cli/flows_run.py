"""The ``podsight flows`` pipeline: interfaces -> kernel tables -> records -> outputs."""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from typing import TextIO

import numpy as np

from podsight.cli.identity import build_resolver, pod_selector
from podsight.errors import UserError
from podsight.events import select_fields
from podsight.gadgets.flows.fields import SQL_COLUMNS, fields, sql_row, to_json
from podsight.gadgets.flows.flows import Flows, FlowsConfig, Harvest
from podsight.gadgets.flows.interfaces import PodInterfaces, choose, host_interfaces
from podsight.gadgets.flows.records import Assembler, FlowRecord
from podsight.gadgets.flows.rules import parse_rules
from podsight.outputs.jsonlines import JsonLinesWriter
from podsight.outputs.sqlite import SqliteWriter
from podsight.outputs.table import TableWriter
from podsight.runtime import StopFlag
from podsight.selectors import PodSelector
from podsight.timefmt import Clock
from podsight.tui.live import LiveTable

LOSS_CAUSES = {
    "lost_flow": "packets not counted: flow table and ring buffer full "
                 "(a larger --max-flows or a shorter --interval helps)",
    "unparsed": "IP packets not counted: headers unreadable or malformed",
    "lost_dns": "DNS answers lost: ring buffer full",
    "lost_dns_query": "DNS queries not tracked, their answers unmatched: query table full",
    "dns_unreadable": "port-53 messages not parsed: shorter than a DNS header",
    "lost_rtt": "RTT samples lost: RTT table full",
    "lost_drops": "dropped packets not attributed: drop table full",
}


def _parse_output(value: str) -> tuple[str, str | None]:
    if value in ("columns", "table"):
        return "columns", None
    if value == "json":
        return "json", None
    if value.startswith("columns="):
        return "columns", value.split("=", 1)[1]
    raise UserError(f"invalid -o {value!r}: use columns, json or columns=a,b,c")


class FlowsCommand:
    """One run of ``podsight flows``; everything it opens is closed by ``stack``."""

    def __init__(self, ns: argparse.Namespace, stack: ExitStack) -> None:
        self.ns = ns
        self.stack = stack
        self.mode, columns = _parse_output(ns.output)
        rules = parse_rules(ns, ns.more)
        ns.drops = ns.drops or ns.enable_all or ns.drops_only
        ns.rtt = ns.rtt or ns.enable_all
        ns.dns = ns.dns or ns.enable_all
        self.selector = pod_selector(ns)
        self.clock = Clock()
        extra = [name for name in ("rtt", "drops", "dns") if getattr(ns, name)]
        self.fields = select_fields(fields(self.clock), columns, extra=extra)
        self.sqlite: SqliteWriter | None = None
        if ns.sqlite:
            meta = {"command": " ".join(sys.argv), "tool": "podsight flows",
                    "started": self.clock.rfc3339(time.time_ns())}
            self.sqlite = stack.enter_context(SqliteWriter(ns.sqlite, "flows", SQL_COLUMNS, meta))
        self.resolver = build_resolver(ns, stack)
        reasons: dict[int, str] = {}
        if ns.drops:
            from podsight.ebpf.btf import drop_reasons

            reasons = drop_reasons()
        self.assembler = Assembler(reasons)
        purge = next((v for v, name in reasons.items() if name == "QUEUE_PURGE"), 0)
        self.flows = stack.enter_context(Flows(FlowsConfig(
            rtt=ns.rtt, drops=ns.drops, dns=ns.dns, rules=tuple(rules), max_flows=ns.max_flows,
            purge_reason=purge if 0 < purge < 0x10000 else 0,
        )))
        self.pod_ifaces = PodInterfaces()
        self.out = sys.stdout
        self.json = JsonLinesWriter(self.out)
        self.table = TableWriter(self.fields, self.out)
        self.live: LiveTable | None = None
        if self.mode == "columns" and not ns.no_tui and self.out.isatty():
            self.live = LiveTable(self.fields, self.out, "podsight flows")
            stack.callback(self.live.close)
        self.latest: dict[tuple[str, str, int, int, int], FlowRecord] = {}
        self.records = 0
        self.json_bytes = 0
        self.note_fallback = True
        self.counters: dict[str, int] = {}
        self.stopped_by = ""

    # -- interfaces --------------------------------------------------------------

    def _wanted_interfaces(self) -> dict[int, str]:
        ns = self.ns
        host = host_interfaces()
        if ns.host or ns.interfaces:
            chosen = host
        else:
            selector = self.selector if self.selector.selects_pods else PodSelector()
            inodes = self.resolver.selected_netns(selector) - {0, self.resolver.host_netns}
            veths = self.pod_ifaces.for_netns(inodes)
            chosen = {i: n for i, n in host.items() if i in veths}
            if not chosen and not self.selector.selects_pods:
                if self.note_fallback:
                    sys.stderr.write("podsight: no pod interfaces found; observing every host "
                                     "interface (--host)\n")
                    self.note_fallback = False
                chosen = host
        return choose(chosen, ns.interfaces, ns.exclude_interfaces)

    def _sync_interfaces(self) -> None:
        wanted = self._wanted_interfaces()
        for ifindex in self.flows.interfaces - wanted.keys():
            self.flows.detach(ifindex)
        for ifindex in wanted.keys() - self.flows.interfaces:
            try:
                self.flows.attach(ifindex, "ingress")
                self.flows.attach(ifindex, "egress")
            except UserError:
                self.flows.detach(ifindex)  # it went away between listing and attaching

    # -- records -----------------------------------------------------------------

    def _keep(self, r: FlowRecord) -> bool:
        if self.ns.drops_only and r.drops is None:
            return False
        if r.interfaces or not self.selector.selects_pods:
            return True
        # Seen by no interface (a drop, a late DNS answer): keep it if a selected pod is in it.
        res = self.resolver
        assert r.src is not None and r.dst is not None
        return any(res.selects(self.selector, ep, 0) for ep in (r.src, r.dst) if ep.kind == "pod")

    def _emit(self, harvest: Harvest, *, final: bool) -> None:
        records = self.assembler.assemble(harvest, final=final)
        res = self.resolver
        for r in records:
            r.src = res.endpoint(r.saddr)
            r.dst = res.endpoint(r.daddr)
        records = [r for r in records if self._keep(r)]
        self.records += len(records)
        if self.sqlite is not None and records:
            self.sqlite.write(sql_row(r, self.clock) for r in records)
        if self.mode == "json":
            lines = [to_json(r, self.clock) for r in records]
            self.json.write(lines)
            self.json_bytes += sum(len(line) + 1 for line in lines)
        elif self.live is not None:
            for r in records:
                self.latest[r.five_tuple] = r
            if len(self.latest) > 4096:
                newest = sorted(self.latest.values(), key=lambda r: r.last_ns)[-2048:]
                self.latest = {r.five_tuple: r for r in newest}
            rows = sorted(self.latest.values(), key=lambda r: r.last_ns, reverse=True)
            self.live.draw(rows, self._status())
        else:
            self.table.write(records)

    def _status(self) -> str:
        c = self.flows.counters()
        lost = sum(c[k] for k in LOSS_CAUSES)
        return (f"{len(self.flows.interfaces)} interfaces, {self.records} records, "
                f"{c['packets']} packets, {lost} lost  (Ctrl-C to stop)")

    def _over_budget(self) -> bool:
        limit: int | None = self.ns.max_bytes
        if limit is None:
            return False
        written = self.json_bytes + (self.sqlite.size if self.sqlite is not None else 0)
        return written >= limit

    # -- the loop ------------------------------------------------------------------

    def run(self) -> None:
        ns = self.ns
        self._sync_interfaces()
        if not self.flows.interfaces:
            raise UserError("no interface to observe: check the pod flags, --interfaces and "
                            "--exclude-interfaces")
        stop = self.stack.enter_context(StopFlag(ns.max_time))
        if self.mode == "columns" and self.live is None:
            self.table.header()
        sys.stderr.write(f"podsight: capturing flows on {len(self.flows.interfaces)} "
                         "interfaces (Ctrl-C to stop)\n")
        sys.stderr.flush()
        pending_events: list[np.ndarray] = []
        next_harvest = time.monotonic() + ns.interval
        while not stop.is_set():
            now = time.monotonic()
            if now < next_harvest:
                self.flows.wait(min(next_harvest - now, stop.remaining(next_harvest - now)))
                # Keep the ring from filling between harvests.
                pending_events.append(self.flows.drain())
                continue
            next_harvest += ns.interval
            if next_harvest < now:
                next_harvest = now + ns.interval
            self._emit(self._harvest(pending_events), final=False)
            pending_events = []
            if self._over_budget():
                self.stopped_by = "--max-bytes reached"
                break
            if self.resolver.refresh():
                self._sync_interfaces()
        if stop.timed_out:
            self.stopped_by = "--max-time reached"
        self._emit(self._harvest(pending_events), final=True)
        self.counters = self.flows.counters()
        if self.sqlite is not None:
            self.sqlite.set_meta("ended", self.clock.rfc3339(time.time_ns()))
            self.sqlite.set_meta("counters", repr(self.counters))

    def _harvest(self, pending: list[np.ndarray]) -> Harvest:
        h = self.flows.harvest()
        if pending:
            h.events = np.concatenate([*pending, h.events])
        return h

    def summary(self, elapsed: float, err: TextIO) -> None:
        c = self.counters
        lost = sum(c.get(k, 0) for k in LOSS_CAUSES)
        line = (f"podsight: {self.records} flow records, {c.get('packets', 0)} packets in "
                f"{elapsed:.1f}s, {lost} lost")
        if lost:
            line += " (" + "; ".join(f"{text}: {c[k]}" for k, text in LOSS_CAUSES.items()
                                     if c.get(k)) + ")"
        if c.get("overflow"):
            line += f"; {c['overflow']} packets went through the ring (flow table full)"
        if self.stopped_by:
            line += f"; stopped: {self.stopped_by}"
        err.write(line + "\n")
