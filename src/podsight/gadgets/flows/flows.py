"""The flows gadget, kernel side: load flows.bpf.o, attach it, harvest its tables.

Every ``--interval`` user space *harvests*: it flips the generation the
programs write to, waits until no program can still be writing the old one
(a map-in-map update waits an RCU grace period), then reads and clears the
old tables in batches. Counts are exact: nothing is added to an entry while
it is read and deleted, unlike a plain lookup-and-delete sweep.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Self

import numpy as np

from podsight.ebpf import BpfObject, RingBuffer
from podsight.ebpf.system import preflight
from podsight.ebpf.tc import TcHook
from podsight.errors import UserError
from podsight.net.rules import Rule, lpm_entries

# struct flow_key (44 bytes): addresses are 16 bytes, IPv4 as ::ffff:a.b.c.d.
KEY_DTYPE = np.dtype(
    [
        ("saddr", "V16"),
        ("daddr", "V16"),
        ("sport", "<u2"),
        ("dport", "<u2"),
        ("ifindex", "<u4"),
        ("proto", "u1"),
        ("family", "u1"),
        ("direction", "u1"),
        ("_pad", "u1"),
    ]
)
assert KEY_DTYPE.itemsize == 44

# struct flow_stats (40 bytes).
STATS_DTYPE = np.dtype(
    [
        ("first_ns", "<u8"),
        ("last_ns", "<u8"),
        ("bytes", "<u8"),
        ("packets", "<u8"),
        ("tcp_flags", "<u4"),
        ("dscp", "u1"),
        ("icmp_type", "u1"),
        ("icmp_code", "u1"),
        ("_pad", "u1"),
    ]
)
assert STATS_DTYPE.itemsize == 40

# struct rtt_stats (24 bytes).
RTT_DTYPE = np.dtype(
    [("min_us", "<u4"), ("max_us", "<u4"), ("last_us", "<u4"), ("samples", "<u4"),
     ("sum_us", "<u8")]
)
assert RTT_DTYPE.itemsize == 24

# struct drop_stats (40 bytes).
DROP_DTYPE = np.dtype(
    [("bytes", "<u8"), ("packets", "<u8"), ("last_ns", "<u8"), ("reason", "<u4"),
     ("netns", "<u4"), ("ifindex", "<u4"), ("_pad", "<u4")]
)
assert DROP_DTYPE.itemsize == 40

DNS_QNAME_MAX = 128

# struct event (248 bytes): one ring record, EV_FLOW or EV_DNS.
EVENT_DTYPE = np.dtype(
    [
        ("kind", "<u4"),
        ("_pad0", "<u4"),
        ("ts_ns", "<u8"),
        ("key", KEY_DTYPE),
        ("_pad1", "<u4"),
        ("stats", STATS_DTYPE),
        ("latency_ns", "<u8"),
        ("dns_id", "<u2"),
        ("dns_flags", "<u2"),
        ("qname_len", "<u2"),
        ("_pad2", "<u2"),
        ("qname", f"V{DNS_QNAME_MAX}"),
    ]
)
assert EVENT_DTYPE.itemsize == 248
EV_FLOW, EV_DNS = 1, 2

# Counter slots (enum counter in flows.bpf.c).
COUNTERS = (
    "packets", "flows", "overflow", "lost_flow", "dns", "lost_dns", "lost_rtt", "drops",
    "lost_drops", "unparsed",
)

MAX_RULES = 8
DIRECTION_NAMES = ("ingress", "egress")

# struct rule (24 bytes): one filter rule; zero fields mean any (FlowsConfig.rodata()).
RULE_DTYPE = np.dtype(
    [
        ("port_lo", "<u2"), ("port_hi", "<u2"), ("sport_lo", "<u2"), ("sport_hi", "<u2"),
        ("dport_lo", "<u2"), ("dport_hi", "<u2"), ("tcp_flags", "<u2"), ("direction", "u1"),
        ("protocol", "u1"), ("has_cidr", "u1"), ("has_peer", "u1"), ("has_icmp_type", "u1"),
        ("icmp_type", "u1"), ("has_icmp_code", "u1"), ("icmp_code", "u1"), ("_pad", "<u2"),
    ]
)

# The `cfg` global (.rodata, 208 bytes): FlowsConfig.rodata() fills it.
CFG_DTYPE = np.dtype(
    [
        ("nrules", "<u4"), ("wakeup_bytes", "<u4"), ("any_cidr", "u1"), ("any_peer", "u1"),
        ("rtt", "u1"), ("drops", "u1"), ("dns", "u1"), ("_pad", "u1"), ("purge_reason", "<u2"),
        ("rules", RULE_DTYPE, (MAX_RULES,)),
    ]
)

# struct state (16 bytes), written by Flows._write_state().
STATE_DTYPE = np.dtype([("gen", "<u4"), ("_pad", "<u4"), ("boot_offset_ns", "<u8")])

# struct lpm_key (20 bytes): the prefix length then the address, as lpm_entries() packs it.
LPM_KEY_DTYPE = np.dtype([("prefixlen", "<u4"), ("addr", "V16")])

# (object file, C type, dtype): every layout shared with the kernel, checked against the
# object's BTF by tests/test_layouts.py (podsight.ebpf.layout.check_dtype).
LAYOUTS = (
    ("flows.bpf.o", "struct flow_key", KEY_DTYPE),
    ("flows.bpf.o", "struct flow_stats", STATS_DTYPE),
    ("flows.bpf.o", "struct rtt_stats", RTT_DTYPE),
    ("flows.bpf.o", "struct drop_stats", DROP_DTYPE),
    ("flows.bpf.o", "struct event", EVENT_DTYPE),
    ("flows.bpf.o", "struct rule", RULE_DTYPE),
    ("flows.bpf.o", "struct state", STATE_DTYPE),
    ("flows.bpf.o", "struct lpm_key", LPM_KEY_DTYPE),
    ("flows.bpf.o", "cfg", CFG_DTYPE),
)


@dataclass(frozen=True)
class FlowsConfig:
    """What to load: features, filter rules and table sizes."""

    rtt: bool = False
    drops: bool = False
    dns: bool = False
    rules: tuple[Rule, ...] = ()
    max_flows: int = 65536
    ring_bytes: int = 4 << 20
    #: enum skb_drop_reason value of QUEUE_PURGE (0: unknown, nothing is skipped).
    purge_reason: int = 0

    def rodata(self) -> bytes:
        """The ``cfg`` global of flows.bpf.c, byte for byte (CFG_DTYPE, BTF-checked).

        Each rule's CIDRs are not here: they go into the LPM tries, keyed by the
        rule's bit (see :func:`podsight.net.rules.lpm_entries`).
        """
        if len(self.rules) > MAX_RULES:
            raise UserError(f"at most {MAX_RULES} filter rules (joined with 'or')")
        cfg = np.zeros(1, CFG_DTYPE)
        cfg["nrules"] = len(self.rules)
        cfg["wakeup_bytes"] = self.ring_bytes // 4
        cfg["any_cidr"] = any(r.cidrs for r in self.rules)
        cfg["any_peer"] = any(r.peers for r in self.rules)
        cfg["rtt"], cfg["drops"], cfg["dns"] = self.rtt, self.drops, self.dns
        cfg["purge_reason"] = self.purge_reason
        for i, r in enumerate(self.rules):
            row = cfg["rules"][0, i]
            row["port_lo"], row["port_hi"] = r.port
            row["sport_lo"], row["sport_hi"] = r.sport
            row["dport_lo"], row["dport_hi"] = r.dport
            row["tcp_flags"] = r.tcp_flags
            row["direction"] = r.direction
            row["protocol"] = r.protocol
            row["has_cidr"] = bool(r.cidrs)
            row["has_peer"] = bool(r.peers)
            row["has_icmp_type"] = r.icmp_type is not None
            row["icmp_type"] = r.icmp_type or 0
            row["has_icmp_code"] = r.icmp_code is not None
            row["icmp_code"] = r.icmp_code or 0
        return cfg.tobytes()


@dataclass
class Harvest:
    """One interval's raw data, as read from the kernel."""

    flow_keys: np.ndarray
    flow_stats: np.ndarray
    rtt_keys: np.ndarray
    rtt_stats: np.ndarray
    drop_keys: np.ndarray
    drop_stats: np.ndarray
    events: np.ndarray


class Flows:
    """The loaded flows programs, attached to interfaces as they are added; a context manager."""

    def __init__(self, config: FlowsConfig | None = None) -> None:
        self.config = config or FlowsConfig()
        preflight(net_admin=True)
        self._obj = BpfObject.from_package(__package__ or "podsight.gadgets.flows",
                                           "flows.bpf.o")
        self._hooks: dict[tuple[int, str], TcHook] = {}
        try:
            cfg = self.config
            self._obj.map(".rodata").set_initial_value(cfg.rodata())
            self._obj.map("events").resize(cfg.ring_bytes)
            for name in ("flows_0", "flows_1"):
                self._obj.map(name).resize(cfg.max_flows)
            # Tables of features that are off are never written: keep them tiny.
            for feature, names in (("rtt", ("rtt_0", "rtt_1")), ("drops", ("drops_0", "drops_1"))):
                if not getattr(cfg, feature):
                    for name in names:
                        self._obj.map(name).resize(1)
            if not cfg.dns:
                self._obj.map("dns_inflight").resize(1)
            # CIDR tries hold every prefix of every rule, however many the user gave.
            self._lpm = {name: lpm_entries(cfg.rules, attr)
                         for attr, name in (("cidrs", "cidr_rules"), ("peers", "peer_rules"))}
            for name, entries in self._lpm.items():
                self._obj.map(name).resize(max(len(entries), 1))
            self._obj.program("flows_rtt").set_autoload(cfg.rtt)
            self._obj.program("flows_drops").set_autoload(cfg.drops)
            self._obj.load()
            for name, entries in self._lpm.items():
                table = self._obj.map(name)
                for key, mask in entries.items():
                    table.update(key, struct.pack("<I", mask))
            self._gen = 0
            self._write_state()
            self._ring = RingBuffer(self._obj.map("events"), EVENT_DTYPE)
            if cfg.rtt:
                self._obj.program("flows_rtt").attach()
            if cfg.drops:
                self._obj.program("flows_drops").attach()
        except BaseException:
            self.close()
            raise

    # -- interfaces -----------------------------------------------------------

    def attach(self, ifindex: int, direction: str) -> None:
        """Observe one interface in one direction (ingress or egress); idempotent."""
        if (ifindex, direction) in self._hooks:
            return
        prog = self._obj.program("flows_ingress" if direction == "ingress" else "flows_egress")
        self._hooks[(ifindex, direction)] = TcHook(prog, ifindex, direction)

    def detach(self, ifindex: int) -> None:
        """Stop observing an interface (it may be gone already: a pod was deleted)."""
        for direction in DIRECTION_NAMES:
            hook = self._hooks.pop((ifindex, direction), None)
            if hook is not None:
                hook.close()

    @property
    def interfaces(self) -> set[int]:
        return {ifindex for ifindex, _ in self._hooks}

    def detach_all(self) -> None:
        """Stop counting: every tc hook and tracing link goes (maps stay readable)."""
        for hook in self._hooks.values():
            hook.close()
        self._hooks.clear()
        for link in self._obj.links:
            link.close()

    # -- reading ----------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        """Sleep until the ring needs draining or ``timeout`` passes."""
        self._ring.wait(timeout)

    def drain(self) -> np.ndarray:
        """Ring records waiting now (EVENT_DTYPE): overflowed packets and DNS answers."""
        return self._ring.drain()

    def _write_state(self) -> None:
        """The generation to write to, and the boot-time offset of the coarse clock."""
        # Zero until the machine has been suspended; never negative by read order.
        mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        offset = max(0, time.clock_gettime_ns(time.CLOCK_BOOTTIME) - mono)
        state = np.zeros(1, STATE_DTYPE)
        state["gen"] = self._gen
        state["boot_offset_ns"] = offset
        self._obj.map("state").update(b"\0\0\0\0", state.tobytes())

    def harvest(self) -> Harvest:
        """Flip generations, wait for the old one to go quiet, read and clear it."""
        obj = self._obj
        old = self._gen
        self._gen ^= 1
        self._write_state()
        # Writing an ARRAY_OF_MAPS slot returns only after an RCU grace period: every
        # program that read the old generation has finished by then.
        slot = struct.pack("<I", old)
        obj.map("flow_tables").update(slot, struct.pack("<I", obj.map(f"flows_{old}").fd))
        fk, fs = obj.map(f"flows_{old}").lookup_batch(KEY_DTYPE, STATS_DTYPE, delete=True)
        empty_k = np.zeros(0, KEY_DTYPE)
        rk, rs = empty_k, np.zeros(0, RTT_DTYPE)
        dk, ds = empty_k, np.zeros(0, DROP_DTYPE)
        if self.config.rtt:
            rk, rs = obj.map(f"rtt_{old}").lookup_batch(KEY_DTYPE, RTT_DTYPE, delete=True)
        if self.config.drops:
            dk, ds = obj.map(f"drops_{old}").lookup_batch(KEY_DTYPE, DROP_DTYPE, delete=True)
        return Harvest(fk, fs, rk, rs, dk, ds, self._ring.drain())

    def skipped_runs(self) -> int:
        """Tracing program runs (RTT, drops) the kernel skipped, nested on one CPU."""
        return self._obj.run_stats().recursion_misses

    def counters(self) -> dict[str, int]:
        sums = self._obj.map("counters").percpu_u64_sums()
        return {name: int(sums[i]) for i, name in enumerate(COUNTERS)}

    # -- lifetime ---------------------------------------------------------------

    def close(self) -> None:
        for hook in self._hooks.values():
            hook.close()
        self._hooks.clear()
        ring = getattr(self, "_ring", None)
        if ring is not None:
            ring.close()
        self._obj.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


