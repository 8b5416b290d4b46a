"""Identity at an event's time, without an API server: the pasts the sources keep, the lab
inventory as a source that changes under a running resolver (real files, real network
namespaces), and tcpconnect's cache of rendered templates, which must never name a pod that
did not hold the address at the event's own time.

The same with a real kube-apiserver is in test_kube_history.py, and through the CLI with
real traffic in test_identity_history_e2e.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from identity_history import Netns, boot_ns, lab_pod, lab_service, write_inventory

from podsight.identity import Resolver
from podsight.identity.history import ChangeFeed, Timeline
from podsight.identity.lab import LabInventory

X, Y = "10.251.0.7", "10.251.0.8"  # never routed: these tests send no traffic


def needs_netns() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("making network namespaces needs root and iproute2")


# --- the past of one kind of key ----------------------------------------------------------


def test_timeline_answers_at_a_time_and_stays_bounded() -> None:
    feed = ChangeFeed()
    tl: Timeline[str, str] = Timeline(feed, "ip", keep_ns=1000, per_key=3)
    start = feed.position
    assert tl.held(X, "a", 5) == (0, "a")  # no change seen: the current holder, always
    tl.changed(X, "a", None, stamp=100)
    tl.changed(X, None, "b", stamp=200)
    assert [tl.held(X, "b", t) for t in (0, 99, 100, 199, 200, 10**12)] == [
        (0, "a"), (0, "a"), (100, None), (100, None), (200, "b"), (200, "b")]
    assert tl.since(X) == 200 and tl.since(Y) == 0
    tl.changed(X, "b", "b2", same=True)  # the same holder, new details: no new interval
    assert tl.held(X, "b2", 300) == (200, "b2") and tl.held(X, "b2", 150) == (100, None)
    tl.changed(X, "b2", "c", stamp=150)  # a stamp out of order is moved after the last
    assert tl.held(X, "c", 200) == (200, "c")
    # at most per_key (3) holders: "a" is dropped, the oldest kept one answers for older
    assert tl.held(X, "c", 199) == (0, None) and tl.held(X, "c", 50) == (0, None)
    # forgotten keep_ns after its last change: the current holder answers again
    tl.changed(Y, None, "y", stamp=5000)
    assert len(tl) == 1 and tl.held(X, "c", 150) == (0, "c")
    _, end, tokens = feed.read(start)
    assert tokens == [("ip", X)] * 4 + [("ip", Y)] and end == start + 5
    assert feed.read(end)[2] == []


def test_change_feed_readers_that_fall_behind_start_over() -> None:
    feed = ChangeFeed(window=4)
    for i in range(20):
        feed.note(("ip", str(i)))
    now, end, tokens = feed.read(0)
    assert tokens is None and end == 20 and abs(now - boot_ns()) < 10**10
    assert feed.read(17)[2] == [("ip", "17"), ("ip", "18"), ("ip", "19")]


def test_a_source_starts_recording_after_its_first_listing(tmp_path: Path) -> None:
    path = tmp_path / "inventory.json"
    write_inventory(path, [lab_pod("a", X)])
    inv = LabInventory(path)
    assert inv.refresh()
    assert inv.pod_by_ip_at(X, 1)[1].name == "a"  # type: ignore[union-attr]
    assert inv.pod_by_ip_at(X, 1)[0] == 0  # the initial state has no past


# --- the lab inventory under a running resolver --------------------------------------------


@pytest.mark.root
def test_lab_pod_replaced_on_the_same_ip_and_netns(tmp_path: Path) -> None:
    """Pod a holds X in its namespace; it is deleted and pod b gets X in a new namespace (whose
    inode the kernel may well reuse). Events before the change are a's, after it b's,
    between the two nobody's (raw), and older than anything known the oldest holder's."""
    needs_netns()
    path = tmp_path / "inventory.json"
    with Netns("a") as ns_a:
        write_inventory(path, [lab_pod("a", X, netns=ns_a.name),
                               lab_pod("server", Y), lab_service("svc", "10.96.200.1")])
        with Resolver(lab=LabInventory(path), node_name="n1") as r:
            t1 = boot_ns()
            assert r.endpoint(X, at_ns=t1).notation == "p/default/a"
            assert r.local_endpoint(X, ns_a.inode, 0, at_ns=t1).notation == "p/default/a"
            inode_a = ns_a.inode
            ns_a.delete()
            write_inventory(path, [lab_pod("server", Y)])  # a is gone, so is the Service
            t_gone = boot_ns()
            assert r.endpoint(X, at_ns=t_gone).kind == "raw"  # (a state nobody looks at
            # before the next change is never seen: podsight learns states, not steps)
            with Netns("b") as ns_b:
                write_inventory(path, [lab_pod("b", X, netns=ns_b.name), lab_pod("server", Y)])
                t2 = boot_ns()
                assert r.endpoint(X, at_ns=t2).notation == "p/default/b"
                assert r.endpoint(X, at_ns=t1).notation == "p/default/a"
                assert r.endpoint(X, at_ns=t_gone).notation == f"r/{X}"
                assert r.endpoint(X, at_ns=1).notation == "p/default/a"  # older than all
                assert r.endpoint(X).notation == "p/default/b"  # now
                assert r.endpoint("10.96.200.1", at_ns=t1).notation == "s/default/svc"
                assert r.endpoint("10.96.200.1", at_ns=t2).kind == "raw"
                # the socket's namespace names its pod at the event's time
                assert r.local_endpoint(X, ns_b.inode, 0, at_ns=t2).notation == "p/default/b"
                assert r.local_endpoint(X, inode_a, 0, at_ns=t1).notation == "p/default/a"
                pod = r.local_pod(ns_b.inode, at_ns=t2)
                assert pod is not None and pod.name == "b"
                old = r.local_pod(inode_a, at_ns=t1)
                assert old is not None and old.name == "a"
                # answers are memoised: no change, no new generation, the same objects
                gen = r.generation
                assert r.endpoint(X, at_ns=boot_ns()) is r.endpoint(X, at_ns=t2)
                assert r.generation == gen
                assert t1 < r.stable_since([Y], (X, ns_b.inode, 0)) <= t2


def test_lab_change_noticed_late_is_dated_by_the_file(tmp_path: Path) -> None:
    """The resolver looks at the inventory only when asked (flows: once per interval); a
    change it sees late is still dated from when the file said so."""
    path = tmp_path / "inventory.json"
    write_inventory(path, [lab_pod("a", X)])
    with Resolver(lab=LabInventory(path), node_name="n1") as r:
        t1 = boot_ns()
        write_inventory(path, [lab_pod("b", X)])
        t2 = boot_ns()
        t3 = boot_ns()
        # nothing asked in between: the first question is about t3
        assert r.endpoint(X, at_ns=t3).name == "b"
        assert r.endpoint(X, at_ns=t2).name == "b"
        assert r.endpoint(X, at_ns=t1).name == "a"


def test_labels_change_without_a_new_holder(tmp_path: Path) -> None:
    path = tmp_path / "inventory.json"
    uid = "5a3e0c8e-0000-4000-8000-000000000001"
    write_inventory(path, [lab_pod("a", X, uid=uid, labels={"v": "1"})])
    with Resolver(lab=LabInventory(path), node_name="n1") as r:
        t1 = boot_ns()
        assert r.endpoint(X, at_ns=t1).labels == {"v": "1"}
        write_inventory(path, [lab_pod("a", X, uid=uid, labels={"v": "2"})])
        t2 = boot_ns()
        assert r.endpoint(X, at_ns=t2).labels == {"v": "2"}
        assert r.stable_since([X]) < t1  # the same pod: it holds X as before


# --- tcpconnect's rendered templates ---------------------------------------------------------


def _records(rows: list[tuple[int, str, str]], pid: int = 4242) -> np.ndarray:
    """Connect records as the kernel program writes them: (ts, saddr, daddr), all else equal,
    so that every record has the same identity key (one template)."""
    from podsight.gadgets.tcpconnect.tcpconnect import EVENT_DTYPE

    out = np.zeros(len(rows), dtype=EVENT_DTYPE)
    for i, (ts, saddr, daddr) in enumerate(rows):
        out[i]["ts_ns"] = ts
        out[i]["latency_ns"] = 1000 + i
        out[i]["saddr"] = socket.inet_pton(socket.AF_INET, saddr).ljust(16, b"\0")
        out[i]["daddr"] = socket.inet_pton(socket.AF_INET, daddr).ljust(16, b"\0")
        out[i]["pid"] = out[i]["tid"] = pid
        out[i]["family"] = socket.AF_INET
        out[i]["sport"] = 40000 + i
        out[i]["dport"] = 8080
        out[i]["comm"] = b"client"
    return out


def _renderer(r: Resolver) -> Any:
    """tcpconnect's JSON templates with the pipeline's identity stage, as `podsight trace
    tcpconnect -o json` wires them (the gadget's kernel side is not loaded: raw records
    come from the test, decoded by the gadget's own decoder)."""
    from podsight.gadgets.tcpconnect import tcpconnect as tc
    from podsight.gadgets.tcpconnect.schema import schema
    from podsight.outputs.json import JsonEncoder, TemplateJson
    from podsight.pipeline import Admission, _TemplateIdentity
    from podsight.selectors import PodSelector
    from podsight.timefmt import Clock

    class Unloaded(tc.TcpConnectGadget):
        def __init__(self) -> None:
            self.clock = Clock()
            self.schema = schema(self.clock)
            self._fmt = tc.AddressFormatter()

        def decode(self, raw: np.ndarray) -> list[Any]:
            return tc.decode(raw, self._fmt)

    gadget = Unloaded()
    admission = Admission(gadget.schema, r, PodSelector(), frozenset(), [])
    spec = gadget.templates(lambda raw: admission.one(gadget.decode(raw)[0]))
    return TemplateJson(JsonEncoder(gadget.schema), spec, _TemplateIdentity(gadget, admission))


def _names(lines: list[str]) -> list[tuple[str, str]]:
    return [(e["src"]["endpoint"].rsplit(":", 1)[0], e["dst"]["endpoint"].rsplit(":", 1)[0])
            for e in map(json.loads, lines)]


def test_json_template_follows_the_holder_at_each_event_time(tmp_path: Path) -> None:
    """One identity key (same process, addresses and port) before and after X changes hands,
    in separate batches and within one batch: each line names the holder at its own time."""
    path = tmp_path / "inventory.json"
    write_inventory(path, [lab_pod("a", X), lab_pod("server", Y)])
    with Resolver(lab=LabInventory(path), node_name="n1") as r:
        render = _renderer(r)
        t = [boot_ns()]
        assert _names(render.lines(_records([(t[0], X, Y), (t[0] + 1, X, Y)]))) == [
            ("p/default/a", "p/default/server")] * 2  # the template is made and reused
        write_inventory(path, [lab_pod("b", X), lab_pod("server", Y)])
        t.append(boot_ns())
        # a late event of a's and b's first ones, in one batch, in either order
        batch = _records([(t[1], X, Y), (t[0] + 2, X, Y), (t[1] + 1, X, Y)])
        assert _names(render.lines(batch)) == [
            ("p/default/b", "p/default/server"), ("p/default/a", "p/default/server"),
            ("p/default/b", "p/default/server")]
        # the peer changes hands too: the remote side of the template follows it
        write_inventory(path, [lab_pod("b", X), lab_pod("server2", Y)])
        t.append(boot_ns())
        assert _names(render.lines(_records([(t[2], X, Y), (t[1] + 2, X, Y)]))) == [
            ("p/default/b", "p/default/server2"), ("p/default/b", "p/default/server")]
        # a change elsewhere (to an address named before) makes a new generation: the
        # template is checked again, and kept, not made again
        assert _names(render.lines(_records([(boot_ns(), X, Y)]))) == [
            ("p/default/b", "p/default/server2")]
        assert r.endpoint("10.2.0.1").kind == "raw"
        made = {key: entry[0] for key, entry in render._templates.items()}
        generation = r.generation
        write_inventory(path, [lab_pod("b", X), lab_pod("server2", Y), lab_pod("c", "10.2.0.1")])
        assert _names(render.lines(_records([(boot_ns(), X, Y)]))) == [
            ("p/default/b", "p/default/server2")]
        assert r.generation > generation
        assert made and all(render._templates[key][0] is tpl for key, tpl in made.items())


# --- a container that stopped: real containerd, real cgroup, real namespace --------------------


@pytest.fixture(scope="module")
def containerd() -> Iterator[Any]:
    from identity_local_containerd import running_containerd

    with running_containerd(need_cgroup2=True) as daemon:
        yield daemon


def test_stopped_container_is_named_for_its_earlier_events(containerd: Any) -> None:
    """A busybox container with kubelet's labels and cgroup layout, in its own network
    namespace: named by its runtime listing while it runs; after it is removed (and a poll
    saw it gone), events from before still name its pod and container, later ones do not."""
    from identity_local_sys import cgroup_mounts, remove_cgroup_tree

    from podsight.identity.local import ContainerdClient, LocalIdentity

    needs_netns()
    uid, cid = str(uuid.uuid4()), secrets.token_hex(32)
    top = "podsight-test-" + secrets.token_hex(4)
    cgroup = f"/{top}/kubepods/besteffort/pod{uid}/{cid}"
    labels = {"io.kubernetes.pod.namespace": "shop", "io.kubernetes.pod.name": "worker-7",
              "io.kubernetes.pod.uid": uid, "io.kubernetes.container.name": "busy"}
    with Netns("ctr") as ns:
        local = LocalIdentity(runtimes=[ContainerdClient(containerd.socket)])
        try:
            containerd.run(cid, labels=labels, netns=f"/var/run/netns/{ns.name}", cgroup=cgroup,
                           args=("sh", "-c", "exec /bin/busybox sleep 3600"))
            local.refresh()
            cgroup_id = local.cgroups.id_for_path(cgroup)
            assert cgroup_id
            with Resolver(lab=LabInventory(Path("/nonexistent/inventory.json")),
                          node_name="n1", local=local, local_interval=3600.0) as r:
                t1 = boot_ns()
                ep = r.local_endpoint(X, ns.inode, cgroup_id, at_ns=t1)
                assert (ep.notation, ep.container) == ("p/shop/worker-7", "busy")
                containerd.remove(cid)
                local.refresh()  # the poll that finds it gone
                t2 = boot_ns()
                assert r.local_endpoint(X, ns.inode, cgroup_id, at_ns=t2).kind == "raw"
                ep = r.local_endpoint(X, ns.inode, cgroup_id, at_ns=t1)
                assert (ep.notation, ep.container) == ("p/shop/worker-7", "busy")
        finally:
            containerd.remove(cid)
            local.close()
            for mount in cgroup_mounts():
                remove_cgroup_tree(mount, top)
