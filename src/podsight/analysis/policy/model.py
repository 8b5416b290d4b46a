"""NetworkPolicy as data: selectors, peers, ports, rules, and what each of them matches.

Everything here is Kubernetes' own meaning (networking.k8s.io/v1), after the
API server's defaulting, so the checker, the lab's nftables compiler and the
advisor share one reading of a policy:

- a label selector ``{}`` matches everything; ``NotIn`` and ``DoesNotExist``
  match a missing key, ``In`` and ``Exists`` do not;
- a rule's ``from``/``to`` and ``ports`` mean "every peer" and "every port"
  whether they are absent or empty lists (``ingress: []`` and an absent
  ``ingress`` both allow nothing; ``ingress: [{}]`` allows everything);
- one peer with both ``podSelector`` and ``namespaceSelector`` needs both
  (AND); two peers are alternatives (OR); a ``podSelector`` alone means the
  policy's own namespace, a ``namespaceSelector`` alone means every pod of the
  selected namespaces;
- ``ipBlock`` matches an address in ``cidr`` and in none of ``except``; it
  matches pod addresses too;
- a port without ``protocol`` is TCP; a named port matches a container port
  of the destination pod with that name *and* that protocol; ``endPort``
  makes a range;
- ``policyTypes`` defaults to ``[Ingress]``, plus ``Egress`` when ``egress``
  has at least one rule (the API server's ``SetDefaults_NetworkPolicy``:
  ``egress: []`` without ``policyTypes`` does not isolate for egress).

Objects are frozen and compared by identity of content, so verdicts built on
them can be cached.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

PROTOCOLS = ("TCP", "UDP", "SCTP")
INGRESS, EGRESS = "Ingress", "Egress"
#: The label the API server puts on every Namespace (1.21 and later): its own name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Requirement:
    """One ``matchExpressions`` entry: ``key`` ``operator`` ``values``."""

    key: str
    operator: str  # In | NotIn | Exists | DoesNotExist
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        if op == "In":
            return self.key in labels and labels[self.key] in self.values
        if op == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if op == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist

    def text(self) -> str:
        if self.operator == "Exists":
            return self.key
        if self.operator == "DoesNotExist":
            return f"!{self.key}"
        word = "in" if self.operator == "In" else "notin"
        return f"{self.key} {word} ({','.join(sorted(self.values))})"


@dataclass(frozen=True)
class Selector:
    """A label selector: every ``matchLabels`` pair and every requirement must hold."""

    match_labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        """``{}``: selects everything."""
        return not self.match_labels and not self.expressions

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        return all(req.matches(labels) for req in self.expressions)

    def keys(self) -> frozenset[str]:
        """The label keys this selector reads (to tell whether unknown labels matter)."""
        return frozenset([k for k, _ in self.match_labels] + [r.key for r in self.expressions])

    def text(self) -> str:
        """As ``kubectl describe`` prints it: ``app=web,tier in (a,b)``; ``{}`` for empty."""
        if self.empty:
            return "{}"
        parts = [f"{k}={v}" for k, v in self.match_labels]
        parts += [r.text() for r in self.expressions]
        return ",".join(parts)


EVERYTHING = Selector()


@dataclass(frozen=True)
class IPBlock:
    """``ipBlock``: addresses in ``cidr`` and not in any of ``excepted``."""

    cidr: Network
    excepted: tuple[Network, ...] = ()

    def contains(self, addr: Address) -> bool:
        if addr.version != self.cidr.version or addr not in self.cidr:
            return False
        return not any(addr in net for net in self.excepted)

    def text(self) -> str:
        if not self.excepted:
            return str(self.cidr)
        return f"{self.cidr} except {','.join(str(n) for n in self.excepted)}"


@dataclass(frozen=True)
class Peer:
    """One entry of ``from``/``to``. ``pods`` without ``namespaces`` means the policy's own
    namespace; ``namespaces`` without ``pods`` means every pod there."""

    pods: Selector | None = None
    namespaces: Selector | None = None
    ip_block: IPBlock | None = None

    def text(self, own_namespace: str) -> str:
        if self.ip_block is not None:
            return f"ipBlock {self.ip_block.text()}"
        if self.namespaces is None:
            assert self.pods is not None
            return f"pods {self.pods.text()} in {own_namespace}"
        if self.pods is None:
            return f"namespaces {self.namespaces.text()}"
        return f"pods {self.pods.text()} in namespaces {self.namespaces.text()}"


@dataclass(frozen=True)
class PolicyPort:
    """One entry of ``ports``: a protocol and a port (number or name), or a range."""

    protocol: str = "TCP"
    port: int | str | None = None  # None: every port of the protocol
    end_port: int | None = None

    def text(self) -> str:
        if self.port is None:
            return f"{self.protocol}/*"
        if self.end_port is not None:
            return f"{self.protocol}/{self.port}-{self.end_port}"
        return f"{self.protocol}/{self.port}"


@dataclass(frozen=True)
class Rule:
    """One ingress or egress rule. Empty ``peers``: every peer; empty ``ports``: every port
    (absent and empty lists mean the same in Kubernetes)."""

    index: int
    peers: tuple[Peer, ...] = ()
    ports: tuple[PolicyPort, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    """A NetworkPolicy after defaulting: ``types`` is what it isolates."""

    namespace: str
    name: str
    pod_selector: Selector = EVERYTHING
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    types: frozenset[str] = frozenset({INGRESS})
    source: str = field(default="", compare=False)  # file (and document) it came from
    raw: Mapping[str, object] = field(default_factory=dict, compare=False, hash=False,
                                      repr=False)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: str) -> tuple[Rule, ...]:
        return self.ingress if direction == INGRESS else self.egress

    def isolates(self, direction: str) -> bool:
        return direction in self.types
