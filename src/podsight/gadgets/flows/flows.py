"""The flows gadget, kernel side: load flows.bpf.o, attach it, harvest its tables.

Every ``--interval`` user space *harvests*: it advances the epoch the
programs write to (its low bit picks one of two generations of tables),
waits until no program can still be writing the old one (a map-in-map update
waits an RCU grace period), then reads and clears the old tables in batches.
Counts are exact: nothing is added to an entry while it is read and deleted,
unlike a plain lookup-and-delete sweep.

The tc programs count most packets in a per-CPU flow cache before the
shared table (see flows.bpf.c); a harvest reads the old generation's cache
slots too and merges them with the table, so a :class:`Harvest` has one row
per flow key, whatever CPUs the flow's packets were counted on.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Self

import numpy as np

from podsight.ebpf import BpfObject, Program, RingBuffer
from podsight.ebpf.system import possible_cpus, preflight
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

# struct flow_slot (88 bytes): one per-CPU flow-cache slot.
SLOT_DTYPE = np.dtype([("key", KEY_DTYPE), ("epoch", "<u4"), ("stats", STATS_DTYPE)])
assert SLOT_DTYPE.itemsize == 88

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

# Counter slots (enum counter in flows.bpf.c, same order).
COUNTERS = (
    "packets", "flows", "overflow", "lost_flow", "dns", "lost_dns", "lost_rtt", "drops",
    "lost_drops", "unparsed", "lost_dns_query", "dns_unreadable", "tls", "lost_tls",
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

# The `cfg` global (.rodata, 212 bytes): FlowsConfig.rodata() fills it.
CFG_DTYPE = np.dtype(
    [
        ("nrules", "<u4"), ("wakeup_bytes", "<u4"), ("any_cidr", "u1"), ("any_peer", "u1"),
        ("rtt", "u1"), ("drops", "u1"), ("dns", "u1"), ("cache_bits", "u1"),
        ("purge_reason", "<u2"), ("tls", "u1"), ("_pad", "V3"),
        ("rules", RULE_DTYPE, (MAX_RULES,)),
    ]
)

# struct tls_event (1080 bytes): the first bytes of a TLS ClientHello/ServerHello segment.
TLS_MAX = 1024
TLS_DTYPE = np.dtype(
    [("ts_ns", "<u8"), ("key", KEY_DTYPE), ("len", "<u2"), ("_pad", "<u2"),
     ("data", f"V{TLS_MAX}")]
)
assert TLS_DTYPE.itemsize == 1080

# struct state (16 bytes), written by Flows._write_state().
STATE_DTYPE = np.dtype([("epoch", "<u4"), ("_pad", "<u4"), ("boot_offset_ns", "<u8")])

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
    ("flows.bpf.o", "struct flow_slot", SLOT_DTYPE),
    ("flows.bpf.o", "struct tls_event", TLS_DTYPE),
    ("flows.bpf.o", "cfg", CFG_DTYPE),
)


@dataclass(frozen=True)
class FlowsConfig:
    """What to load: features, filter rules and table sizes."""

    rtt: bool = False
    drops: bool = False
    dns: bool = False
    #: Copy TLS ClientHello/ServerHello segments to the tls_events ring (--tls).
    tls: bool = False
    rules: tuple[Rule, ...] = ()
    max_flows: int = 65536
    ring_bytes: int = 4 << 20
    #: Sockets the RTT table holds per interval (with ``rtt``).
    rtt_entries: int = 16384
    #: Flows the drop table holds per interval (with ``drops``).
    drop_entries: int = 16384
    #: DNS queries waiting for their answer (with ``dns``).
    dns_entries: int = 8192
    #: Slots of the flow cache per CPU and generation (a power of two): flows
    #: counted on a CPU without touching the shared table.
    cache_slots: int = 256
    #: enum skb_drop_reason value of QUEUE_PURGE (0: unknown, nothing is skipped).
    purge_reason: int = 0

    @property
    def cache_bits(self) -> int:
        slots = self.cache_slots
        if slots < 1 or slots & (slots - 1) or slots > 1 << 16:
            raise ValueError(f"cache_slots must be a power of two up to 65536, not {slots}")
        return slots.bit_length() - 1

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
        cfg["cache_bits"] = self.cache_bits
        cfg["purge_reason"] = self.purge_reason
        cfg["tls"] = self.tls
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


def merge_flows(keys: np.ndarray, stats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One row per flow key: several CPUs' cache slots and the table entry, added up.

    Bytes and packets are summed, first_ns is the earliest, last_ns the
    latest, TCP flags are OR-ed, and DSCP and ICMP type/code are those of
    the earliest row (the flow's first packet), as the table keeps them.
    """
    flat = np.ascontiguousarray(keys).view(np.dtype((np.void, KEY_DTYPE.itemsize)))
    _, group = np.unique(flat, return_inverse=True)
    group = group.reshape(-1)
    order = np.lexsort((stats["first_ns"], group))  # by key, then earliest first
    group = group[order]
    st = stats[order]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    out = st[starts].copy()  # the earliest row of each key: first_ns, dscp, icmp
    out["last_ns"] = np.maximum.reduceat(st["last_ns"], starts)
    out["bytes"] = np.add.reduceat(st["bytes"], starts)
    out["packets"] = np.add.reduceat(st["packets"], starts)
    out["tcp_flags"] = np.bitwise_or.reduceat(st["tcp_flags"], starts)
    return keys[order[starts]], out


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
            self._obj.map("tls_events").resize(1 << 20 if cfg.tls else 4096)
            for name in ("flows_0", "flows_1"):
                self._obj.map(name).resize(cfg.max_flows)
            # Tables of features that are off are never written: keep them tiny.
            for name in ("rtt_0", "rtt_1"):
                self._obj.map(name).resize(cfg.rtt_entries if cfg.rtt else 1)
            for name in ("drops_0", "drops_1"):
                self._obj.map(name).resize(cfg.drop_entries if cfg.drops else 1)
            self._obj.map("dns_inflight").resize(cfg.dns_entries if cfg.dns else 1)
            self._obj.map("flow_cache").resize(2 * cfg.cache_slots)
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
            self._epoch = 0
            self._write_state()
            self._ring = RingBuffer(self._obj.map("events"), EVENT_DTYPE)
            self._tls_ring = RingBuffer(self._obj.map("tls_events"), TLS_DTYPE) \
                if cfg.tls else None
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

    def program(self, name: str) -> Program:
        """One of the loaded programs (``flows_ingress``, ...), e.g. to time it with
        :func:`podsight.ebpf.prog_test_run` (bench/flows_prog.py)."""
        return self._obj.program(name)

    # -- reading ----------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        """Sleep until the ring needs draining or ``timeout`` passes."""
        self._ring.wait(timeout)

    def drain(self) -> np.ndarray:
        """Ring records waiting now (EVENT_DTYPE): overflowed packets and DNS answers."""
        return self._ring.drain()

    def drain_tls(self) -> np.ndarray:
        """TLS hello segments waiting now (TLS_DTYPE); empty without ``tls``."""
        if self._tls_ring is None:
            return np.zeros(0, TLS_DTYPE)
        return self._tls_ring.drain()

    def _write_state(self) -> None:
        """The epoch to write to, and the boot-time offset of the coarse clock."""
        # Zero until the machine has been suspended; never negative by read order.
        mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        offset = max(0, time.clock_gettime_ns(time.CLOCK_BOOTTIME) - mono)
        state = np.zeros(1, STATE_DTYPE)
        state["epoch"] = self._epoch
        state["boot_offset_ns"] = offset
        self._obj.map("state").update(b"\0\0\0\0", state.tobytes())

    def _cache_rows(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(keys, stats) the flow cache holds for ``epoch``: every CPU's slots of its generation.

        Not cleared: the next epoch of this generation reads them as empty.
        """
        slots = self.config.cache_slots
        per_cpu = np.dtype([("cpu", SLOT_DTYPE, (possible_cpus(),))])
        _, values = self._obj.map("flow_cache").lookup_batch(np.dtype("<u4"), per_cpu)
        gen = epoch & 1
        rows = values["cpu"][gen * slots:(gen + 1) * slots].reshape(-1)
        rows = rows[(rows["epoch"] == epoch) & (rows["stats"]["packets"] > 0)]
        return rows["key"], rows["stats"]

    def harvest(self) -> Harvest:
        """Advance the epoch, wait for the old generation to go quiet, read and clear it."""
        obj = self._obj
        epoch = self._epoch
        old = epoch & 1
        self._epoch = (epoch + 1) & 0xFFFFFFFF
        self._write_state()
        # Writing an ARRAY_OF_MAPS slot returns only after an RCU grace period: every
        # program that read the old generation has finished by then.
        slot = struct.pack("<I", old)
        obj.map("flow_tables").update(slot, struct.pack("<I", obj.map(f"flows_{old}").fd))
        fk, fs = obj.map(f"flows_{old}").lookup_batch(KEY_DTYPE, STATS_DTYPE, delete=True)
        ck, cs = self._cache_rows(epoch)
        if len(ck):
            fk, fs = merge_flows(np.concatenate([fk, ck]), np.concatenate([fs, cs]))
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
        for name in ("_ring", "_tls_ring"):
            ring = getattr(self, name, None)
            if ring is not None:
                ring.close()
        self._obj.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


