"""Find the agent pods and reach each through the API server's pod port-forward.

The agent listens on its pod's loopback only; the API server's port-forward
(API server -> kubelet -> runtime, which dials the port inside the pod's
network namespace: the node's, for the hostNetwork agent) is the one path to
it that needs no open node port and is authorised by the user's own RBAC
(``create pods/portforward`` in the agent namespace).

One ``kubectl port-forward`` process per node, on an ephemeral local port:
it is the reference client of that protocol (SPDY, with the websocket
fallback newer kubectls have), it keeps the user's credentials plugins, and a
process per node isolates a node whose stream breaks. The forward is up when
kubectl prints ``Forwarding from 127.0.0.1:PORT``; a node whose agent is not
ready, or whose forward does not come up, is reported, not fatal.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from podsight.cluster.deployment import AGENT_PORT, AGENT_SELECTOR, NAMESPACE
from podsight.cluster.endpoints import NodeEndpoint
from podsight.cluster.kubectl import Kubectl, last_line

FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) ->")


@dataclass(frozen=True)
class AgentPod:
    pod: str
    node: str
    ready: bool
    reason: str  # why not ready ("" when ready)


def _reason(pod: dict[str, Any]) -> str:
    st = pod.get("status", {})
    if pod["metadata"].get("deletionTimestamp"):
        return "terminating"
    for cs in st.get("containerStatuses") or []:
        state = cs.get("state", {})
        for key in ("waiting", "terminated"):
            if key in state:
                detail = state[key].get("reason") or key
                msg = state[key].get("message")
                return f"{detail}: {msg}" if msg else detail
        if not cs.get("ready"):
            return "running, not ready (readiness probe)"
    for cond in st.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") != "True":
            return f"unschedulable: {cond.get('message', '')}".rstrip(": ")
    return str(st.get("phase", "unknown"))


def _ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions") or [])


def find_agents(kubectl: Kubectl, namespace: str = NAMESPACE,
                nodes: Iterable[str] | None = None) -> list[AgentPod]:
    """The agent pods (by label, in the deploy namespace), on ``nodes`` if given."""
    items = kubectl.json("get", "pods", "-n", namespace, "-l", AGENT_SELECTOR)["items"]
    wanted = set(nodes) if nodes is not None else None
    agents = []
    for pod in items:
        node = pod.get("spec", {}).get("nodeName") or ""
        if wanted is not None and node not in wanted:
            continue
        ready = _ready(pod)
        agents.append(AgentPod(pod["metadata"]["name"], node, ready,
                               "" if ready else _reason(pod)))
    return sorted(agents, key=lambda a: (a.node, not a.ready, a.pod))


def nodes_of_pods(kubectl: Kubectl, *, namespace: str | None = None,
                  all_namespaces: bool = False, selector: str | None = None,
                  pods: Iterable[str] | None = None) -> set[str]:
    """The nodes the selected pods run on: where a gadget must run to see them."""
    args = ["get", "pods"]
    args += ["--all-namespaces"] if all_namespaces else (["-n", namespace] if namespace else [])
    if selector:
        args += ["-l", selector]
    names = set(pods) if pods is not None else None
    out = set()
    for pod in kubectl.json(*args)["items"]:
        if names is not None and pod["metadata"]["name"] not in names:
            continue
        node = pod.get("spec", {}).get("nodeName")
        if node:
            out.add(node)
    return out


@dataclass
class PortForward:
    """One ``kubectl port-forward pod/NAME :PORT`` process, and the local port it got."""

    node: str
    pod: str
    proc: subprocess.Popen[str]
    local_port: int = 0
    _stderr: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, kubectl: Kubectl, namespace: str, agent: AgentPod,
              remote_port: int = AGENT_PORT) -> PortForward:
        proc = kubectl.popen(["port-forward", "-n", namespace, f"pod/{agent.pod}",
                              "--address", "127.0.0.1", f":{remote_port}"])
        return cls(agent.node, agent.pod, proc)

    def wait_ready(self, deadline: float) -> str | None:
        """Wait for the ``Forwarding from`` line; None when up, else why not."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ, "out")
        sel.register(self.proc.stderr, selectors.EVENT_READ, "err")
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return "port-forward did not come up in time"
                for key, _ in sel.select(left):
                    line = key.fileobj.readline()  # type: ignore[union-attr]
                    if not line:
                        self.proc.wait(5)
                        return f"port-forward exited: {last_line(''.join(self._stderr))}"
                    if key.data == "err":
                        self._stderr.append(line)
                    elif m := FORWARDING.search(line):
                        self.local_port = int(m.group(1))
                        self._drain()
                        return None
        finally:
            sel.close()

    def _drain(self) -> None:
        """Keep reading kubectl's output: it prints a line per connection, and a full pipe
        would block the forward itself."""
        def pump(f: IO[str], keep: list[str] | None) -> None:
            with contextlib.suppress(ValueError, OSError):
                for line in f:
                    if keep is not None:
                        keep.append(line)
                        del keep[:-20]

        assert self.proc.stdout is not None and self.proc.stderr is not None
        for f, keep in ((self.proc.stdout, None), (self.proc.stderr, self._stderr)):
            threading.Thread(target=pump, args=(f, keep), daemon=True,
                             name=f"port-forward {self.pod}").start()

    @property
    def error(self) -> str:
        """kubectl's last complaint, if any (a forward that broke says why here)."""
        return last_line("".join(self._stderr)) if self._stderr else ""

    @property
    def endpoint(self) -> NodeEndpoint:
        return NodeEndpoint(self.node, "127.0.0.1", self.local_port)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                with contextlib.suppress(OSError, ValueError):
                    f.close()


@dataclass
class Reach:
    """The outcome of reaching the agents: endpoints to stream from, and nodes left out."""

    endpoints: list[NodeEndpoint]
    unreachable: dict[str, str]  # node -> why (not ready, no agent, forward failed)
    forwards: list[PortForward]


@contextlib.contextmanager
def agent_endpoints(kubectl: Kubectl, *, namespace: str = NAMESPACE,
                    nodes: Iterable[str] | None = None, port: int = AGENT_PORT,
                    timeout: float = 20.0) -> Iterator[Reach]:
    """Port-forwards to the ready agent of every wanted node, closed on exit.

    ``nodes=None`` means every node with an agent pod. A wanted node without
    an agent pod is reported as unreachable, as is one whose agent is not
    ready or whose forward does not come up within ``timeout``.
    """
    wanted = sorted(set(nodes)) if nodes is not None else None
    agents = find_agents(kubectl, namespace, wanted)
    unreachable: dict[str, str] = {}
    chosen: dict[str, AgentPod] = {}
    for a in agents:  # ready pods sort first per node (a rolling update can have two)
        if a.node in chosen or a.node in unreachable:
            continue
        if a.ready:
            chosen[a.node] = a
        else:
            unreachable[a.node or a.pod] = f"agent {a.pod} not ready: {a.reason}"
    for node in wanted or ():
        if node not in chosen and node not in unreachable:
            unreachable[node] = f"no podsight agent pod on this node (namespace {namespace})"
    forwards = [PortForward.start(kubectl, namespace, a, port) for a in chosen.values()]
    try:
        deadline = time.monotonic() + timeout
        endpoints = []
        for fw in forwards:
            why = fw.wait_ready(deadline)
            if why is None:
                endpoints.append(fw.endpoint)
            else:
                unreachable[fw.node] = f"agent {fw.pod}: {why}"
        yield Reach(endpoints, unreachable, forwards)
    finally:
        for fw in forwards:
            fw.close()
