"""Would these NetworkPolicies allow this connection? Kubernetes' own semantics, cached.

A connection is judged in up to two directions, as a CNI enforces it:

- **egress** from the client, when the client is a pod (not host-network):
  isolated if any policy selecting it has ``Egress`` in its types, and then
  allowed only if an egress rule of one of those policies matches the
  server and the port;
- **ingress** to the server, when the server is a pod: the same with
  ``Ingress`` rules and the client as the peer.

Both must allow it. The exceptions Kubernetes documents: a pod cannot
block access to itself (a connection to its own address never leaves its
network namespace: allowed, reason ``loopback``), and traffic between a pod
and the node it runs on is always allowed. Host-network pods are the node's
traffic: no policy isolates them and selectors never match them (only an
``ipBlock`` of their node's address does). A connection to a Service is
judged against its backend pods on the Service's target port, as CNIs judge
it after kube-proxy's DNAT; if backends disagree, the denied one decides
(any of them may be picked).

Verdicts depend only on (client, server, port, protocol), so each such
tuple is judged once (:meth:`Checker.check` is a dict hit after that).
When a verdict would depend on something unknown (labels a SQLite capture
did not store, a named port of a pod whose container ports nobody listed,
namespace labels with no Namespace objects), :class:`~podsight.analysis.policy.world.Unknown`
says what to give.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from podsight.analysis.policy.ends import End, Ends, same_pod
from podsight.analysis.policy.model import (
    EGRESS,
    INGRESS,
    NAMESPACE_NAME_LABEL,
    NetworkPolicy,
    Peer,
    PolicyPort,
    Rule,
    Selector,
)
from podsight.analysis.policy.records import Connection
from podsight.analysis.policy.world import Pod, Unknown, World

ALLOWED, DENIED = "allowed", "denied"
OBJECTS_HINT = ("give --objects FILE (kubectl get namespaces,pods,services -A -o yaml) or "
                "--kubeconfig")


@dataclass(frozen=True)
class Side:
    """One direction's judgement: the pod, the policies isolating it, which allowed it."""

    direction: str  # egress | ingress
    pod: str  # namespace/name
    policies: tuple[str, ...]
    allowed_by: tuple[str, ...]
    verdict: str
    reason: str


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reason: str
    egress: Side | None = None
    ingress: Side | None = None
    service: str = ""  # namespace/name, when the server was a Service
    backend: str = ""  # the backend pod that decided
    backend_port: int = 0

    @property
    def allowed(self) -> bool:
        return self.verdict == ALLOWED


LOOPBACK = Verdict(ALLOWED, "loopback: a pod's connection to itself never leaves its network "
                            "namespace")


class Checker:
    """Judges connections against a set of policies over one :class:`World`."""

    def __init__(self, policies: Iterable[NetworkPolicy], world: World) -> None:
        self.world = world
        self.policies = list(policies)
        self._by_ns: dict[str, list[NetworkPolicy]] = {}
        for p in self.policies:
            self._by_ns.setdefault(p.namespace, []).append(p)
        self.ends = Ends(world)
        self._selecting: dict[Pod, tuple[list[NetworkPolicy], list[NetworkPolicy]]] = {}
        self._verdicts: dict[tuple[End, End, int, str], Verdict] = {}

    # -- the hot path ------------------------------------------------------------------

    def check(self, conn: Connection) -> Verdict:
        ends = self.ends
        src = ends(conn.saddr, conn.src)
        dst = ends(conn.daddr, conn.dst)
        key = (src, dst, conn.dport, conn.proto)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._verdicts[key] = self.judge(src, dst, conn.dport, conn.proto)
        return verdict

    @property
    def distinct(self) -> int:
        """How many distinct (client, server, port, protocol) tuples were judged."""
        return len(self._verdicts)

    def selecting(self, pod: Pod) -> tuple[list[NetworkPolicy], list[NetworkPolicy]]:
        """(policies isolating ``pod`` for ingress, for egress)."""
        got = self._selecting.get(pod)
        if got is None:
            ingress, egress = [], []
            for p in self._by_ns.get(pod.namespace, ()):
                if not _labels_match(p.pod_selector, pod, f"policy {p.ref} selects pods"):
                    continue
                if p.isolates(INGRESS):
                    ingress.append(p)
                if p.isolates(EGRESS):
                    egress.append(p)
            got = self._selecting[pod] = (ingress, egress)
        return got

    # -- judging -------------------------------------------------------------------------

    def judge(self, src: End, dst: End, port: int, proto: str) -> Verdict:
        if src.kind == "loopback" or dst.kind == "loopback" or src.addr == dst.addr \
                or same_pod(src, dst):
            return LOOPBACK
        if dst.kind == "service":
            return self._via_service(src, dst, port, proto)
        return self._judge(src, dst, port, proto)

    def _judge(self, src: End, dst: End, port: int, proto: str) -> Verdict:
        egress = self._side(EGRESS, src, dst, port, proto) if src.is_policy_pod else None
        ingress = self._side(INGRESS, dst, src, port, proto) if dst.is_policy_pod else None
        sides = [s for s in (egress, ingress) if s is not None]
        denied = [s for s in sides if s.verdict == DENIED]
        if denied:
            return Verdict(DENIED, "; ".join(s.reason for s in denied), egress, ingress)
        if not sides:
            return Verdict(ALLOWED, "no pod end: NetworkPolicy does not apply", None, None)
        return Verdict(ALLOWED, "; ".join(s.reason for s in sides), egress, ingress)

    def _via_service(self, src: End, dst: End, port: int, proto: str) -> Verdict:
        svc = dst.service
        assert svc is not None
        known = self.world.services.get((svc.namespace, svc.name))
        if known is None:
            raise Unknown(f"a connection to Service {svc.ref} ({dst.addr}:{port}): its backends "
                          f"are not known; {OBJECTS_HINT} with Services")
        sport = known.port(port, proto.upper())
        if sport is None:
            raise Unknown(f"Service {svc.ref} has no {proto.upper()} port {port}")
        backends = self.world.backends(known)
        if not backends:
            raise Unknown(f"Service {svc.ref} has no backend pods in the objects given")
        first: Verdict | None = None
        for pod in backends:
            target = sport.target
            if isinstance(target, str):
                if pod.ports is None:
                    raise Unknown(f"Service {svc.ref} targets port {target!r} of pod {pod.ref},"
                                  f" whose container ports are not known; {OBJECTS_HINT}")
                number = next((c.port for c in pod.ports
                               if c.name == target and c.protocol == proto.upper()), None)
                if number is None:
                    continue  # this backend does not serve it: kube-proxy skips it
            else:
                number = target
            addr = next((ip for ip in pod.ips if (":" in ip) == (":" in dst.addr)),
                        pod.ips[0] if pod.ips else dst.addr)
            backend = self.ends.pod(pod, addr)
            if src.pod is not None and src.pod.ref == pod.ref:
                verdict = LOOPBACK  # a pod reaching itself through its Service
            else:
                verdict = self._judge(src, backend, number, proto)
            verdict = replace(verdict, service=svc.ref, backend=pod.ref, backend_port=number)
            if not verdict.allowed:
                return verdict
            first = first or verdict
        if first is None:
            raise Unknown(f"no backend of Service {svc.ref} has a {proto.upper()} port named "
                          f"{sport.target!r}")
        return first

    def _side(self, direction: str, subject: End, peer: End, port: int, proto: str) -> Side:
        pod = subject.pod
        assert pod is not None
        ingress, egress = self.selecting(pod)
        policies = egress if direction == EGRESS else ingress
        word = direction.lower()
        refs = tuple(p.ref for p in policies)
        if not policies:
            return Side(word, pod.ref, (), (), ALLOWED, f"{pod.ref} is not isolated for {word}")
        if _is_own_node(pod, peer):
            return Side(word, pod.ref, refs, (), ALLOWED,
                        f"{word}: traffic between a pod and its own node is always allowed")
        # A named port is resolved against the pod the connection goes to.
        server = peer.pod if direction == EGRESS else pod
        allowed = tuple(p.ref for p in policies
                        if any(self._rule_matches(p, rule, peer, port, proto, server)
                               for rule in p.rules(direction)))
        if allowed:
            return Side(word, pod.ref, refs, allowed, ALLOWED,
                        f"{word} allowed by {', '.join(allowed)}")
        towards = "to" if direction == EGRESS else "from"
        return Side(word, pod.ref, refs, (), DENIED,
                    f"{word} {'from' if direction == EGRESS else 'to'} {pod.ref}: no rule of "
                    f"{', '.join(refs)} allows {proto}/{port} {towards} {peer.notation}")

    def _rule_matches(self, policy: NetworkPolicy, rule: Rule, peer: End, port: int,
                      proto: str, server: Pod | None) -> bool:
        if rule.ports and not _port_matches(rule.ports, port, proto, server, policy):
            return False
        if not rule.peers:
            return True
        return any(self.peer_matches(policy, p, peer) for p in rule.peers)

    def peer_matches(self, policy: NetworkPolicy, peer: Peer, end: End) -> bool:
        """Does ``peer`` (of ``policy``'s rules) match ``end``?"""
        if peer.ip_block is not None:
            return peer.ip_block.contains(ipaddress.ip_address(end.addr))
        pod = end.pod
        if pod is None or pod.host_network:
            return False  # selectors pick pods, and never host-network ones
        if peer.namespaces is None:
            if pod.namespace != policy.namespace:
                return False
        elif not self._namespace_matches(peer.namespaces, pod.namespace, policy):
            return False
        if peer.pods is None:
            return True
        return _labels_match(peer.pods, pod, f"policy {policy.ref} selects peer pods")

    def _namespace_matches(self, selector: Selector, namespace: str,
                           policy: NetworkPolicy) -> bool:
        world = self.world
        if not world.namespaces_known and selector.keys() - {NAMESPACE_NAME_LABEL}:
            raise Unknown(f"policy {policy.ref} selects namespaces by labels other than "
                          f"{NAMESPACE_NAME_LABEL} ({selector.text()}), and no Namespace "
                          f"objects were given; {OBJECTS_HINT}")
        return selector.matches(world.namespace_labels(namespace))


def _labels_match(selector: Selector, pod: Pod, what: str) -> bool:
    if selector.empty:
        return True
    if pod.labels is None:
        raise Unknown(f"{what} by label ({selector.text()}), and the labels of pod {pod.ref} "
                      f"are not known (SQLite captures do not store them); {OBJECTS_HINT}")
    return selector.matches(pod.labels)


def _port_matches(ports: Sequence[PolicyPort], port: int, proto: str, server: Pod | None,
                  policy: NetworkPolicy) -> bool:
    want = proto.upper()
    for p in ports:
        if p.protocol != want:
            continue
        if p.port is None:
            return True
        if isinstance(p.port, int):
            if p.end_port is None:
                if p.port == port:
                    return True
            elif p.port <= port <= p.end_port:
                return True
            continue
        # A named port: a container port of the server with this name and protocol.
        if server is None or server.host_network:
            continue
        if server.ports is None:
            raise Unknown(f"policy {policy.ref} allows port {p.port!r} by name, and the "
                          f"container ports of pod {server.ref} are not known; {OBJECTS_HINT}")
        if any(c.name == p.port and c.port == port and c.protocol == want
               for c in server.ports):
            return True
    return False


def _is_own_node(pod: Pod, peer: End) -> bool:
    """Is ``peer`` the node ``pod`` runs on (its address, or a host-network pod there)?"""
    if peer.kind != "node":
        return False
    if pod.host_ip and peer.addr == pod.host_ip:
        return True
    return bool(pod.node) and peer.node == pod.node


def summary(verdicts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {word}" for word, n in verdicts.items())
