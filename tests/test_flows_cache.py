"""The per-CPU flow cache in front of the flows table: counts stay exact.

The tc programs count a packet in their CPU's cache slot when its flow holds
the slot, and move a flow's counts to the shared table when another flow
takes the slot. A harvest reads both for the old generation and merges them
into one row per flow. These tests send interleaved datagrams of several
flows from a lab pod while harvesting every few tens of milliseconds, and
add up what every harvest returned: each flow must come out with exactly
the packets and bytes it sent, with a cache of one slot (every packet moves
the previous flow to the table) and with the default one.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Any

import numpy as np
import pytest

from podsight.gadgets.flows.flows import KEY_DTYPE, Flows, FlowsConfig, Harvest
from podsight.net.rules import Rule

FRONTEND = "shop/frontend"
BACKEND_IP = "10.244.0.5"
PORT = 47201  # nothing listens there: the datagrams are counted, then dropped in backend
ETH, IPV4, UDP = 14, 20, 8

# ROUNDS rounds of one SIZE-byte datagram on each of FLOWS sockets, paced so that the
# test's harvests fall in the middle; prints the sockets' source ports.
INTERLEAVED = r"""
import json, socket, sys, time
host, port, flows, rounds, size = sys.argv[1], *map(int, sys.argv[2:6])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]
for s in socks:
    s.bind(("0.0.0.0", 0))
for i in range(rounds):
    for s in socks:
        s.sendto(b"i" * size, (host, port))
    if i % 20 == 19:
        time.sleep(0.004)
print(json.dumps([s.getsockname()[1] for s in socks]))
"""


def unique_keys(h: Harvest) -> bool:
    raw = np.ascontiguousarray(h.flow_keys).view(np.dtype((np.void, KEY_DTYPE.itemsize)))
    return len(np.unique(raw)) == len(raw)


@pytest.mark.parametrize("cache_slots", [1, 256])
def test_counts_are_exact_across_harvests_and_cache_evictions(lab, cache_slots):
    flows_n, rounds, size = 4, 3000, 60
    config = FlowsConfig(cache_slots=cache_slots,
                         rules=(Rule(protocol=17, dport=(PORT, PORT)),))
    harvests: list[Harvest] = []
    ifindex = socket.if_nametoindex(lab.pod(FRONTEND).veth)
    with Flows(config) as flows:
        flows.attach(ifindex, "ingress")
        flows.attach(ifindex, "egress")
        sender = lab.popen(FRONTEND, [sys.executable, "-c", INTERLEAVED, BACKEND_IP, str(PORT),
                                      str(flows_n), str(rounds), str(size)],
                           stdout=-1, stderr=-1, text=True)
        try:
            while sender.poll() is None:
                harvests.append(flows.harvest())
                time.sleep(0.03)
            out, err = sender.communicate(timeout=30)
        finally:
            if sender.poll() is None:
                sender.kill()
                sender.wait()
        assert sender.returncode == 0, err
        harvests.append(flows.harvest())
        counters = flows.counters()
    sports = json.loads(out)
    busy = [h for h in harvests if len(h.flow_keys)]
    assert len(busy) >= 3, "the sender was too quick to be harvested in the middle"
    assert all(unique_keys(h) for h in harvests)
    got: dict[int, list[int]] = {sport: [0, 0] for sport in sports}
    for h in harvests:
        assert not len(h.events), "nothing overflows a table this size"
        for sport, packets, nbytes in zip(h.flow_keys["sport"].tolist(),
                                          h.flow_stats["packets"].tolist(),
                                          h.flow_stats["bytes"].tolist(), strict=True):
            got[sport][0] += packets
            got[sport][1] += nbytes
    want = [rounds, rounds * (size + UDP + IPV4 + ETH)]
    assert got == {sport: want for sport in sports}, got
    assert counters["packets"] == flows_n * rounds
    assert counters["lost_flow"] == counters["overflow"] == 0, counters


def test_a_flow_counted_on_two_cpus_is_one_row(lab: Any):
    """The same flow from both CPUs in one interval: the harvest adds the two slots up."""
    if len(__import__("os").sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    script = r"""
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 47202))
for cpu in (0, 1, 0, 1):
    os.sched_setaffinity(0, {cpu})
    for _ in range(5):
        s.sendto(b"c" * 10, (sys.argv[1], int(sys.argv[2])))
"""
    config = FlowsConfig(rules=(Rule(protocol=17, dport=(PORT, PORT)),))
    ifindex = socket.if_nametoindex(lab.pod(FRONTEND).veth)
    with Flows(config) as flows:
        flows.attach(ifindex, "ingress")
        proc = lab.exec(FRONTEND, [sys.executable, "-c", script, BACKEND_IP, str(PORT)],
                        capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        h = flows.harvest()
    ours = h.flow_keys["sport"] == 47202
    assert int(ours.sum()) == 1, h.flow_keys
    assert int(h.flow_stats["packets"][ours][0]) == 20
    assert int(h.flow_stats["bytes"][ours][0]) == 20 * (10 + UDP + IPV4 + ETH)
