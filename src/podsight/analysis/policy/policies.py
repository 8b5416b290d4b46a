"""NetworkPolicy manifests to :mod:`~podsight.analysis.policy.model` objects, checked as the
API server checks them (a policy it would reject is bad input: exit status 2).

Accepted: ``apiVersion: networking.k8s.io/v1``, ``kind: NetworkPolicy``, in any
layout :mod:`~podsight.analysis.policy.documents` reads. Objects of another
kind (a Deployment in the same directory) are skipped and counted, so the
caller can say so. A policy without ``metadata.namespace`` is in
``default``, as ``kubectl apply`` with a context that names no namespace
would put it. Two policies with one namespace and name: the later wins, as
applying them in order would leave it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from podsight.analysis.policy import validation as v
from podsight.analysis.policy.documents import Document, documents
from podsight.analysis.policy.model import (
    EGRESS,
    INGRESS,
    PROTOCOLS,
    IPBlock,
    NetworkPolicy,
    Peer,
    PolicyPort,
    Requirement,
    Rule,
    Selector,
)
from podsight.errors import UserError

API_VERSION = "networking.k8s.io/v1"
KIND = "NetworkPolicy"
DEFAULT_NAMESPACE = "default"
_METADATA = ("name", "namespace", "labels", "annotations", "uid", "resourceVersion",
             "generation", "creationTimestamp", "managedFields", "selfLink", "ownerReferences",
             "finalizers", "generateName", "deletionTimestamp", "deletionGracePeriodSeconds")
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


class InvalidPolicy(UserError):
    """A policy the API server would reject."""


@dataclass
class PolicySet:
    """Policies read from files, and what else the files held."""

    policies: list[NetworkPolicy] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # other kinds -> count
    files: int = 0

    def by_namespace(self) -> dict[str, list[NetworkPolicy]]:
        out: dict[str, list[NetworkPolicy]] = {}
        for p in self.policies:
            out.setdefault(p.namespace, []).append(p)
        return out

    def skipped_text(self) -> str:
        return ", ".join(f"{n} {kind}" for kind, n in sorted(self.skipped.items()))


def load(path: str, what: str = "--policies") -> PolicySet:
    """Every NetworkPolicy in ``path`` (a file or a directory)."""
    from podsight.analysis.policy.documents import files_of

    out = PolicySet(files=len(files_of(path, what)))
    return collect(documents(path, what), out)


def collect(docs: list[Document] | Any, out: PolicySet | None = None) -> PolicySet:
    out = out if out is not None else PolicySet()
    named: dict[tuple[str, str], int] = {}
    for doc in docs:
        if doc.kind != KIND:
            kind = doc.kind or "object without a kind"
            if not doc.kind and "spec" in doc.obj and isinstance(doc.obj.get("spec"), dict) \
                    and "podSelector" in doc.obj["spec"]:
                raise InvalidPolicy(f"{doc.source}: kind not set (a NetworkPolicy needs "
                                    f"apiVersion: {API_VERSION} and kind: {KIND})")
            out.skipped[kind] = out.skipped.get(kind, 0) + 1
            continue
        policy = parse(doc)
        key = (policy.namespace, policy.name)
        if key in named:
            out.policies[named[key]] = policy
        else:
            named[key] = len(out.policies)
            out.policies.append(policy)
    return out


def parse(doc: Document) -> NetworkPolicy:
    """One NetworkPolicy object, or :class:`InvalidPolicy` naming the first problem."""
    obj = doc.obj
    problems = v.Problems()
    v.mapping(problems, "", obj, ("apiVersion", "kind", "metadata", "spec", "status"))
    api = obj.get("apiVersion")
    if api is None:
        problems.add("apiVersion", "Required value")
    elif api != API_VERSION:
        problems.add("apiVersion", f"Unsupported value: {api!r}: supported values: "
                                   f"{API_VERSION!r}")
    meta = v.mapping(problems, "metadata", obj.get("metadata"), _METADATA)
    name = v.string(problems, "metadata.name", meta.get("name"))
    if name is None:
        if "name" not in meta:
            problems.add("metadata.name", "Required value: name or generateName is required")
        name = ""
    else:
        why = v.dns1123_subdomain(name) if name else "Required value"
        if why:
            problems.add("metadata.name", f"Invalid value: {name!r}: {why}")
    namespace = v.string(problems, "metadata.namespace", meta.get("namespace"))
    if namespace:
        why = v.dns1123_label(namespace)
        if why:
            problems.add("metadata.namespace", f"Invalid value: {namespace!r}: {why}")
    namespace = namespace or DEFAULT_NAMESPACE
    v.labels(problems, "metadata.labels", meta.get("labels"))
    spec = v.mapping(problems, "spec", obj.get("spec"),
                     ("podSelector", "policyTypes", "ingress", "egress"))
    pod_selector = selector(problems, "spec.podSelector", spec.get("podSelector")) or Selector()
    ingress = rules(problems, "spec.ingress", spec.get("ingress"), "from")
    egress = rules(problems, "spec.egress", spec.get("egress"), "to")
    types = policy_types(problems, spec.get("policyTypes"), egress)
    if problems:
        who = f"{namespace}/{name}" if name else "(no name)"
        raise InvalidPolicy(f"{doc.source}: NetworkPolicy {who} is invalid: "
                            f"{problems.summary()}")
    return NetworkPolicy(namespace=namespace, name=name, pod_selector=pod_selector,
                         ingress=tuple(ingress), egress=tuple(egress), types=types,
                         source=doc.source, raw=obj)


def policy_types(problems: v.Problems, value: Any, egress: list[Rule]) -> frozenset[str]:
    """``policyTypes``, or the API server's default: Ingress, plus Egress when ``egress`` has
    at least one rule (``SetDefaults_NetworkPolicy`` tests ``len(spec.Egress) != 0``)."""
    items = v.listing(problems, "spec.policyTypes", value)
    if not items:
        return frozenset({INGRESS, EGRESS} if egress else {INGRESS})
    if len(items) > 2:
        problems.add("spec.policyTypes", "Invalid value: may not specify more than two "
                                         "policyTypes")
    out: set[str] = set()
    for i, item in enumerate(items):
        if item not in (INGRESS, EGRESS):
            problems.add(f"spec.policyTypes[{i}]", f"Unsupported value: {item!r}: supported "
                                                   "values: \"Egress\", \"Ingress\"")
        else:
            out.add(item)
    return frozenset(out)


def selector(problems: v.Problems, path: str, value: Any) -> Selector | None:
    """A label selector; None when absent (``null``)."""
    if value is None:
        return None
    raw = v.mapping(problems, path, value, ("matchLabels", "matchExpressions"))
    if not isinstance(value, dict):
        return Selector()
    match = v.labels(problems, f"{path}.matchLabels", raw.get("matchLabels"))
    reqs: list[Requirement] = []
    for i, expr in enumerate(v.listing(problems, f"{path}.matchExpressions",
                                       raw.get("matchExpressions"))):
        where = f"{path}.matchExpressions[{i}]"
        e = v.mapping(problems, where, expr, ("key", "operator", "values"))
        key = v.string(problems, f"{where}.key", e.get("key")) or ""
        why = v.qualified_name(key) if key else "Required value"
        if why:
            problems.add(f"{where}.key", f"Invalid value: {key!r}: {why}")
        op = v.string(problems, f"{where}.operator", e.get("operator"))
        values = [v.string(problems, f"{where}.values[{j}]", x)
                  for j, x in enumerate(v.listing(problems, f"{where}.values", e.get("values")))]
        if op in ("In", "NotIn"):
            if not values:
                problems.add(f"{where}.values", "Required value: must be specified when "
                                                "`operator` is 'In' or 'NotIn'")
            for j, val in enumerate(values):
                why = v.label_value(val) if val is not None else None
                if why:
                    problems.add(f"{where}.values[{j}]", f"Invalid value: {val!r}: {why}")
        elif op in ("Exists", "DoesNotExist"):
            if values:
                problems.add(f"{where}.values", "Forbidden: may not be specified when "
                                                "`operator` is 'Exists' or 'DoesNotExist'")
        else:
            problems.add(f"{where}.operator", f"Invalid value: {op!r}: not a valid selector "
                                              "operator")
            continue
        reqs.append(Requirement(key, op or "", frozenset(x for x in values if x is not None)))
    return Selector(tuple(sorted(match.items())), tuple(reqs))


def rules(problems: v.Problems, path: str, value: Any, peers_key: str) -> list[Rule]:
    out: list[Rule] = []
    for i, raw in enumerate(v.listing(problems, path, value)):
        where = f"{path}[{i}]"
        rule = v.mapping(problems, where, raw, (peers_key, "ports"))
        peers = [peer(problems, f"{where}.{peers_key}[{j}]", p)
                 for j, p in enumerate(v.listing(problems, f"{where}.{peers_key}",
                                                 rule.get(peers_key)))]
        ports = [port(problems, f"{where}.ports[{j}]", p)
                 for j, p in enumerate(v.listing(problems, f"{where}.ports", rule.get("ports")))]
        out.append(Rule(i, tuple(peers), tuple(ports)))
    return out


def peer(problems: v.Problems, path: str, value: Any) -> Peer:
    raw = v.mapping(problems, path, value, ("podSelector", "namespaceSelector", "ipBlock"))
    pods = selector(problems, f"{path}.podSelector", raw.get("podSelector"))
    namespaces = selector(problems, f"{path}.namespaceSelector", raw.get("namespaceSelector"))
    block = ip_block(problems, f"{path}.ipBlock", raw.get("ipBlock"))
    given = sum(x is not None for x in (raw.get("podSelector"), raw.get("namespaceSelector"),
                                        raw.get("ipBlock")))
    if given == 0:
        problems.add(path, "Required value: must specify a peer")
    elif given > 1 and raw.get("ipBlock") is not None:
        problems.add(path, "Forbidden: may not specify both ipBlock and another peer")
    return Peer(pods, namespaces, block)


def ip_block(problems: v.Problems, path: str, value: Any) -> IPBlock | None:
    if value is None:
        return None
    raw = v.mapping(problems, path, value, ("cidr", "except"))
    text = v.string(problems, f"{path}.cidr", raw.get("cidr"))
    if not text:
        problems.add(f"{path}.cidr", "Required value")
        return None
    cidr = _network(text)
    if cidr is None:
        problems.add(f"{path}.cidr", f"Invalid value: {text!r}: must be a valid CIDR value, "
                                     "(e.g. 10.9.8.0/24 or 2001:db8::/64)")
        return None
    excepted = []
    for i, item in enumerate(v.listing(problems, f"{path}.except", raw.get("except"))):
        where = f"{path}.except[{i}]"
        etext = v.string(problems, where, item)
        net = _network(etext) if etext is not None else None
        if net is None:
            if etext is not None:
                problems.add(where, f"Invalid value: {etext!r}: must be a valid CIDR value")
            continue
        if net.version != cidr.version or net.prefixlen <= cidr.prefixlen \
                or net.network_address not in cidr:
            problems.add(where, f"Invalid value: {etext!r}: must be a strict subset of `cidr`")
        excepted.append(net)
    return IPBlock(cidr, tuple(excepted))


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A CIDR as Go's ``net.ParseCIDR`` takes it: a prefix length is required, host bits are
    allowed (``10.0.0.5/8`` is ``10.0.0.0/8``)."""
    if "/" not in text or text != text.strip():
        return None
    length = text.partition("/")[2]
    if not length.isdigit() or (length.startswith("0") and length != "0"):
        return None
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def port(problems: v.Problems, path: str, value: Any) -> PolicyPort:
    raw = v.mapping(problems, path, value, ("protocol", "port", "endPort"))
    protocol = v.string(problems, f"{path}.protocol", raw.get("protocol"))
    if protocol is None:
        protocol = "TCP"
    elif protocol not in PROTOCOLS:
        problems.add(f"{path}.protocol", f"Unsupported value: {protocol!r}: supported values: "
                                         "\"TCP\", \"UDP\", \"SCTP\"")
    number: int | str | None = None
    value_port = raw.get("port")
    if isinstance(value_port, str):
        why = v.port_name(value_port)
        if why:
            problems.add(f"{path}.port", f"Invalid value: {value_port!r}: {why}")
        number = value_port
    elif value_port is not None:
        n = v.integer(problems, f"{path}.port", value_port)
        if n is not None:
            why = v.port_number(n)
            if why:
                problems.add(f"{path}.port", f"Invalid value: {n}: {why}")
        number = n
    end = v.integer(problems, f"{path}.endPort", raw.get("endPort"))
    if end is not None:
        if number is None:
            problems.add(f"{path}.endPort", f"Invalid value: {end}: may not be specified when "
                                            "`port` is not specified")
        elif isinstance(number, str):
            problems.add(f"{path}.endPort", f"Invalid value: {end}: may not be specified when "
                                            "`port` is non-numeric")
        else:
            if end < number:
                problems.add(f"{path}.endPort", f"Invalid value: {end}: must be greater than or "
                                                "equal to `port`")
            why = v.port_number(end)
            if why:
                problems.add(f"{path}.endPort", f"Invalid value: {end}: {why}")
    return PolicyPort(protocol, number, end)
