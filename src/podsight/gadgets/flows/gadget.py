"""``podsight flows`` as the pipeline runs it: interfaces followed, tables harvested per interval.

Every ``--interval`` the kernel tables are harvested (see :mod:`.flows`) and
assembled into one record per flow (see :mod:`.records`); between harvests
the ring buffer (overflowed packets, DNS answers) is drained so that it
never fills. The observed interfaces follow the selection: pods' host-side
veths as pods come and go, or host interfaces matching ``--interfaces``
patterns as they appear.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from podsight.errors import PodsightError, UserError
from podsight.gadgets.flows.flows import Flows, FlowsConfig, Harvest
from podsight.gadgets.flows.records import Assembler, FlowRecord, Tls
from podsight.gadgets.flows.schema import schema
from podsight.gadgets.flows.tls import parse
from podsight.net.addresses import address
from podsight.net.interfaces import PodInterfaces, choose, host_interfaces
from podsight.outputs.json import TemplateSpec
from podsight.pipeline import Batch, Loss, RunContext, Selection, Tally

LOSS_CAUSES = {
    "lost_flow": "packets not counted: flow table and ring buffer full "
                 "(a larger --max-flows or a shorter --interval helps)",
    "unparsed": "IP packets not counted: headers unreadable or malformed",
    "lost_dns": "DNS answers lost: ring buffer full",
    "lost_dns_query": "DNS queries not tracked, their answers unmatched: query table full",
    "dns_unreadable": "port-53 messages not parsed: shorter than a DNS header",
    "lost_rtt": "RTT samples lost: RTT table full",
    "lost_drops": "dropped packets not attributed: drop table full",
    "lost_tls": "TLS hellos not parsed: TLS ring buffer full",
}

#: Connections whose TLS hellos are remembered, for the flows of later intervals.
TLS_REMEMBERED = 65536


class FlowsGadget:
    """Flow records from tc programs on the selected interfaces."""

    def __init__(self, ctx: RunContext) -> None:
        v = ctx.values
        self.ctx = ctx
        self.drops = bool(v["drops"] or v["enable_all"] or v["drops_only"])
        self.rtt = bool(v["rtt"] or v["enable_all"])
        self.dns = bool(v["dns"] or v["enable_all"])
        self.tls = bool(v.get("tls") or v["enable_all"])
        self._tls: dict[tuple[str, int, str, int], Tls] = {}
        self._tls_pending: list[np.ndarray] = []
        self.drops_only = bool(v["drops_only"])
        self.interval: float = v["interval"]
        if self.interval < 0.05:
            raise UserError("--interval must be at least 0.05 seconds")
        self.include: list[str] | None = v.get("interfaces")
        self.exclude: list[str] | None = v.get("exclude_interfaces")
        self.schema = schema(ctx.clock)
        self.extra_columns = tuple(n for n, on in (("rtt", self.rtt), ("drops", self.drops),
                                                   ("dns", self.dns), ("tls", self.tls)) if on)
        self.max_flows: int = v["max_flows"]
        self._flows: Flows | None = None
        self._assembler: Assembler | None = None
        self._pod_ifaces = PodInterfaces()
        self._pending: list[np.ndarray] = []
        self._next_harvest = 0.0
        self._noted_fallback = False
        self._warned_none = False
        self._last_selection: Selection | None = None
        self._next_follow = 0.0

    @property
    def flows(self) -> Flows:
        if self._flows is None:
            raise RuntimeError("flows is not started")
        return self._flows

    # -- lifetime --------------------------------------------------------------------

    def start(self, selection: Selection) -> str:
        from podsight.ebpf.system import preflight

        # The kernel checks (root, BTF) come before anything that reads kernel BTF.
        preflight(net_admin=True)
        reasons: dict[int, str] = {}
        purge = 0
        if self.drops:
            from podsight.ebpf.btf import drop_reasons

            reasons = drop_reasons()
            purge = next((v for v, name in reasons.items() if name == "QUEUE_PURGE"), 0)
        self._flows = Flows(FlowsConfig(
            rtt=self.rtt, drops=self.drops, dns=self.dns, tls=self.tls,
            rules=tuple(self.ctx.rules),
            max_flows=self.max_flows, purge_reason=purge if 0 < purge < 0x10000 else 0,
        ))
        self._assembler = Assembler(reasons)
        self.follow(selection)
        self._next_harvest = time.monotonic() + self.interval
        n = len(self.flows.interfaces)
        return f"capturing flows on {n} interface{'s' if n != 1 else ''}"

    def detach(self) -> None:
        if self._flows is not None:
            self._flows.detach_all()

    def close(self) -> None:
        if self._flows is not None:
            self._flows.close()
            self._flows = None

    # -- interfaces --------------------------------------------------------------------

    def _wanted(self, selection: Selection) -> dict[int, str]:
        """Host interfaces to observe now: pods' host-side veths, or the host's own."""
        host = host_interfaces()
        if selection.host or self.include:
            return choose(host, self.include, self.exclude)
        res = self.ctx.resolver
        if selection.netns is None:
            from podsight.selectors import PodSelector

            inodes = res.selected_netns(PodSelector())  # every pod's
        else:
            inodes = set(selection.netns)
        veths = self._pod_ifaces.for_netns(inodes - {0, selection.host_netns})
        chosen = {i: n for i, n in host.items() if i in veths}
        if not chosen and selection.netns is None:
            if not self._noted_fallback:
                self._noted_fallback = True
                self.ctx.warn("no pod interfaces found; observing every host interface "
                              "(--host)")
            chosen = host
        return choose(chosen, self.include, self.exclude)

    def follow(self, selection: Selection) -> None:
        """Attach to what is selected now, detach from what is not (or is gone).

        Runs at most once a second unless the selection changed: listing
        interfaces costs a directory walk and, for a new pod, an ``ip`` call.
        """
        now = time.monotonic()
        if selection == self._last_selection and now < self._next_follow:
            return
        self._last_selection = selection
        self._next_follow = now + 1.0
        flows = self.flows
        wanted = self._wanted(selection)
        for ifindex in flows.interfaces - wanted.keys():
            flows.detach(ifindex)
        for ifindex in wanted.keys() - flows.interfaces:
            try:
                flows.attach(ifindex, "ingress")
                flows.attach(ifindex, "egress")
            except (PodsightError, OSError):
                flows.detach(ifindex)  # it went away between listing and attaching
        if not flows.interfaces and not self._warned_none:
            self._warned_none = True
            self.ctx.warn("no interface to observe yet (check the pod flags, --interfaces and "
                          "--exclude-interfaces); waiting for one to appear")

    # -- records ------------------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        left = self._next_harvest - time.monotonic()
        self.flows.wait(max(0.0, min(timeout, left)))

    def collect(self, *, final: bool) -> Batch[FlowRecord]:
        flows = self.flows
        now = time.monotonic()
        if self.tls:
            self._tls_pending.append(flows.drain_tls())
        if not final and now < self._next_harvest:
            self._pending.append(flows.drain())  # keep the ring from filling between harvests
            return Batch()
        self._next_harvest += self.interval
        if self._next_harvest < now:
            self._next_harvest = now + self.interval
        harvest: Harvest = flows.harvest()
        if self._pending:
            harvest.events = np.concatenate([*self._pending, harvest.events])
            self._pending = []
        assert self._assembler is not None
        records = self._assembler.assemble(harvest, final=final)
        if self.tls:
            self._join_tls(records)
        records = self._in_scope(records)
        if self.drops_only:
            records = [r for r in records if r.drops is not None]
        return Batch(records=records)

    def _in_scope(self, records: list[FlowRecord]) -> list[FlowRecord]:
        """Drops are traced for the whole kernel (skb:kfree_skb) and a drop of a flow no
        observed interface saw is its own record. When the run observes chosen network
        namespaces (pod flags, ``--netns``), such a record is kept only if the drop
        happened in one of them: else a ``--netns`` run reported the host's and other
        pods' drops too (two agents of one machine, as simulated nodes, both counted a
        pod's drops)."""
        sel = self._last_selection
        if not self.drops or sel is None or sel.netns is None or sel.host or self.include:
            return records
        scope = sel.netns
        return [r for r in records
                if r.interfaces or r.drops is None or r.drops.netns in scope]

    def _join_tls(self, records: list[FlowRecord]) -> None:
        """Parse the TLS hellos seen, remember them per connection (client addr and port,
        server addr and port), and give them to the TCP flows of those connections."""
        hellos = np.concatenate(self._tls_pending) if self._tls_pending else None
        self._tls_pending = []
        if hellos is not None:
            for ev in hellos:
                hello = parse(bytes(ev["data"])[:int(ev["len"])])
                if hello is None:
                    continue
                k = ev["key"]
                src, dst = address(bytes(k["saddr"])), address(bytes(k["daddr"]))
                sport, dport = int(k["sport"]), int(k["dport"])
                conn = (src, sport, dst, dport) if hello.kind == "client" else \
                    (dst, dport, src, sport)
                t = self._tls.get(conn)
                if t is None:
                    if len(self._tls) >= TLS_REMEMBERED:
                        self._tls.pop(next(iter(self._tls)))
                    t = self._tls[conn] = Tls(server=conn[2], port=conn[3])
                if hello.kind == "client":
                    t.sni, t.offered, t.alpn = hello.sni, hello.versions, hello.alpn
                else:
                    t.version = hello.versions[0] if hello.versions else ""
                    t.cipher = hello.cipher
        if not self._tls:
            return
        for r in records:
            if r.proto == 6:
                r.tls = self._tls.get((r.saddr, r.sport, r.daddr, r.dport)) or \
                    self._tls.get((r.daddr, r.dport, r.saddr, r.sport))

    def preselected(self, r: FlowRecord) -> bool:
        """A flow seen on an observed interface is selected by the attachment itself."""
        return bool(r.interfaces)

    def decode(self, raw: np.ndarray) -> list[FlowRecord]:
        return []

    def templates(self, admit: Callable[[np.ndarray], FlowRecord | None]
                  ) -> TemplateSpec[FlowRecord] | None:
        return None

    def pending(self) -> list[FlowRecord]:
        return []

    def tally(self, elapsed: float) -> Tally:
        c = self.flows.counters()
        notes = []
        if c.get("overflow"):
            notes.append(f"{c['overflow']} packets went through the ring (flow table full)")
        return Tally(losses={k: Loss(c.get(k, 0), text) for k, text in LOSS_CAUSES.items()},
                     before=[f"{c.get('packets', 0)} packets in {elapsed:.1f}s"],
                     notes=notes, counters=c, skipped_runs=self.flows.skipped_runs())
