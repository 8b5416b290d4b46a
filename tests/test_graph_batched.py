"""serve's batched path (a raw ring batch grouped before naming) against the per-record one
(every record decoded, named and added): the graph must come out the same. No kernel."""

from __future__ import annotations

import socket

import numpy as np

from podsight.analysis.graph import Graph
from podsight.gadgets.tcplife.graph import observe, observe_raw
from podsight.gadgets.tcplife.schema import schema
from podsight.gadgets.tcplife.tcplife import CONN_DTYPE, F_OPEN, decode
from podsight.identity.endpoint import Endpoint, PodInfo
from podsight.net.addresses import AddressFormatter
from podsight.pipeline import Admission, RawNaming
from podsight.selectors import PodSelector
from podsight.timefmt import Clock

S = 10**9
CHANGE = 50 * S  # netns 7 changes owner here (a pod replaced by another)
FRONT = PodInfo("shop", "front-1", workload_kind="Deployment", workload_name="front")
FRONT2 = PodInfo("shop", "front2-1", workload_kind="Deployment", workload_name="front2")
WEB = PodInfo("shop", "web-1", workload_kind="Deployment", workload_name="web")
PODS = {"10.0.0.3": WEB, "fd00::3": WEB}


class Resolver:
    """Identity of known shape: netns 7 is FRONT until CHANGE, then FRONT2; netns 8 is
    WEB; addresses in PODS are WEB; anything else is raw."""

    def sync(self, at_ns: int) -> int:
        return 0

    def local_endpoint(self, addr, netns, cgroup_id, *, at_ns=None):
        if netns == 7:
            return Endpoint.for_pod(addr, FRONT if at_ns is not None and at_ns < CHANGE
                                    else FRONT2)
        if netns == 8:
            return Endpoint.for_pod(addr, WEB)
        return Endpoint.raw(addr)

    def endpoint(self, addr, *, at_ns=None):
        pod = PODS.get(addr)
        return Endpoint.for_pod(addr, pod) if pod else Endpoint.raw(addr)

    def remote_endpoint(self, addr, local, *, at_ns=None):
        return self.endpoint(addr, at_ns=at_ns)

    def stable_since(self, remote=(), local=None):
        return CHANGE if local is not None and local[1] == 7 else 0


def addr(text: str) -> bytes:
    if ":" in text:
        return socket.inet_pton(socket.AF_INET6, text)
    return socket.inet_pton(socket.AF_INET, text) + bytes(12)


def mixed_batch() -> np.ndarray:
    rng = np.random.default_rng(11)
    n = 3000
    r = np.zeros(n, CONN_DTYPE)
    r["ts_ns"] = np.sort(rng.integers(40 * S, 60 * S, n))  # both sides of CHANGE
    durations = rng.choice([0, 500_000, 3 * 10**6, 2 * S, 11 * S, 4000 * S], n)
    r["start_ns"] = r["ts_ns"] - np.minimum(durations, r["ts_ns"])
    r["start_ns"][:5] = r["ts_ns"][:5] + 7  # clock skew: duration clipped to 0
    r["cookie"] = np.arange(1, n + 1)
    r["bytes_acked"] = rng.integers(0, 10**6, n)
    r["bytes_received"] = rng.integers(0, 10**6, n)
    kind = rng.integers(0, 6, n)
    # 0: front -> web client v4; 1: front -> web v6; 2: web's server side of a pod client
    # (not counted); 3: web serving an outside client; 4: front -> outside; 5: unknown role
    local = np.array(["10.0.0.2", "fd00::2", "10.0.0.3", "10.0.0.3", "10.0.0.2", "10.0.0.2"])
    peer = np.array(["10.0.0.3", "fd00::3", "10.0.0.2", "203.0.113.9", "198.51.100.1",
                     "10.0.0.3"])
    r["saddr"] = [addr(a) for a in local[kind]]
    r["daddr"] = [addr(a) for a in peer[kind]]
    r["family"] = np.where(kind == 1, socket.AF_INET6, socket.AF_INET)
    r["netns"] = np.where((kind == 2) | (kind == 3), 8, 7)
    r["cgroup_id"] = rng.integers(1, 3, n)
    r["role"] = np.select([(kind == 2) | (kind == 3), kind == 5], [2, 0], 1)
    r["sport"] = np.where(r["role"] == 2, 8080, rng.integers(30000, 60000, n))
    r["dport"] = np.where(r["role"] == 2, rng.integers(30000, 60000, n),
                          rng.choice([8080, 443], n))
    r["flags"][::97] = F_OPEN  # a few read open
    return r


def test_batched_aggregation_equals_per_record():
    raw = mixed_batch()
    fmt = AddressFormatter()
    graphs = []
    for batched in (False, True):
        admission = Admission(schema(Clock()), Resolver(), PodSelector(), frozenset(), [])
        g = Graph(persistent_ns=10 * S, boot_offset_ns=1000 * S)
        # connections followed as open before the batch (read open earlier, fewer bytes)
        before = raw[10:2000:13].copy()
        before["flags"] = F_OPEN
        before["ts_ns"] = before["start_ns"]
        before["bytes_acked"] //= 2
        g.add(observe(admission(decode(before, fmt))))
        assert g.open_connections
        if batched:
            gadget = type("G", (), {"decode": staticmethod(lambda a: decode(a, fmt))})
            observations, kept = observe_raw(raw, RawNaming(gadget, admission))
            kinds = {type(o).__name__ for o in observations}
            assert kinds == {"Connection", "ClosedConnections"}  # both paths taken
            g.add(observations)
        else:
            records = admission(decode(raw, fmt))
            kept = len(records)
            g.add(observe(records))
        graphs.append((g, kept))
    (g1, kept1), (g2, kept2) = graphs
    assert kept1 == kept2 == len(raw)
    edges1 = sorted(g1.snapshot(), key=lambda e: e.id)
    edges2 = sorted(g2.snapshot(), key=lambda e: e.id)
    assert [e.id for e in edges1] == [e.id for e in edges2]
    assert {e.source.id for e in edges1} >= {"w/shop/front", "w/shop/front2", "x/203.0.113.9"}
    assert edges1 == edges2
    assert g1.observations == g2.observations
    assert {k: (h.edge.id, h.sent, h.received, h.persistent, h.last_ns)
            for k, h in g1._open.items()} == {
        k: (h.edge.id, h.sent, h.received, h.persistent, h.last_ns) for k, h in g2._open.items()}
    assert sum(e.closed for e in edges1) > 0 and sum(e.persistent for e in edges1) > 0
