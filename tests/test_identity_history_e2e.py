"""Identity at each event's own time, end to end: real lab pods talk to the lab's web server
while the pod holding the client's IP is replaced, and ``podsight flows`` (which prints once
per interval) and ``podsight trace tcpconnect -o json`` (whose renderer caches names per
identity) must name every record by the pod that held the IP when it happened. Then the API
server goes away mid-trace: one warning, names kept, one line when it is back.

The pod is replaced the way a controller does it: a new pod object, new name and UID, on the
same IP and network namespace (which is also what a reused netns inode looks like). With the
lab that object lives in the lab's inventory, with Kubernetes in the API.
"""

# ruff: noqa: F401, F811  (pytest fixtures are imported, then named as parameters)

from __future__ import annotations

import contextlib
import copy
import json
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flowsrun import FlowsRun, flows_of
from identity_history import write_inventory
from k8s.fixtures import (
    core,  # fixture
    delete_pod,
    eventually,
    kube,  # fixture
    make_namespace,
    make_pod,
)
from tracing import Trace, connect, matching

WEB_PORT = 8080
CONNECTS = 5

# One process that connects when told (a line "N" on stdin: N connects), printing the source
# port of each: every connect has the same identity key in tcpconnect's renderer.
CLIENT_LOOP = r"""
import json, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
for line in sys.stdin:
    sports = []
    for _ in range(int(line)):
        s = socket.create_connection((host, port), timeout=5)
        sports.append(s.getsockname()[1])
        s.close()
    print(json.dumps(sports), flush=True)
"""


class LabClient:
    """A lab pod's inventory entry the test rewrites: the same IP and namespace, held first by
    pod ``client-a``, then by ``client-b`` (a new pod, new UID), in a private copy of the lab's
    inventory that podsight reads through PODSIGHT_LAB_DIR."""

    def __init__(self, lab: Any, directory: Path) -> None:
        self.path = directory / "inventory.json"
        inventory = lab.inventory()
        items = inventory["items"]
        self.web = next(i for i in items if i["kind"] == "Pod" and i["metadata"]["name"] == "web")
        self.mypod = next(i for i in items if i["kind"] == "Pod"
                          and i["metadata"]["name"] == "mypod")

    def held_by(self, name: str) -> None:
        pod = copy.deepcopy(self.mypod)
        pod["metadata"].update(name=name, uid=str(uuid.uuid4()), labels={"app": "client"})
        write_inventory(self.path, [self.web, pod])


@pytest.fixture
def lab_client(lab: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LabClient:
    client = LabClient(lab, tmp_path)
    client.held_by("client-a")
    monkeypatch.setenv("PODSIGHT_LAB_DIR", str(tmp_path))  # for the podsight we start
    return client


# `podsight flows` prints only at each harvest: with an interval longer than the run, every
# record is printed at the end of the run (--max-time), after both pods' connects.
ONE_HARVEST = ("--interval", "60", "--max-time", "10")


def one_harvest_later(f: FlowsRun) -> Any:
    """Wait for the run's end, where its only harvest is printed."""
    assert f.proc is not None and f.proc.poll() is None, (
        "the run ended before the test's connects were done: raise --max-time")
    return f.wait(timeout=60)


def sports_of(lab: Any, n: int) -> list[int]:
    return [connect(lab, "mypod", lab.pod("web").ipv4, WEB_PORT)["sport"] for _ in range(n)]


def pods_by_sport(records: list[dict[str, Any]], client_ip: str) -> dict[int, set[str]]:
    """Client port -> the pods named for the client side, in both directions of its flows."""
    out: dict[int, set[str]] = {}
    for r in records:
        if r["proto"] != "tcp":
            continue
        if r["saddr"] == client_ip and r["dport"] == WEB_PORT:
            out.setdefault(r["sport"], set()).add(r["src"]["endpoint"].rsplit(":", 1)[0])
        elif r["daddr"] == client_ip and r["sport"] == WEB_PORT:
            out.setdefault(r["dport"], set()).add(r["dst"]["endpoint"].rsplit(":", 1)[0])
    return out


def test_flows_interval_names_each_record_by_the_pod_of_its_time(lab, lab_client):
    """Both pods' connects fall in one harvest interval, printed after the replacement."""
    mypod = lab.pod("mypod")
    with FlowsRun(*ONE_HARVEST) as f:
        first = sports_of(lab, CONNECTS)
        lab_client.held_by("client-b")
        second = sports_of(lab, CONNECTS)
        result = one_harvest_later(f)
    assert result is not None and result.returncode == 0, result.stderr
    named = pods_by_sport(result.records, mypod.ipv4)
    assert {p: named.get(p) for p in first} == {p: {"p/default/client-a"} for p in first}
    assert {p: named.get(p) for p in second} == {p: {"p/default/client-b"} for p in second}
    server = flows_of(result.records, daddr=lab.pod("web").ipv4, dport=WEB_PORT)
    assert server and all(r["dst"]["endpoint"] == f"p/default/web:{WEB_PORT}" for r in server)


@contextlib.contextmanager
def client_loop(lab: Any) -> Iterator[subprocess.Popen[str]]:
    proc = lab.popen("mypod", [sys.executable, "-c", CLIENT_LOOP, lab.pod("web").ipv4,
                               str(WEB_PORT)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     text=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def connects(proc: subprocess.Popen[str], n: int) -> list[int]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(f"{n}\n")
    proc.stdin.flush()
    sports: list[int] = json.loads(proc.stdout.readline())
    return sports


def test_trace_json_templates_follow_the_pod_holding_the_ip(lab, lab_client):
    """One process connects before and after its pod is replaced (same IP, same netns, same
    pid: one identity key, one cached template): each line names the pod of its time."""
    with Trace("--dport", str(WEB_PORT)) as t, client_loop(lab) as proc:
        first = connects(proc, 3)
        assert t.wait_printed(f'"sport":{first[-1]},')  # the template for client-a is made
        lab_client.held_by("client-b")
        second = connects(proc, 3)
        assert t.wait_printed(f'"sport":{second[-1]},')
    events = t.result.events
    assert len({e["pid"] for e in events if e["sport"] in first + second}) == 1
    for port, pod in [(p, "client-a") for p in first] + [(p, "client-b") for p in second]:
        [e] = matching(events, sport=port)
        assert e["src"]["endpoint"] == f"p/default/{pod}:{port}", e
        assert e["dst"]["endpoint"] == f"p/default/web:{WEB_PORT}"


# --- with the Kubernetes API --------------------------------------------------------------------


@pytest.fixture
def api_pods(lab, kube, core):
    """API pods on the lab's IPs: client-a on mypod's, server on web's."""
    ns = make_namespace(core)
    node = socket.gethostname()
    make_pod(core, ns, "client-a", ip=lab.pod("mypod").ipv4, node=node, containers=("c",))
    make_pod(core, ns, "server", ip=lab.pod("web").ipv4, node=node, containers=("s",))
    yield ns
    for pod in ("client-a", "client-b", "server"):
        with contextlib.suppress(Exception):  # already deleted by the test
            delete_pod(core, ns, pod)


def test_flows_with_the_api_names_a_reused_pod_ip_by_time(lab, kube, core, api_pods):
    from podsight.identity.kube import KubeCache

    ns, mypod = api_pods, lab.pod("mypod")
    with KubeCache.connect(kube.kubeconfig) as watcher:  # sees what podsight's watch sees
        watcher.wait_synced(20)
        with FlowsRun("--kubeconfig", kube.kubeconfig, *ONE_HARVEST) as f:
            first = sports_of(lab, CONNECTS)
            delete_pod(core, ns, "client-a")
            make_pod(core, ns, "client-b", ip=mypod.ipv4, node=socket.gethostname(),
                     containers=("c",))
            eventually(lambda: (watcher.pod_by_ip(mypod.ipv4) or _nobody()).name == "client-b",
                       what="the watch to deliver client-b")
            second = sports_of(lab, CONNECTS)
            result = one_harvest_later(f)
    assert result is not None and result.returncode == 0, result.stderr
    named = pods_by_sport(result.records, mypod.ipv4)
    assert {p: named.get(p) for p in first} == {p: {f"p/{ns}/client-a"} for p in first}
    assert {p: named.get(p) for p in second} == {p: {f"p/{ns}/client-b"} for p in second}


def _nobody() -> Any:
    from podsight.identity import PodInfo

    return PodInfo("", "")


LOST = "podsight: warning: lost the Kubernetes API at "
BACK = "identity is current again"


def test_trace_tells_once_when_the_api_goes_away_and_once_when_it_is_back(lab, kube, api_pods):
    ns, web = api_pods, lab.pod("web")
    with Trace("--kubeconfig", kube.kubeconfig, "-n", ns, "--dport", str(WEB_PORT)) as t:
        before = connect(lab, "mypod", web.ipv4, WEB_PORT)
        assert t.wait_printed(f'"sport":{before["sport"]},')
        kube.apiserver("stop")
        try:
            assert t.wait_stderr(LOST), t.peek_stderr()
            during = connect(lab, "mypod", web.ipv4, WEB_PORT)  # named from the cache
            assert t.wait_printed(f'"sport":{during["sport"]},')
        finally:
            kube.apiserver("start")  # the cluster is shared: bring it back even on failure
        assert t.wait_stderr(BACK), t.peek_stderr()
        after = connect(lab, "mypod", web.ipv4, WEB_PORT)
        assert t.wait_printed(f'"sport":{after["sport"]},')
    result = t.result
    assert result.returncode == 0
    notices = [line for line in result.stderr.splitlines() if LOST in line or BACK in line]
    assert len(notices) == 2 and LOST in notices[0], result.stderr  # once each, in order
    assert notices[1] == f"podsight: the Kubernetes API at {kube.server} is back; {BACK}"
    assert "Traceback" not in result.stderr
    for c in (before, during, after):
        [e] = matching(result.events, sport=c["sport"])
        assert e["src"]["endpoint"] == f"p/{ns}/client-a:{c['sport']}", e
        assert e["dst"]["endpoint"] == f"p/{ns}/server:{WEB_PORT}", e
