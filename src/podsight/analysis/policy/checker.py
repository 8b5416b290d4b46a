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


@dataclass(frozen=True, slots=True)
class Judged:
    """One direction's decision, for every pod of a class alike (no names in it)."""

    policies: tuple[str, ...]
    allowed_by: tuple[str, ...]
    verdict: str
    why: str  # isolated | not-isolated | own-node


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policies decide for a (client class, server class, port, protocol)."""

    verdict: str
    egress: Judged | None = None
    ingress: Judged | None = None
    loopback: bool = False
    backend: End | None = None  # a Service's backend that decided
    backend_port: int = 0


LOOPBACK_DECISION = Decision(ALLOWED, loopback=True)
LOOPBACK_REASON = "loopback: a pod's connection to itself never leaves its network namespace"


class Verdict:
    """The verdict on one connection: the class-level :class:`Decision` and the connection's
    own ends, worded (``reason``, ``egress``, ``ingress``) only when someone asks."""

    __slots__ = ("_egress", "_ingress", "_reason", "decision", "dst", "port", "proto", "src")

    def __init__(self, decision: Decision, src: End, dst: End, port: int, proto: str) -> None:
        self.decision = decision
        self.src = src
        self.dst = dst
        self.port = port
        self.proto = proto
        self._reason: str | None = None
        self._egress: Side | bool | None = False  # False: not worded yet
        self._ingress: Side | bool | None = False

    @property
    def verdict(self) -> str:
        return self.decision.verdict

    @property
    def allowed(self) -> bool:
        return self.decision.verdict == ALLOWED

    @property
    def service(self) -> str:
        svc = self.dst.service if self.decision.backend is not None else None
        return svc.ref if svc is not None else ""

    @property
    def backend(self) -> str:
        b = self.decision.backend
        return b.pod.ref if b is not None and b.pod is not None else ""

    @property
    def backend_port(self) -> int:
        return self.decision.backend_port

    @property
    def egress(self) -> Side | None:
        if self._egress is False:
            d = self.decision
            server = d.backend or self.dst
            port = d.backend_port if d.backend is not None else self.port
            self._egress = _side(EGRESS, d.egress, self.src, server, port, self.proto)
        assert not isinstance(self._egress, bool)
        return self._egress

    @property
    def ingress(self) -> Side | None:
        if self._ingress is False:
            d = self.decision
            server = d.backend or self.dst
            port = d.backend_port if d.backend is not None else self.port
            self._ingress = _side(INGRESS, d.ingress, server, self.src, port, self.proto)
        assert not isinstance(self._ingress, bool)
        return self._ingress

    @property
    def reason(self) -> str:
        if self._reason is None:
            d = self.decision
            if d.loopback:
                self._reason = LOOPBACK_REASON
            else:
                sides = [s for s in (self.egress, self.ingress) if s is not None]
                if not sides:
                    self._reason = "no pod end: NetworkPolicy does not apply"
                elif d.verdict == DENIED:
                    self._reason = "; ".join(s.reason for s in sides if s.verdict == DENIED)
                else:
                    self._reason = "; ".join(s.reason for s in sides)
        return self._reason


def _side(direction: str, judged: Judged | None, subject: End, peer: End, port: int,
          proto: str) -> Side | None:
    """A direction's decision in words, for ``subject`` (the isolated pod) and ``peer``."""
    if judged is None or subject.pod is None:
        return None
    pod = subject.pod.ref
    word = direction.lower()
    if judged.why == "not-isolated":
        reason = f"{pod} is not isolated for {word}"
    elif judged.why == "own-node":
        reason = f"{word}: traffic between a pod and its own node is always allowed"
    elif judged.verdict == ALLOWED:
        reason = f"{word} allowed by {', '.join(judged.allowed_by)}"
    else:
        towards = "to" if direction == EGRESS else "from"
        reason = (f"{word} {'from' if direction == EGRESS else 'to'} {pod}: no rule of "
                  f"{', '.join(judged.policies)} allows {proto}/{port} {towards} "
                  f"{peer.notation}")
    return Side(word, pod, judged.policies, judged.allowed_by, judged.verdict, reason)


class Checker:
    """Judges connections against a set of policies over one :class:`World`.

    A decision depends on a pod only through its namespace, labels, container ports,
    node, and (when some ipBlock could match it) its address: pods alike in those are
    one *class*, and each (client class, server class, port, protocol) is decided once.
    """

    def __init__(self, policies: Iterable[NetworkPolicy], world: World) -> None:
        self.world = world
        self.policies = list(policies)
        self._by_ns: dict[str, list[NetworkPolicy]] = {}
        for p in self.policies:
            self._by_ns.setdefault(p.namespace, []).append(p)
        # Every distinct ipBlock: which of them contain an address is all that ipBlock
        # peers can tell about it.
        self._blocks = list(dict.fromkeys(peer.ip_block for p in self.policies
                                          for rule in (*p.ingress, *p.egress)
                                          for peer in rule.peers
                                          if peer.ip_block is not None))
        self.ends = Ends(world)
        self._fast_ends = self.ends.fast
        self._class_ids: dict[tuple[object, ...], int] = {}
        self._selecting: dict[Pod, tuple[list[NetworkPolicy], list[NetworkPolicy]]] = {}
        self._decisions: dict[tuple[object, ...], Decision] = {}
        self._peer_memo: dict[tuple[int, int], bool] = {}
        self._judged: dict[Judged, Judged] = {}
        self._selecting_class: dict[int, tuple[list[NetworkPolicy], list[NetworkPolicy],
                                               tuple[str, ...], tuple[str, ...]]] = {}

    # -- the hot path ------------------------------------------------------------------

    def check(self, conn: Connection) -> Verdict:
        """The verdict on one connection: two end lookups and one decision lookup, after
        the first connection of each class pair."""
        decision, src, dst = self.decision(conn)
        return Verdict(decision, src, dst, conn.dport, conn.proto)

    def decision(self, conn: Connection) -> tuple[Decision, End, End]:
        """The decision on one connection and its two ends, without wording anything: the
        hot path of a check that prints only the denied ones."""
        # Ends' own memo, inlined (a call per end was a third of this method's time)
        fast = self._fast_ends
        hint = conn.src
        got = fast.get((conn.saddr, id(hint)))
        src = got[1] if got is not None and got[0] is hint else self.ends(conn.saddr, hint)
        hint = conn.dst
        got = fast.get((conn.daddr, id(hint)))
        dst = got[1] if got is not None and got[0] is hint else self.ends(conn.daddr, hint)
        s, d = src.cls, dst.cls
        if s < 0 or d < 0 or dst.kind == "service" or src.addr == dst.addr \
                or src.kind == "loopback" or dst.kind == "loopback":
            return self.decide(src, dst, conn.dport, conn.proto), src, dst
        if src.pod is not None and dst.pod is not None and src.pod.ref == dst.pod.ref:
            return LOOPBACK_DECISION, src, dst
        decision = self._decisions.get((s, d, conn.dport, conn.proto))
        if decision is None:
            decision = self.decide(src, dst, conn.dport, conn.proto)
        return decision, src, dst

    @property
    def decisions(self) -> dict[tuple[object, ...], Decision]:
        """(client class, server class, port, protocol) -> the decision made: the hot loops'
        lookup (a miss, or an end that is not a plain class, goes through :meth:`decide`)."""
        return self._decisions

    def class_of(self, end: End) -> int:
        """The number of ``end``'s class (what a decision can depend on about it)."""
        return self._class(end)

    @property
    def distinct(self) -> int:
        """How many (client class, server class, port, protocol) were decided."""
        return len(self._decisions)

    def decide(self, src: End, dst: End, port: int, proto: str) -> Decision:
        if src.kind == "loopback" or dst.kind == "loopback" or src.addr == dst.addr \
                or same_pod(src, dst):
            return LOOPBACK_DECISION
        key: tuple[object, ...] = (self._class(src), self._class(dst), port, proto)
        if dst.kind == "service" and src.pod is not None:
            key += (src.pod.ref,)  # it may be one of the backends: itself is loopback
        decision = self._decisions.get(key)
        if decision is None:
            if dst.kind == "service":
                decision = self._via_service(src, dst, port, proto)
            else:
                decision = self._judge(src, dst, port, proto)
            self._decisions[key] = decision
        return decision

    def judge(self, src: End, dst: End, port: int, proto: str) -> Verdict:
        """The verdict on one (client, server, port, protocol)."""
        return Verdict(self.decide(src, dst, port, proto), src, dst, port, proto)

    def _class(self, end: End) -> int:
        """The number of ``end``'s class: what a decision can depend on about it."""
        if end.cls >= 0:
            return end.cls
        pod = end.pod
        addr = end.addr
        if self._blocks:
            ip = ipaddress.ip_address(addr)
            blocks = tuple(i for i, b in enumerate(self._blocks) if b.contains(ip))
        else:
            blocks = ()
        # A node's address decides whether it is a pod's own node: it stays in the key.
        where = addr if end.kind == "node" else ""
        if end.kind == "service":
            svc = end.service
            key: tuple[object, ...] = ("service", svc.ref if svc else addr, addr)
        elif pod is not None:
            labels = tuple(sorted(pod.labels.items())) if pod.labels is not None else None
            ports = tuple((c.name, c.port, c.protocol) for c in pod.ports) \
                if pod.ports is not None else None
            key = (end.kind, pod.namespace, labels, ports, pod.node, pod.host_ip,
                   pod.host_network, blocks, where)
            if pod.labels is None:
                key += (pod.ref,)  # unknown labels: only itself is like itself
        else:
            key = (end.kind, end.node, blocks, where)
        number = self._class_ids.setdefault(key, len(self._class_ids))
        end.cls = number
        return number

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

    # -- deciding ------------------------------------------------------------------------

    def _judge(self, src: End, dst: End, port: int, proto: str) -> Decision:
        egress = self._direction(EGRESS, src, dst, port, proto) if src.is_policy_pod else None
        ingress = self._direction(INGRESS, dst, src, port, proto) if dst.is_policy_pod \
            else None
        denied = any(s is not None and s.verdict == DENIED for s in (egress, ingress))
        return Decision(DENIED if denied else ALLOWED, egress, ingress)

    def _via_service(self, src: End, dst: End, port: int, proto: str) -> Decision:
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
        first: Decision | None = None
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
                decision = replace(LOOPBACK_DECISION, backend=backend, backend_port=number)
            else:
                decision = replace(self._judge(src, backend, number, proto), backend=backend,
                                   backend_port=number)
            if decision.verdict == DENIED:
                return decision
            first = first or decision
        if first is None:
            raise Unknown(f"no backend of Service {svc.ref} has a {proto.upper()} port named "
                          f"{sport.target!r}")
        return first

    def _direction(self, direction: str, subject: End, peer: End, port: int,
                   proto: str) -> Judged:
        pod = subject.pod
        assert pod is not None
        # By class: pods of one class share namespace and labels, so the policies selecting
        # them (a class of unknown labels is one pod). A few hundred classes instead of a
        # selector scan per pod of every class pair judged.
        cls = self._class(subject)
        got = self._selecting_class.get(cls)
        if got is None:
            ingress, egress = self.selecting(pod)
            got = self._selecting_class[cls] = (ingress, egress,
                                                tuple(p.ref for p in ingress),
                                                tuple(p.ref for p in egress))
        policies, refs = (got[1], got[3]) if direction == EGRESS else (got[0], got[2])
        if not policies:
            return self._one(Judged((), (), ALLOWED, "not-isolated"))
        if _is_own_node(pod, peer):
            return self._one(Judged(refs, (), ALLOWED, "own-node"))
        # A named port is resolved against the pod the connection goes to.
        server = peer.pod if direction == EGRESS else pod
        allowed = tuple(p.ref for p in policies
                        if any(self._rule_matches(p, rule, peer, port, proto, server)
                               for rule in p.rules(direction)))
        return self._one(Judged(refs, allowed, ALLOWED if allowed else DENIED, "isolated"))

    def _one(self, judged: Judged) -> Judged:
        """The one object for every judgement alike: pods of many classes share a
        direction's judgement (the same policies, the same outcome), and the JSON report
        renders a judgement once per pod by its identity."""
        return self._judged.setdefault(judged, judged)

    def _rule_matches(self, policy: NetworkPolicy, rule: Rule, peer: End, port: int,
                      proto: str, server: Pod | None) -> bool:
        if rule.ports and not _port_matches(rule.ports, port, proto, server, policy):
            return False
        if not rule.peers:
            return True
        cls = self._class(peer)
        memo = self._peer_memo
        for p in rule.peers:
            key = (id(p), cls)  # a Peer belongs to one policy, kept for the checker's life
            match = memo.get(key)
            if match is None:
                match = memo[key] = self.peer_matches(policy, p, peer)
            if match:
                return True
        return False

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
