"""NetworkPolicies enforced in the lab, as a CNI would: compiled to one nftables table.

``podsight lab policy apply PATH`` reads policies as ``policy check`` does
(the same validation, the same meaning: the selection of pods and the
matching of peers and named ports go through the checker's own code), then
writes one table, ``inet podsight-lab-policy``, in one ``nft -f``
transaction that replaces the previous one whole:

- a ``forward`` chain (bridged pod-to-pod traffic reaches it through
  br_netfilter, routed traffic to the external host directly) that accepts
  established and related packets and every protocol NetworkPolicy does not
  cover (ICMP; IPv6 neighbour discovery must get through, as every CNI lets
  it), then sends every new TCP, UDP or SCTP packet from a pod
  isolated for egress through that pod's ``eg_N`` chain and every new one to
  a pod isolated for ingress through its ``in_N`` chain;
- each such chain ``return``\\s what one of the pod's rules allows and drops
  the rest (a dropped SYN makes the connect time out, as with most CNIs).

Traffic between a pod and the node never crosses ``forward`` (it goes
through the input and output hooks), which is Kubernetes' rule that a pod's
own node is always allowed; a pod's traffic to itself never leaves its
namespace. What is applied is kept in the state directory, so ``apply``
adds to it (a policy with the same namespace and name replaces the old one,
as ``kubectl apply`` does), ``list`` shows it, and ``lab down`` or a rebuild
removes both.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from podsight.analysis.policy.checker import Checker
from podsight.analysis.policy.documents import documents_of
from podsight.analysis.policy.model import EGRESS, INGRESS, NetworkPolicy, Peer, PolicyPort, Rule
from podsight.analysis.policy.policies import PolicySet, collect, load
from podsight.analysis.policy.world import Pod, World, from_documents
from podsight.lab import nft, system
from podsight.lab.errors import LabEnvironmentProblem, LabError
from podsight.lab.topology import NFT_FAMILY

if TYPE_CHECKING:
    from podsight.lab.lab import Lab

TABLE = nft.POLICY_TABLE
#: br_netfilter's switch for bridged IPv6: pod-to-pod IPv6 passes the ip6 hooks too.
BRIDGE_NF6_SYSCTL = "net.bridge.bridge-nf-call-ip6tables"


@dataclass(frozen=True)
class Applied:
    """A policy in force in the lab, and the pods it isolates."""

    policy: NetworkPolicy
    pods: tuple[str, ...]


def world_of(lab: Lab) -> World:
    """The running lab's namespaces and pods, read from its inventory."""
    text = json.dumps(lab.inventory())
    return from_documents(documents_of(text, str(lab.inventory_path)), "the lab")


def stored(lab: Lab) -> PolicySet:
    """The policies applied so far (none when nothing was applied)."""
    path = lab.files.policies
    try:
        text = path.read_text()
    except FileNotFoundError:
        return PolicySet()
    return collect(list(documents_of(text, str(path))))


def apply(lab: Lab, path: str) -> tuple[PolicySet, list[Applied]]:
    """Add the policies in ``path`` to those in force, and enforce the whole set."""
    new = load(path, "lab policy apply")
    _require_up(lab)
    with lab.files.locked():
        merged: dict[tuple[str, str], NetworkPolicy] = {
            (p.namespace, p.name): p for p in stored(lab).policies}
        for p in new.policies:
            merged[(p.namespace, p.name)] = p
        policies = list(merged.values())
        world = world_of(lab)
        text = ruleset(policies, world)
        if system.read_sysctl(nft.BRIDGE_NF_SYSCTL) is None:
            # Without it, traffic between pods on the bridge never meets the rules: refuse
            # rather than seem to enforce.
            raise LabEnvironmentProblem("enforcing policies between lab pods needs the "
                                        "br_netfilter module (modprobe br_netfilter)")
        state = lab.files.read_state() or {}
        if "sysctls" in state and system.read_sysctl(BRIDGE_NF6_SYSCTL) not in (None, "1"):
            lab.files.set_sysctl(state, BRIDGE_NF6_SYSCTL, "1")
        system.run(["nft", "-f", "-"], input=text)
        body = {"apiVersion": "v1", "kind": "List",
                "items": [dict(p.raw) for p in policies]}
        system.atomic_write(lab.files.policies, json.dumps(body, indent=2) + "\n")
    return new, applied(policies, world)


def delete_all(lab: Lab) -> int:
    """Remove every policy from the lab; returns how many there were."""
    system.require_root()
    with lab.files.locked():
        count = len(stored(lab).policies)
        nft.delete_table(TABLE)
        lab.files.policies.unlink(missing_ok=True)
    return count


def listing(lab: Lab) -> list[Applied]:
    """What is in force, with the pods each policy isolates."""
    policies = stored(lab).policies
    if not policies:
        return []
    return applied(policies, world_of(lab))


def applied(policies: Sequence[NetworkPolicy], world: World) -> list[Applied]:
    checker = Checker(policies, world)
    selects: dict[str, list[str]] = {p.ref: [] for p in policies}
    for pod in _pods(world):
        ingress, egress = checker.selecting(pod)
        for p in {q.ref: q for q in (*ingress, *egress)}.values():
            selects[p.ref].append(pod.ref)
    return [Applied(p, tuple(selects[p.ref])) for p in policies]


def _require_up(lab: Lab) -> None:
    system.require_root()
    if not lab.is_up():
        raise LabError("the lab is not up (run: podsight lab up)")


def _pods(world: World) -> list[Pod]:
    return sorted((p for p in world.pods.values() if p.ips and not p.host_network),
                  key=lambda p: p.ref)


# -- compiling ---------------------------------------------------------------------------------

def ruleset(policies: Sequence[NetworkPolicy], world: World) -> str:
    """The whole table, replacing any previous one in the same transaction."""
    checker = Checker(policies, world)
    pods = _pods(world)
    jumps: list[str] = []
    chains: list[str] = []
    for direction, key, prefix in ((EGRESS, "saddr", "eg"), (INGRESS, "daddr", "in")):
        for pod in pods:
            ingress, egress = checker.selecting(pod)
            isolating = egress if direction == EGRESS else ingress
            if not isolating:
                continue
            chain = f"{prefix}_{_chain_id(pod)}"
            for ip in pod.ips:
                jumps.append(f"{_family(ip)} {key} {ip} jump {chain}")
            body = []
            for policy in isolating:
                for rule in policy.rules(direction):
                    body += [f"{line} counter return".strip()
                             for line in _rule(checker, policy, rule, direction, pod, pods)]
            word = direction.lower()
            body.append(f'counter drop comment "{pod.ref}: {word} not allowed by '
                        f'{" ".join(p.ref for p in isolating)}"')
            chains.append(f"  chain {chain} {{\n" + "".join(f"    {b}\n" for b in body)
                          + "  }\n")
    forward = ("  chain forward {\n"
               "    type filter hook forward priority filter + 10; policy accept;\n"
               "    ct state established,related accept\n"
               "    meta l4proto != { tcp, udp, sctp } accept\n"
               + "".join(f"    {j}\n" for j in jumps) + "  }\n")
    name = f"{NFT_FAMILY} {TABLE}"
    return (f"table {name}\ndelete table {name}\n"
            f"table {name} {{\n{forward}{''.join(chains)}}}\n")


def _chain_id(pod: Pod) -> str:
    v4 = next((ip for ip in pod.ips if ":" not in ip), pod.ips[0])
    return v4.replace(".", "_").replace(":", "_")


def _family(ip: str) -> str:
    return "ip6" if ":" in ip else "ip"


def _rule(checker: Checker, policy: NetworkPolicy, rule: Rule, direction: str, subject: Pod,
          pods: Sequence[Pod]) -> list[str]:
    """nft matches (without the verdict) for one rule of one policy, for one isolated pod."""
    key = "daddr" if direction == EGRESS else "saddr"
    numeric = [p for p in rule.ports if not isinstance(p.port, str)]
    named = [p for p in rule.ports if isinstance(p.port, str)]
    out: list[str] = []
    peers: Iterable[Peer | None] = rule.peers or (None,)
    for peer in peers:
        addrs, peer_pods = _peer(checker, policy, peer, key, pods)
        if addrs is None:
            continue  # a selector that selects no pod: nothing to allow
        if not rule.ports:
            out += addrs
        elif numeric:
            out += [f"{a} {p}".strip() for a in addrs for p in _ports(numeric)]
        if not named:
            continue
        if direction == INGRESS:
            # Named ports are the isolated pod's own: one resolution for every peer.
            out += [f"{a} {p}".strip() for a in addrs for p in _ports(_resolve(named, subject))]
            continue
        # Egress: a named port is each destination pod's own container port.
        for dst in peer_pods:
            for ip in dst.ips:
                if peer is not None and peer.ip_block is not None \
                        and not peer.ip_block.contains(_address(ip)):
                    continue
                out += [f"{_family(ip)} daddr {ip} {p}" for p in _ports(_resolve(named, dst))]
    return out


def _peer(checker: Checker, policy: NetworkPolicy, peer: Peer | None, key: str,
          pods: Sequence[Pod]) -> tuple[list[str] | None, list[Pod]]:
    """(address matches, the lab pods they stand for); None when nothing matches."""
    if peer is None:
        return [""], list(pods)
    block = peer.ip_block
    if block is not None:
        fam = "ip6" if block.cidr.version == 6 else "ip"
        match = f"{fam} {key} {block.cidr}"
        if block.excepted:
            match += f" {fam} {key} != {{ {', '.join(str(n) for n in block.excepted)} }}"
        inside = [p for p in pods if any(block.contains(_address(ip)) for ip in p.ips)]
        return [match], inside
    from podsight.analysis.policy.ends import End

    chosen = [p for p in pods
              if checker.peer_matches(policy, peer, End("pod", p.ips[0], p.notation, pod=p))]
    if not chosen:
        return None, []
    matches = []
    for fam, v6 in (("ip", False), ("ip6", True)):
        ips = [ip for p in chosen for ip in p.ips if (":" in ip) == v6]
        if ips:
            matches.append(f"{fam} {key} {{ {', '.join(ips)} }}")
    return matches, chosen


def _resolve(named: Sequence[PolicyPort], pod: Pod) -> list[PolicyPort]:
    """Named ports as the numbers they are on ``pod`` (same name and protocol)."""
    out = []
    for p in named:
        for c in pod.ports or ():
            if c.name == p.port and c.protocol == p.protocol:
                out.append(PolicyPort(p.protocol, c.port))
    return out


def _ports(ports: Sequence[PolicyPort]) -> list[str]:
    """One match per protocol: ``tcp dport { 80, 8000-9000 }`` or ``meta l4proto udp``."""
    by_proto: dict[str, list[str] | None] = {}
    for p in ports:
        proto = p.protocol.lower()
        if p.port is None:
            by_proto[proto] = None  # every port of the protocol
            continue
        if proto in by_proto and by_proto[proto] is None:
            continue
        items = by_proto.setdefault(proto, [])
        assert items is not None and isinstance(p.port, int)
        items.append(f"{p.port}-{p.end_port}" if p.end_port is not None else str(p.port))
    out = []
    for proto, items in sorted(by_proto.items()):
        out.append(f"meta l4proto {proto}" if items is None
                   else f"{proto} dport {{ {', '.join(sorted(set(items)))} }}")
    return out


def _address(ip: str) -> Any:
    import ipaddress

    return ipaddress.ip_address(ip)
