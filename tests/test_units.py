"""The pure logic of the pipeline and the gadgets, without root or a kernel program.

Outcome classification, JSON rendering (the template fast path must write
exactly what the generic encoder writes), flag value parsing and bounds,
filter rules and LPM folding, DNS questions, flow record assembly and the
summary line. Inputs are built here as the kernel lays them out (the same
numpy dtypes the BTF test checks), so these tests run anywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import random
import socket
import struct

import numpy as np
import pytest

from podsight.cli import args as A
from podsight.cli.rules import split_rules
from podsight.errors import UserError
from podsight.gadgets.flows.dns import parse_question
from podsight.gadgets.flows.flows import (
    DROP_DTYPE,
    EV_DNS,
    EV_FLOW,
    KEY_DTYPE,
    RTT_DTYPE,
    STATS_DTYPE,
    Harvest,
)
from podsight.gadgets.flows.flows import (
    EVENT_DTYPE as FLOW_EVENT,
)
from podsight.gadgets.flows.records import Assembler
from podsight.gadgets.tcpconnect import tcpconnect as tc
from podsight.gadgets.tcpconnect.schema import Connect
from podsight.gadgets.tcpconnect.schema import schema as connect_schema
from podsight.identity.endpoint import Endpoint
from podsight.net.addresses import AddressFormatter
from podsight.net.rules import Rule, lpm_entries
from podsight.outputs.json import JsonEncoder, TemplateJson
from podsight.pipeline import Loss, RunResult, Tally, summary_line
from podsight.spec import GadgetSpec
from podsight.timefmt import Clock

# -- tcpconnect: outcomes ----------------------------------------------------------------

@pytest.mark.parametrize(("raw", "err", "sport", "result"), [
    (tc.RAW_OK, 0, 40000, "ok"),
    (tc.RAW_PENDING, 0, 40000, "pending"),
    (tc.RAW_CLOSED, errno.ECONNREFUSED, 40000, "refused"),
    (tc.RAW_CLOSED, errno.ETIMEDOUT, 40000, "timeout"),
    (tc.RAW_CLOSED, errno.EHOSTUNREACH, 40000, "unreachable"),
    (tc.RAW_CLOSED, errno.ENETUNREACH, 40000, "unreachable"),
    (tc.RAW_CLOSED, errno.EADDRNOTAVAIL, 0, "error"),
    (tc.RAW_CLOSED, 0, 40000, "aborted"),
    (tc.RAW_CLOSED, 0, 0, "error"),
])
def test_outcome_classification(raw, err, sport, result):
    assert tc.classify(raw, err, sport) == result


# -- JSON: templates write exactly what the encoder writes -----------------------------------

def events(n: int, seed: int = 7) -> np.ndarray:
    """Ring records of a connect storm: a few identities, varying times, ports, latencies."""
    rng = random.Random(seed)
    rec = np.zeros(n, tc.EVENT_DTYPE)
    for i in range(n):
        ident = rng.randrange(6)
        rec[i]["ts_ns"] = 10**12 + rng.randrange(10**10)
        rec[i]["latency_ns"] = rng.randrange(10**9)
        rec[i]["pid"] = 100 + ident
        rec[i]["tid"] = 100 + ident
        rec[i]["netns"] = 4026531840
        rec[i]["cgroup_id"] = 7
        rec[i]["dport"] = (80, 443, 65521)[ident % 3]  # 65521: a sentinel value, on purpose
        rec[i]["sport"] = rng.choice((0, rng.randrange(1024, 65535)))
        rec[i]["result"] = tc.RAW_OK if ident < 3 else tc.RAW_CLOSED
        rec[i]["err"] = 0 if ident < 4 else errno.ECONNREFUSED
        if ident == 5:
            rec[i]["family"] = socket.AF_INET6
            rec[i]["saddr"] = np.frombuffer(socket.inet_pton(socket.AF_INET6, "fd00::1"), "V16")[0]
            rec[i]["daddr"] = np.frombuffer(socket.inet_pton(socket.AF_INET6, "fd00::2"), "V16")[0]
        else:
            rec[i]["family"] = socket.AF_INET
            rec[i]["saddr"] = np.void(socket.inet_aton("10.0.0.1") + bytes(12))
            rec[i]["daddr"] = np.void(socket.inet_aton(f"10.0.1.{ident}") + bytes(12))
        rec[i]["comm"] = b"curl" if ident != 2 else b'na"me\\'
    return rec


class FakeGadget(tc.TcpConnectGadget):
    """The gadget's template declaration without a loaded kernel object."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.schema = connect_schema(clock)


def test_templates_write_what_the_encoder_writes():
    clock = Clock()
    schema = connect_schema(clock)
    encode = JsonEncoder(schema)
    fmt = AddressFormatter()

    def admit(raw: np.ndarray) -> Connect | None:
        (r,) = tc.decode(raw, fmt)
        if r.pid == 104:  # a filter dropping one identity
            return None
        r.src = Endpoint.raw(r.saddr)
        r.dst = Endpoint(kind="pod", addr=r.daddr, namespace="shop", name="web")
        return r

    spec = FakeGadget(clock).templates(admit)
    fast = TemplateJson(encode, spec)
    records = events(2000)
    lines = fast.lines(records)
    slow = [encode(r) for r in (admit(records[i : i + 1]) for i in range(len(records)))
            if r is not None]
    assert lines == slow
    assert len(lines) < len(records)  # the filtered identity is gone
    parsed = [json.loads(line) for line in lines]
    assert list(parsed[0]) == ["time", "pid", "tid", "comm", "uid", "netns", "ip", "saddr",
                               "sport", "daddr", "dport", "src", "dst", "result", "errno",
                               "latency_ns", "syn_retries"]
    assert {p["comm"] for p in parsed} == {"curl", 'na"me\\'}


def test_encoder_leaves_out_absent_values():
    clock = Clock()
    r = tc.decode(events(1), AddressFormatter())[0]
    r.src = r.dst = Endpoint.raw("10.0.0.1")
    out = json.loads(JsonEncoder(connect_schema(clock))(dataclasses.replace(r)))
    assert out["src"] == {"addr": r.saddr, "port": r.sport, "endpoint": f"r/10.0.0.1:{r.sport}",
                          "kind": "raw"}


# -- flag values --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "ns"), [
    ("5ms", 5_000_000), ("250us", 250_000), ("1.5s", 1_500_000_000), ("2", 2_000_000_000),
    ("1h", 3_600_000_000_000), ("0", 0),
])
def test_durations(text, ns):
    assert A.duration_ns(text) == ns


@pytest.mark.parametrize(("text", "why"), [
    ("99999999999999999999999h", "at most"), ("5xs", "invalid duration"), ("-1s", "invalid"),
    ("inf", "invalid"), ("nan", "invalid"), ("1e999ms", "invalid"), ("", "invalid"),
])
def test_bad_durations(text, why):
    with pytest.raises(argparse.ArgumentTypeError, match=why):
        A.duration_ns(text)


@pytest.mark.parametrize(("text", "n"), [("4096", 4096), ("4K", 4096), ("4MiB", 4 << 20),
                                         ("1.5K", 1536), ("1G", 1 << 30)])
def test_sizes(text, n):
    assert A.size(text) == n


@pytest.mark.parametrize("text", ["inf", "1e999", "-1", "0", "10Q", "", "nan"])
def test_bad_sizes(text):
    with pytest.raises(argparse.ArgumentTypeError, match="invalid size"):
        A.size(text)


def test_power_of_two_bounds():
    assert A.power_of_two("4M", 4096, 1 << 30) == 4 << 20
    for bad in ("1000", "1099511627776", "4294967296", "3M"):
        with pytest.raises(argparse.ArgumentTypeError, match="invalid size"):
            A.power_of_two(bad, 4096, 1 << 30)


# -- filter rules ---------------------------------------------------------------------------------

def test_rules_split_on_bare_or():
    assert split_rules([]) == []
    assert split_rules(["or", "--port", "80", "or", "--port", "443"]) == [
        ["--port", "80"], ["--port", "443"]]
    for bad in (["--port"], ["or"], ["or", "--port", "80", "or"]):
        with pytest.raises(UserError):
            split_rules(bad)


def test_rule_consistency_is_checked():
    with pytest.raises(UserError, match="icmp"):
        Rule(protocol=6, icmp_type=8)
    with pytest.raises(UserError, match="--tcp-flags needs --protocol tcp"):
        Rule(protocol=17, tcp_flags=2)
    assert Rule().empty and not Rule(port=(80, 80)).empty


def test_lpm_folding_gives_narrow_prefixes_the_bits_of_wide_ones():
    rules = [Rule(cidrs=("10.0.0.0/8",)), Rule(cidrs=("10.1.0.0/16", "fd00::/8"))]
    entries = lpm_entries(rules, "cidrs")
    decoded = {(struct.unpack_from("<I", k)[0], k[4:]): v for k, v in entries.items()}
    v4 = bytes(10) + b"\xff\xff"
    assert decoded[(104, v4 + bytes([10, 0, 0, 0]))] == 0b01
    assert decoded[(112, v4 + bytes([10, 1, 0, 0]))] == 0b11  # inside both
    assert decoded[(8, b"\xfd" + bytes(15))] == 0b10
    assert lpm_entries([Rule(port=(1, 2))], "cidrs") == {}


# -- DNS -----------------------------------------------------------------------------------

def question(name: str, qtype: int) -> bytes:
    out = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".") if p) + b"\0"
    return out + qtype.to_bytes(2, "big") + b"\0\x01"


@pytest.mark.parametrize(("raw", "name", "qtype"), [
    (question("web.default.svc.cluster.local", 1), "web.default.svc.cluster.local", "A"),
    (question("example.org", 28), "example.org", "AAAA"),
    (question("x", 4242), "x", "4242"),
    (b"\0\0\x01", ".", "A"),
    (question("cut.example", 1)[:8], "cut", ""),          # cut inside a label
    (b"\x03abc\xc0\x0c", "abc", ""),                      # a pointer has no place in a question
    (b"", "", ""),
])
def test_dns_questions(raw, name, qtype):
    assert parse_question(raw) == (name, qtype)


# -- flow records from one harvest -------------------------------------------------------------

def key(src: str, dst: str, sport: int, dport: int, proto: int, ifindex: int,
        direction: int) -> np.void:
    k = np.zeros(1, KEY_DTYPE)[0]
    v4 = bytes(10) + b"\xff\xff"
    k["saddr"] = np.void(v4 + socket.inet_aton(src))
    k["daddr"] = np.void(v4 + socket.inet_aton(dst))
    k["sport"], k["dport"], k["proto"] = sport, dport, proto
    k["ifindex"], k["direction"], k["family"] = ifindex, direction, 4
    return k


def harvest(flows=(), rtts=(), drops=(), events=()) -> Harvest:
    def arrays(pairs, vdtype):
        ks = np.zeros(len(pairs), KEY_DTYPE)
        vs = np.zeros(len(pairs), vdtype)
        for i, (k, v) in enumerate(pairs):
            ks[i] = k
            for name, value in v.items():
                vs[i][name] = value
        return ks, vs

    fk, fs = arrays(list(flows), STATS_DTYPE)
    rk, rs = arrays(list(rtts), RTT_DTYPE)
    dk, ds = arrays(list(drops), DROP_DTYPE)
    ev = np.zeros(len(events), FLOW_EVENT)
    for i, e in enumerate(events):
        for name, value in e.items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    ev[i][name][sub] = v
            else:
                ev[i][name] = value
    return Harvest(fk, fs, rk, rs, dk, ds, ev)


def test_a_flow_seen_on_two_interfaces_is_one_record():
    a = key("10.0.0.1", "10.0.0.2", 5000, 80, 6, 1, 0)
    b = key("10.0.0.1", "10.0.0.2", 5000, 80, 6, 2, 1)
    h = harvest(flows=[
        (b, {"first_ns": 20, "last_ns": 40, "bytes": 999, "packets": 9, "tcp_flags": 0x10}),
        (a, {"first_ns": 10, "last_ns": 30, "bytes": 300, "packets": 3, "tcp_flags": 0x02}),
    ], events=[{"kind": EV_FLOW, "key": a, "stats": {"first_ns": 5, "last_ns": 50, "bytes": 100,
                                                     "packets": 1, "tcp_flags": 0x01}}])
    (r,) = Assembler().assemble(h)
    assert (r.bytes, r.packets, r.first_ns, r.last_ns) == (400, 4, 5, 50)  # first seen: a
    assert r.tcp_flags == 0x13
    assert [d for _, d in r.interfaces] == ["ingress", "egress"]


def test_rtt_joins_either_direction_and_drops_make_their_own_record():
    fwd = key("10.0.0.1", "10.0.0.2", 5000, 80, 6, 1, 0)
    back = key("10.0.0.2", "10.0.0.1", 80, 5000, 6, 1, 1)
    lost = key("10.0.0.3", "10.0.0.4", 1, 2, 17, 0, 0xFF)
    h = harvest(
        flows=[(fwd, {"first_ns": 1, "last_ns": 2, "bytes": 60, "packets": 1}),
               (back, {"first_ns": 3, "last_ns": 4, "bytes": 60, "packets": 1})],
        rtts=[(key("10.0.0.2", "10.0.0.1", 80, 5000, 6, 0, 0xFF),
               {"min_us": 10, "max_us": 30, "last_us": 20, "samples": 2, "sum_us": 40})],
        drops=[(lost, {"bytes": 100, "packets": 2, "last_ns": 9, "reason": 6})],
    )
    records = {(r.saddr, r.sport): r for r in Assembler({6: "NETFILTER_DROP"}).assemble(h)}
    assert records[("10.0.0.1", 5000)].rtt is not None  # keyed by the reverse socket
    assert records[("10.0.0.2", 80)].rtt.avg_us == 20
    dropped = records[("10.0.0.3", 1)]
    assert (dropped.bytes, dropped.interfaces, dropped.drops.reason) == (
        0, [], "NETFILTER_DROP")


def test_a_dns_answer_waits_one_interval_for_its_flow():
    asked = key("10.0.0.1", "10.96.0.53", 4000, 53, 17, 1, 0)
    answer = {"kind": EV_DNS, "ts_ns": 7, "key": key("10.96.0.53", "10.0.0.1", 53, 4000, 17,
                                                     1, 1),
              "latency_ns": 500, "dns_id": 9, "dns_flags": 0x8183}
    asm = Assembler()
    assert asm.assemble(harvest(events=[answer])) == []  # its packets come next interval
    (r,) = asm.assemble(harvest(flows=[(asked, {"first_ns": 1, "last_ns": 2, "bytes": 80,
                                                "packets": 1})]))
    assert (r.dns[0].id, r.dns[0].rcode, r.dns[0].latency_ns) == (9, "NXDOMAIN", 500)
    # On the last harvest nothing waits: an answer without its flow is reported alone.
    (alone,) = Assembler().assemble(harvest(events=[answer]), final=True)
    assert alone.packets == 0 and alone.dns[0].id == 9


# -- the summary line -------------------------------------------------------------------------

def test_summary_line_names_every_cause_and_note():
    spec = GadgetSpec(name="x", command=("x",), help="", description="", factory="x:y",
                      reports_pending=True)
    result = RunResult(records=5, pending=2, unwritten=3, stopped_by="--max-time reached",
                       tally=Tally(losses={"a": Loss(4, "ring full"), "b": Loss(0, "never")},
                                   skipped_runs=1))
    assert summary_line(spec, result) == (
        "podsight: 5 events, 4 lost, 2 pending (ring full: 4); 1 program runs skipped by the "
        "kernel (nested on one CPU; events in them were not seen); 3 events not written; "
        "stopped: --max-time reached")
    assert summary_line(spec, RunResult()) == "podsight: 0 events, 0 lost, 0 pending"
