"""The lab's one nftables table: the guard that keeps lab traffic on the machine, and Services.

The guard is the lab's safety promise (nothing it builds is ever forwarded
out of the machine, nothing outside is forwarded in), so it lives apart from
the code that builds interfaces, and it goes in before forwarding is turned
on anywhere. The Services' DNAT shares the table so that one ``nft -f``
transaction installs both and one ``nft delete table`` removes both.
"""

from __future__ import annotations

from collections.abc import Sequence

from podsight.lab import system
from podsight.lab.state import LabFiles, State
from podsight.lab.topology import NAME_PREFIX, NFT_FAMILY, NFT_TABLE, PODS, LabPod, LabService

#: br_netfilter's switch: bridged IPv4 traffic passes the IP hooks (and conntrack).
BRIDGE_NF_SYSCTL = "net.bridge.bridge-nf-call-iptables"
#: The table of the NetworkPolicies applied to the lab (:mod:`podsight.lab.enforce`): its
#: own, so that applying a set replaces it whole without touching the guard.
POLICY_TABLE = "podsight-lab-policy"


def ruleset(services: Sequence[LabService]) -> str:
    """The guard (always) and the Services' DNAT, as one atomic nft transaction.

    Service DNAT happens on the node as kube-proxy does it. A pod that
    reaches its own Service would get a packet from its own address, which
    it drops as martian; like kube-proxy, the hairpin rule masquerades
    exactly that case (source and destination the same endpoint) and no
    other, so backends see the real client address.
    """
    dnat = "".join(
        f"        ip daddr {s.cluster_ip} {proto.lower()} dport {s.port} "
        f"dnat ip to {_backend(s).ipv4}:{s.target_port}\n"
        for s in services
        for proto in s.protocols
    )
    hairpin = "".join(
        f"        ip saddr {ep} ip daddr {ep} {proto.lower()} dport {s.target_port}"
        " ct status dnat masquerade\n"
        for s in services
        for proto in s.protocols
        for ep in [_backend(s).ipv4]
    )
    prefix = f'"{NAME_PREFIX}*"'
    return (
        f"table {NFT_FAMILY} {NFT_TABLE} {{\n"
        "    chain guard {\n"
        "        type filter hook forward priority filter - 10; policy accept;\n"
        f"        iifname {prefix} oifname != {prefix} counter drop"
        ' comment "lab traffic never leaves the machine"\n'
        f"        iifname != {prefix} oifname {prefix} counter drop"
        ' comment "outside traffic never enters the lab"\n'
        "    }\n"
        "    chain services {\n"
        "        type nat hook prerouting priority dstnat; policy accept;\n"
        f"        iifname != {prefix} return\n"
        f"{dnat}"
        "    }\n"
        "    chain services_from_node {\n"
        "        type nat hook output priority -100; policy accept;\n"
        f"{dnat}"
        "    }\n"
        "    chain hairpin {\n"
        "        type nat hook postrouting priority srcnat; policy accept;\n"
        f"{hairpin}"
        "    }\n"
        "}\n"
    )


def install(services: Sequence[LabService]) -> None:
    """Install the table: the guard and the given Services' rules."""
    system.run(["nft", "-f", "-"], input=ruleset(services))


def table_exists(table: str = NFT_TABLE) -> bool:
    proc = system.run(["nft", "list", "table", NFT_FAMILY, table], check=False)
    return proc.returncode == 0


def delete_table(table: str = NFT_TABLE) -> None:
    """Remove the table if it is there; a no-op otherwise."""
    if table_exists(table):
        system.run(["nft", "delete", "table", NFT_FAMILY, table], check=False)


def enable_bridge_netfilter(files: LabFiles, state: State) -> bool:
    """Make bridged pod traffic pass the IP hooks, as kube-proxy requires; False if unable.

    Pods share one bridge, so the reply from a Service's backend pod goes
    straight back over the bridge. Only with ``br_netfilter`` does that
    reply meet conntrack and get its address translated back; without it
    the client sees a reply from the wrong address. Where the module is
    not loaded the lab runs without Services rather than load it: loading
    changes how every bridge on the machine filters (Docker's included).
    """
    value = system.read_sysctl(BRIDGE_NF_SYSCTL)
    if value is None:
        return False
    if value != "1":
        files.set_sysctl(state, BRIDGE_NF_SYSCTL, "1")
    return True


def _backend(service: LabService) -> LabPod:
    """The Service's single backend pod (``target`` is always a ``namespace/name`` ref)."""
    return next(p for p in PODS if p.ref == service.target)
