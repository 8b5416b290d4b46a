"""Least-privilege NetworkPolicies from observed connections: one per workload.

For every workload (Deployment, StatefulSet, DaemonSet, Job, ... or a bare
pod) with a pod at either end of an observed connection (narrowed by the
pod flags), one policy:

- ``podSelector``: the labels all its observed pods share, minus the labels
  controllers generate (``pod-template-hash``, ``controller-revision-hash``,
  ``statefulset.kubernetes.io/pod-name``, ``job-name``, ...). A workload
  whose pods share no other label is skipped with a warning: its policy
  would select every pod of the namespace;
- ``policyTypes: [Ingress, Egress]``: what was not observed is not allowed;
- one rule per peer, with exactly the ports observed with that peer:
  a pod peer as ``podSelector`` (its workload's labels) AND
  ``namespaceSelector`` (``kubernetes.io/metadata.name``); a Service as its
  backing pods' selector and the target port; the cluster DNS (the
  ``kube-dns`` Service, or ``k8s-app=kube-dns`` pods in ``kube-system``) as one
  rule for UDP and TCP 53; anything else as an ``ipBlock`` (``/32``, ``/128``,
  or aggregated); a node, or a host-network pod, as the ``ipBlock`` of the
  node's address (NetworkPolicy selectors never match host-network pods);
- each rule with the observations that justify it (count, first and last
  seen), written as YAML comments by :mod:`~podsight.analysis.policy.render`.

A workload's ingress rules list the clients the records show: trace every
client of it (or narrow the subjects with ``-n``/``-p``/``-l``). Host-network
pods get no policy (NetworkPolicy does not apply to them), and nothing
crashes on them.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from podsight.analysis.policy.ends import End, Ends
from podsight.analysis.policy.jsonlines import Block
from podsight.analysis.policy.model import NAMESPACE_NAME_LABEL
from podsight.analysis.policy.policies import API_VERSION, KIND
from podsight.analysis.policy.records import Connection, Rows
from podsight.analysis.policy.world import GENERATED_LABELS, Pod, Unknown, World

DNS_NAMESPACE = "kube-system"
DNS_SERVICE = "kube-dns"
DNS_LABELS = {"k8s-app": "kube-dns"}
OBJECTS_HINT = "give --objects FILE (kubectl get namespaces,pods,services -A -o yaml) or " \
               "--kubeconfig"

Workload = tuple[str, str, str]  # (namespace, kind, name)


@dataclass
class Seen:
    """How often something was observed, first and last (RFC 3339 UTC strings)."""

    count: int = 0
    first: str = ""
    last: str = ""

    def add(self, count: int, first: str, last: str) -> None:
        self.count += count
        if first and (not self.first or first < self.first):
            self.first = first
        if last and last > self.last:
            self.last = last

    def text(self) -> str:
        words = f"{self.count} connection{'s' if self.count != 1 else ''}"
        if self.first:
            words += f", first {self.first}"
        if self.last and self.last != self.first:
            words += f", last {self.last}"
        return words


class Route:
    """The connections of one (client class, server class, port, protocol): their tally,
    and the observations (ports, comment lines) it is added to when policies are written."""

    __slots__ = ("count", "first", "last", "seen")

    def __init__(self) -> None:
        self.count = 0
        self.first = ""
        self.last = ""
        self.seen: list[Seen] = []


@dataclass
class Draft:
    """One rule being built: a peer, its ports, and what was seen."""

    peer: dict[str, Any] | None  # None: the workload peer, resolved at the end
    workload: Workload | None = None
    ports: dict[tuple[str, int | str], Seen] = field(default_factory=dict)
    #: What was seen, by (words before, who, words after, port, protocol): the comment line
    #: is worded once, when the policy is written.
    seen: dict[tuple[str, str, str, int | str, str], Seen] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def observe(self, proto: str, port: int | str, what: tuple[str, str, str, int | str, str],
                conn: Connection, route: list[Seen],
                also: tuple[tuple[str, int | str], ...] = ()) -> None:
        """Count ``conn`` for its ports and its comment line; ``route`` gets what was counted
        (the next connection between the same ends, port and protocol counts the same)."""
        ports = self.ports
        for key in ((proto, port), *also):
            seen = ports.get(key)
            if seen is None:
                seen = ports[key] = Seen()
            route.append(seen)
        seen = self.seen.get(what)
        if seen is None:
            seen = self.seen[what] = Seen()
        route.append(seen)


@dataclass
class Subject:
    """One workload the advisor writes a policy for."""

    workload: Workload
    pods: set[str] = field(default_factory=set)
    ingress: dict[tuple[Any, ...], Draft] = field(default_factory=dict)
    egress: dict[tuple[Any, ...], Draft] = field(default_factory=dict)


@dataclass
class RuleOut:
    """A finished rule: its YAML body and the comment lines above it."""

    body: dict[str, Any]
    comments: list[str]


@dataclass
class Advice:
    """One generated policy."""

    namespace: str
    name: str
    pod_selector: dict[str, str]
    ingress: list[RuleOut]
    egress: list[RuleOut]
    comments: list[str] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        """The NetworkPolicy object (without comments)."""
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "podSelector": {"matchLabels": dict(self.pod_selector)},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [r.body for r in self.ingress],
                "egress": [r.body for r in self.egress],
            },
        }


class Advisor:
    """Feed connections with :meth:`add`, then :meth:`policies`."""

    def __init__(self, world: World, *, subjects: Callable[[Pod], bool] | None = None,
                 aggregate4: int = 32, aggregate6: int = 128) -> None:
        self.world = world
        self.ends = Ends(world)
        self._fast_ends = self.ends.fast
        self._subjects = subjects or (lambda pod: True)
        self.aggregate4 = aggregate4
        self.aggregate6 = aggregate6
        self._drafts: dict[Workload, Subject] = {}
        self._labels: dict[Workload, dict[str, str]] = {}  # labels its pods share, so far
        self._is_subject: dict[str, bool] = {}
        self._pod_workload: dict[int, tuple[Pod, Workload]] = {}
        self._cidrs: dict[str, str] = {}
        # (client class, server class, port, protocol) -> its tally and where it counts
        self._routes: dict[tuple[int, int, int, str], Route] = {}
        self._class_ids: dict[tuple[Any, ...], int] = {}
        self._touched: list[Seen] = []
        self.connections = 0
        self.warnings: list[str] = []
        self._warned: set[str] = set()
        self._host_network: set[str] = set()
        #: When a list: what :meth:`replay` needs to do in another advisor what this one
        #: did, in order (a part of the records read on another CPU).
        self.journal: list[tuple[Any, ...]] | None = None

    # -- observing -----------------------------------------------------------------------

    def add_all(self, conns: Iterable[Connection]) -> None:
        for conn in conns:
            self.add(conn)

    def add_items(self, items: Iterable[Connection | Block | Rows],
                  stop: Callable[[], bool] | None = None) -> None:
        """:meth:`add_all` for :meth:`Reader.items`: blocks of decoded JSON lines and batches
        of SQLite rows are counted by
        :class:`~podsight.analysis.policy.blockadvise.BlockAdvisor` (the same as adding
        their connections one by one, faster); ``stop()`` is asked before each block."""
        from podsight.analysis.policy.blockadvise import BlockAdvisor

        blocks = BlockAdvisor(self)
        add = self.add
        for item in items:
            if item.__class__ is Block or item.__class__ is Rows:
                if stop is not None and stop():
                    raise KeyboardInterrupt
                if isinstance(item, Block):
                    blocks.run(item)
                else:
                    assert isinstance(item, Rows)
                    blocks.run_rows(item)
                continue
            assert isinstance(item, Connection)
            add(item)

    def add(self, conn: Connection) -> None:
        """Count one connection. Ends alike in everything a policy rule is made of (a pod's
        workload, whether it is a subject; an outside address) are one class, and the
        first connection of a (client class, server class, port, protocol) finds where
        such connections count: the next ones only add to that route's tally."""
        self.connections += 1
        # Ends' own memo, inlined as in Checker.decision: a method call per end was a third
        # of this method's time, and this runs once per record.
        fast = self._fast_ends
        hint = conn.src
        got = fast.get((conn.saddr, id(hint)))
        src = got[1] if got is not None and got[0] is hint else self.ends(conn.saddr, hint)
        hint = conn.dst
        got = fast.get((conn.daddr, id(hint)))
        dst = got[1] if got is not None and got[0] is hint else self.ends(conn.daddr, hint)
        if src.addr == dst.addr or src.kind == "loopback" or dst.kind == "loopback":
            return  # a pod cannot block itself: nothing to allow
        sp, dp = src.pod, dst.pod
        if sp is not None and dp is not None and (sp is dp or sp.ref == dp.ref):
            return  # the same pod (same_pod, inlined)
        journal = self.journal
        if src.cls >= 0:
            s = src.cls
        else:
            if journal is not None:  # before: what raises here raises there too
                journal.append(("end", conn.saddr, conn.src))
            s = self._register(src)
        if dst.cls >= 0:
            d = dst.cls
        else:
            if journal is not None:
                journal.append(("end", conn.daddr, conn.dst))
            d = self._register(dst)
        key = (s, d, conn.dport, conn.proto)
        route = self._routes.get(key)
        if route is None:
            if journal is not None:
                journal.append(("route", conn.saddr, conn.src, conn.daddr, conn.dst,
                                conn.dport, conn.proto))
            route = self._routes[key] = Route()
            self._touched = route.seen
            self._first(src, dst, conn)
        route.count += conn.count
        first, last = conn.first, conn.last
        if first and (not route.first or first < route.first):
            route.first = first
        if last > route.last:
            route.last = last

    # -- records read on other CPUs -------------------------------------------------------

    def tallies(self) -> dict[tuple[Any, ...], tuple[int, str, str]]:
        """Each route's tally so far, keyed by what its classes are (class numbers are this
        advisor's own): (client class, server class, port, protocol) -> count, first, last."""
        keys = {number: key for key, number in self._class_ids.items()}
        return {(keys[s], keys[d], port, proto): (r.count, r.first, r.last)
                for (s, d, port, proto), r in self._routes.items()}

    def replay(self, journal: list[tuple[Any, ...]],
               tallies: dict[tuple[Any, ...], tuple[int, str, str]], connections: int) -> None:
        """What another advisor did with a part of the records (its :attr:`journal`, its
        :meth:`tallies`, how many connections it counted), done here after the parts before.

        The same as adding that part's records one by one: each end is registered and each
        route found in the order the records brought them (so drafts, notes and the first
        error are the same), and tallies only add up (counts, earliest first, latest last).
        """
        from podsight.analysis.policy.records import Connection

        ends = self.ends
        for event in journal:
            if event[0] == "end":
                end = ends(event[1], event[2])
                if end.cls < 0:
                    self._register(end)
                continue
            _, saddr, src_hint, daddr, dst_hint, port, proto = event
            src, dst = ends(saddr, src_hint), ends(daddr, dst_hint)
            key = (src.cls, dst.cls, port, proto)
            if key not in self._routes:
                route = self._routes[key] = Route()
                self._touched = route.seen
                self._first(src, dst, Connection(proto, saddr, 0, daddr, port, src_hint,
                                                 dst_hint))
        ids = self._class_ids
        for (skey, dkey, port, proto), (count, first, last) in tallies.items():
            route = self._routes[(ids[skey], ids[dkey], port, proto)]
            route.count += count
            if first and (not route.first or first < route.first):
                route.first = first
            if last > route.last:
                route.last = last
        self.connections += connections

    def _register(self, end: End) -> int:
        """An end seen for the first time: its pod's bookkeeping (the pods of a subject, the
        labels a workload's pods share), and its class."""
        pod = end.pod
        if pod is None:
            svc = end.service
            key: tuple[Any, ...] = (end.kind, end.addr, end.node, svc.ref if svc else "")
        elif pod.host_network:
            self._host_network.add(pod.ref)
            key = ("host-network", end.addr, pod.ref, pod.node)
        else:
            subject = self._subject(pod)
            if pod.labels is None:  # said when a rule needs them; only itself is like itself
                key = ("unknown", pod.ref, subject)
            else:
                wl = self._workload(pod)
                if subject:
                    self._subject_of(pod)
                key = ("pod", wl, subject, _is_dns_pod(pod))
        end.cls = self._class_ids.setdefault(key, len(self._class_ids))
        return end.cls

    def _first(self, src: End, dst: End, conn: Connection) -> None:
        """Where connections of this route count (the drafts' ports and comment lines)."""
        if src.is_policy_pod and self._subject(src.pod):
            assert src.pod is not None
            self._egress(self._subject_of(src.pod), dst, conn)
        if dst.kind == "service":
            for backend, port in self._backends(dst, conn):
                if backend.is_policy_pod and self._subject(backend.pod):
                    assert backend.pod is not None
                    if backend.cls < 0:
                        self._register(backend)
                    self._ingress(self._subject_of(backend.pod), src, backend, port, conn)
        elif dst.is_policy_pod and self._subject(dst.pod):
            assert dst.pod is not None
            self._ingress(self._subject_of(dst.pod), src, dst, conn.dport, conn)

    def _fold(self) -> None:
        """Each route's tally into the drafts it counts in (once, before writing)."""
        for route in self._routes.values():
            for seen in route.seen:
                seen.add(route.count, route.first, route.last)
            route.count, route.first, route.last = 0, "", ""

    def _subject(self, pod: Pod | None) -> bool:
        assert pod is not None
        known = self._is_subject.get(pod.ref)
        if known is None:
            known = self._is_subject[pod.ref] = self._subjects(pod)
        return known

    def _subject_of(self, pod: Pod) -> Subject:
        wl = self._workload(pod)
        subject = self._drafts.get(wl)
        if subject is None:
            subject = self._drafts[wl] = Subject(wl)
        subject.pods.add(pod.ref)
        return subject

    def _workload(self, pod: Pod) -> Workload:
        known = self._pod_workload.get(id(pod))
        if known is not None and known[0] is pod:
            return known[1]
        kind, name = pod.workload
        wl = (pod.namespace, kind, name)
        if pod.labels is None:
            raise Unknown(f"the labels of pod {pod.ref} are not known (SQLite captures do not "
                          f"store them), and a policy selects pods by label; {OBJECTS_HINT}")
        self._pod_workload[id(pod)] = (pod, wl)  # the pod is kept: its id stays its own
        own = {k: v for k, v in pod.labels.items() if k not in GENERATED_LABELS}
        shared = self._labels.get(wl, own)
        self._labels[wl] = {k: v for k, v in own.items() if shared.get(k) == v}
        return wl

    def _egress(self, subject: Subject, dst: End, conn: Connection) -> None:
        proto = conn.proto.upper()
        if dst.kind == "service" and _is_dns(dst, conn.dport):
            draft = _draft(subject.egress, ("dns",), lambda: Draft(_dns_peer(self.world)))
            draft.observe("UDP", 53, ("DNS to ", dst.notation, ":", 53, proto), conn,
                          self._touched, (("TCP", 53),))
            return
        if dst.kind == "service":
            svc = dst.service
            assert svc is not None
            known = self.world.services.get((svc.namespace, svc.name))
            if known is None or not known.selector:
                why = "is not known" if known is None else "has no selector"
                raise Unknown(f"connections to Service {svc.ref} ({dst.addr}): the Service "
                              f"{why}, so its pods cannot be selected; {OBJECTS_HINT}")
            sport = known.port(conn.dport, proto)
            target: int | str = sport.target if sport is not None else conn.dport
            peer = {"podSelector": {"matchLabels": dict(known.selector)},
                    "namespaceSelector": _ns_selector(known.namespace)}
            draft = _draft(subject.egress, ("svc", known.namespace, known.name),
                           lambda: Draft(peer))
            draft.observe(proto, target, ("to ", dst.notation, ":", conn.dport, proto), conn,
                          self._touched)
            return
        if dst.is_policy_pod:
            assert dst.pod is not None
            if _is_dns_pod(dst.pod) and conn.dport == 53:
                draft = _draft(subject.egress, ("dns",), lambda: Draft(_dns_peer(self.world)))
                draft.observe("UDP", 53, ("DNS to ", dst.notation, ":", 53, proto), conn,
                              self._touched, (("TCP", 53),))
                return
            wl = self._workload(dst.pod)
            draft = _draft(subject.egress, ("wl", *wl), lambda: Draft(None, wl))
            draft.observe(proto, conn.dport, ("to ", _workload_text(wl), ":", conn.dport, proto),
                          conn, self._touched)
            return
        self._ip_peer(subject.egress, dst, conn.dport, proto, conn, "to")

    def _ingress(self, subject: Subject, src: End, dst: End, port: int | str,
                 conn: Connection) -> None:
        proto = conn.proto.upper()
        if src.is_policy_pod:
            assert src.pod is not None
            wl = self._workload(src.pod)
            draft = _draft(subject.ingress, ("wl", *wl), lambda: Draft(None, wl))
            draft.observe(proto, port, ("from ", _workload_text(wl), " to :", port, proto), conn,
                          self._touched)
            return
        self._ip_peer(subject.ingress, src, port, proto, conn, "from")

    def _ip_peer(self, drafts: dict[tuple[Any, ...], Draft], end: End, port: int | str,
                 proto: str,
                 conn: Connection, towards: str) -> None:
        cidr = self._cidrs.get(end.addr)
        if cidr is None:
            addr = ipaddress.ip_address(end.addr)
            length = self.aggregate4 if addr.version == 4 else self.aggregate6
            cidr = self._cidrs[end.addr] = str(ipaddress.ip_network(f"{addr}/{length}",
                                                                     strict=False))
        draft = drafts.get(("ip", cidr))
        if draft is None:
            draft = drafts[("ip", cidr)] = Draft({"ipBlock": {"cidr": cidr}})
        if end.kind == "node":
            if end.pod is not None:
                note = (f"{end.pod.ref} runs in the host network of node {end.pod.node or '?'}"
                        f" ({end.addr}): selectors never match host-network pods")
            else:
                note = f"{end.addr} is node {end.node}"
            if note not in draft.notes:
                draft.notes.append(note)
        draft.observe(proto, port, (f"{towards} ", end.notation,
                                    ":" if towards == "to" else " to :", port, proto), conn,
                      self._touched)

    def _backends(self, dst: End, conn: Connection) -> list[tuple[End, int | str]]:
        svc = dst.service
        assert svc is not None
        known = self.world.services.get((svc.namespace, svc.name))
        if known is None:
            return []  # egress names the Service; its pods' ingress needs the objects
        sport = known.port(conn.dport, conn.proto.upper())
        if sport is None:
            return []
        out: list[tuple[End, int | str]] = []
        for pod in self.world.backends(known):
            addr = next((ip for ip in pod.ips if (":" in ip) == (":" in dst.addr)), dst.addr)
            out.append((self.ends.pod(pod, addr), sport.target))
        return out

    # -- the policies ---------------------------------------------------------------------

    def policies(self) -> list[Advice]:
        self._fold()
        out: list[Advice] = []
        taken: set[tuple[str, str]] = set()
        for ref in sorted(self._host_network):
            self._warn(f"pod {ref} uses the host network: NetworkPolicy does not apply to it, "
                       "so no policy is written for it (peers reach it as its node's address)")
        for wl in sorted(self._drafts):
            subject = self._drafts[wl]
            labels = self._labels.get(wl) or {}
            ns, kind, name = wl
            if not labels:
                self._warn(f"{_workload_text(wl)} has no labels besides generated ones: a "
                           f"policy for it would select every pod of namespace {ns}; skipped")
                continue
            policy_name = f"{name}-network"
            if (ns, policy_name) in taken:
                policy_name = f"{name}-{kind.lower()}-network"
            taken.add((ns, policy_name))
            pods = len(subject.pods)
            comments = [f"{_workload_text(wl)}: {pods} pod{'s' if pods != 1 else ''} observed; "
                        "generated by podsight advise network-policy"]
            out.append(Advice(ns, policy_name, dict(sorted(labels.items())),
                              self._rules(subject.ingress, "from"),
                              self._rules(subject.egress, "to"), comments))
        return out

    def _rules(self, drafts: dict[tuple[Any, ...], Draft], key: str) -> list[RuleOut]:
        """One rule per peer. Drafts that end up with the same peer (a Service and its
        pods seen directly) are one rule with the ports of both."""
        merged: dict[str | bytes, Draft] = {}
        for _, draft in sorted(drafts.items(), key=lambda kv: _sort_key(kv[0])):
            peer = draft.peer
            if peer is None:
                assert draft.workload is not None
                peer = self._workload_peer(draft.workload)
            same = _canonical(peer)
            into = merged.get(same)
            if into is None:
                merged[same] = Draft(peer, ports=dict(draft.ports), seen=dict(draft.seen),
                                     notes=list(draft.notes))
                continue
            for port, seen in draft.ports.items():
                into.ports.setdefault(port, Seen()).add(seen.count, seen.first, seen.last)
            for what, seen in draft.seen.items():
                into.seen.setdefault(what, Seen()).add(seen.count, seen.first, seen.last)
            into.notes += [n for n in draft.notes if n not in into.notes]
        out = []
        for draft in merged.values():
            ports = [{"protocol": proto, "port": port} for proto, port in
                     sorted(draft.ports, key=lambda pp: (pp[0], str(type(pp[1])), pp[1]))]
            comments = list(draft.notes)
            lines = sorted((f"{a}{who}{b}{port}/{proto}", seen)
                           for (a, who, b, port, proto), seen in draft.seen.items())
            comments += [f"{what}: {seen.text()}" for what, seen in lines]
            out.append(RuleOut({key: [draft.peer], "ports": ports}, comments))
        return out

    def _workload_peer(self, wl: Workload) -> dict[str, Any]:
        labels = self._labels.get(wl) or {}
        if not labels:
            self._warn(f"{_workload_text(wl)} has no labels besides generated ones: rules for "
                       f"it allow every pod of namespace {wl[0]}")
        return {"podSelector": {"matchLabels": dict(sorted(labels.items()))},
                "namespaceSelector": _ns_selector(wl[0])}

    def _warn(self, text: str) -> None:
        if text not in self._warned:
            self._warned.add(text)
            self.warnings.append(text)


try:  # a draft's peer as a key (~36,000 of them on the benchmark): orjson, 5x json's time
    from orjson import OPT_SORT_KEYS
    from orjson import dumps as _orjson_dumps

    def _canonical(peer: dict[str, Any]) -> str | bytes:
        return _orjson_dumps(peer, option=OPT_SORT_KEYS)
except ImportError:  # pragma: no cover - orjson is a dependency, but optional here
    def _canonical(peer: dict[str, Any]) -> str | bytes:
        return json.dumps(peer, sort_keys=True)


def _draft(drafts: dict[tuple[Any, ...], Draft], key: tuple[Any, ...],
           make: Callable[[], Draft]) -> Draft:
    draft = drafts.get(key)
    if draft is None:
        draft = drafts[key] = make()
    return draft


def _sort_key(key: tuple[Any, ...]) -> tuple[int, str]:
    order = {"dns": 0, "svc": 1, "wl": 2, "ip": 3}
    return (order.get(key[0], 9), "/".join(str(k) for k in key[1:]))


def _ns_selector(namespace: str) -> dict[str, Any]:
    return {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}}


def _workload_text(wl: Workload) -> str:
    ns, kind, name = wl
    return f"p/{ns}/{name}" if kind == "Pod" else f"{kind} {ns}/{name}"


def _is_dns(end: End, port: int) -> bool:
    svc = end.service
    return port == 53 and svc is not None and svc.namespace == DNS_NAMESPACE \
        and svc.name == DNS_SERVICE


def _is_dns_pod(pod: Pod) -> bool:
    return pod.namespace == DNS_NAMESPACE and pod.labels is not None \
        and all(pod.labels.get(k) == v for k, v in DNS_LABELS.items())


def _dns_peer(world: World) -> dict[str, Any]:
    svc = world.services.get((DNS_NAMESPACE, DNS_SERVICE))
    labels = dict(svc.selector) if svc is not None and svc.selector else dict(DNS_LABELS)
    return {"podSelector": {"matchLabels": labels},
            "namespaceSelector": _ns_selector(DNS_NAMESPACE)}
