"""Building the lab's network: the node's bridge, one netns per pod, the external host.

These are the ``ip`` commands a person would type to build the topology of
:mod:`podsight.lab.topology` by hand, kept together and in order so that they
can be read (and replayed from a terminal) as one script. Nothing here
removes anything: a failed step leaves the rest to
:func:`podsight.lab.teardown.teardown`, which finds every object by name.
"""

from __future__ import annotations

import ipaddress

from podsight.lab import system
from podsight.lab.errors import LabError
from podsight.lab.state import LabFiles, State
from podsight.lab.topology import (
    BRIDGE,
    BRIDGE_MAC,
    GATEWAY4,
    GATEWAY6,
    NAME_PREFIX,
    POD_CIDR,
    POD_PREFIXLEN,
    POD_PREFIXLEN6,
    SERVICES,
    ExternalHost,
    LabPod,
)


def check_route_conflicts(ext: ExternalHost) -> None:
    """Refuse to shadow a real network that uses one of the lab's ranges.

    A route at least as specific as a lab range on a non-lab interface
    means this machine really talks to those addresses (a VPN, a real
    cluster); taking them over would break that and confuse the lab.
    """
    lab_nets = [
        ipaddress.ip_network(f"{GATEWAY4}/{POD_PREFIXLEN}", strict=False),
        ipaddress.ip_network(f"{GATEWAY6}/{POD_PREFIXLEN6}", strict=False),
        ipaddress.ip_network(f"{ext.node_addr}/{ext.prefixlen}", strict=False),
        *(ipaddress.ip_network(n) for n in ext.routed_nets),
        *(ipaddress.ip_network(f"{s.cluster_ip}/32") for s in SERVICES),
    ]
    routes = system.ip_json(["-4", "route", "show"]) + system.ip_json(["-6", "route", "show"])
    for route in routes:
        dst, dev = str(route.get("dst", "default")), str(route.get("dev", ""))
        if dst == "default" or dev.startswith(NAME_PREFIX):
            continue
        try:
            net = ipaddress.ip_network(dst, strict=False)
        except ValueError:
            continue
        for lab_net in lab_nets:
            if (
                net.version == lab_net.version
                and net.overlaps(lab_net)
                and net.prefixlen >= lab_net.prefixlen
            ):
                raise LabError(
                    f"{dst} is already routed via {dev or '?'}; the lab needs {lab_net}"
                )


def build_bridge(files: LabFiles, state: State) -> None:
    """The node's bridge, the pods' gateway; forwarding on for it alone."""
    ip = system.run
    ip(["ip", "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge",
        "stp_state", "0", "forward_delay", "0"])  # fmt: skip
    ip(["ip", "addr", "add", f"{GATEWAY4}/{POD_PREFIXLEN}", "dev", BRIDGE])
    ip(["ip", "-6", "addr", "add", f"{GATEWAY6}/{POD_PREFIXLEN6}", "dev", BRIDGE, "nodad"])
    ip(["ip", "link", "set", BRIDGE, "up"])
    # Per-interface forwarding: the global ip_forward stays as it was.
    files.set_sysctl(state, f"net.ipv4.conf.{BRIDGE}.forwarding", "1")
    # Pods on one bridge reach each other directly; ICMP redirects are noise.
    files.set_sysctl(state, f"net.ipv4.conf.{BRIDGE}.send_redirects", "0")


def build_pod(pod: LabPod) -> None:
    """A pod: its netns, a veth into the bridge, addresses and default routes."""
    ip = system.run
    ns = pod.netns
    ip(["ip", "netns", "add", ns])
    ip(["ip", "link", "add", pod.veth, "type", "veth",
        "peer", "name", pod.ifname, "address", pod.mac, "netns", ns])  # fmt: skip
    ip(["ip", "link", "set", pod.veth, "master", BRIDGE, "up"])
    # As the bridge CNI's hairpinMode: a pod reaching its own Service gets
    # the packet back through the port it came in on.
    ip(["ip", "link", "set", pod.veth, "type", "bridge_slave", "hairpin", "on"])
    ip(["ip", "-n", ns, "link", "set", "lo", "up"])
    ip(["ip", "-n", ns, "addr", "add", f"{pod.ipv4}/{POD_PREFIXLEN}", "dev", pod.ifname])
    ip(["ip", "-n", ns, "-6", "addr", "add", f"{pod.ipv6}/{POD_PREFIXLEN6}",
        "dev", pod.ifname, "nodad"])  # fmt: skip
    ip(["ip", "-n", ns, "link", "set", pod.ifname, "up"])
    ip(["ip", "-n", ns, "route", "add", "default", "via", GATEWAY4])
    ip(["ip", "-n", ns, "-6", "route", "add", "default", "via", GATEWAY6])


def build_external(ext: ExternalHost, files: LabFiles, state: State) -> None:
    """The "internet": a netns behind a point-to-point veth, reached only through the node."""
    ip = system.run
    ns = ext.netns
    ip(["ip", "netns", "add", ns])
    ip(["ip", "link", "add", ext.link, "type", "veth", "peer", "name", "eth0", "netns", ns])
    ip(["ip", "addr", "add", f"{ext.node_addr}/{ext.prefixlen}", "dev", ext.link])
    ip(["ip", "link", "set", ext.link, "up"])
    ip(["ip", "-n", ns, "link", "set", "lo", "up"])
    ip(["ip", "-n", ns, "addr", "add", f"{ext.web}/32", "dev", "lo"])
    ip(["ip", "-n", ns, "addr", "add", f"{ext.addr}/{ext.prefixlen}", "dev", "eth0"])
    ip(["ip", "-n", ns, "link", "set", "eth0", "up"])
    ip(["ip", "-n", ns, "route", "add", POD_CIDR, "via", ext.node_addr])
    ip(["ip", "-n", ns, "route", "add", "unreachable", ext.unreachable_net])
    ip(["ip", "-n", ns, "route", "add", "blackhole", ext.blackhole_net])
    # Inside the external netns (ours alone, gone at down, so nothing to save):
    # the kernel answers for an `unreachable` route only on a forwarding
    # interface, and without rate limits so every test gets its ICMP at once.
    system.write_sysctl("net.ipv4.conf.eth0.forwarding", "1", netns=ns)
    system.write_sysctl("net.ipv4.icmp_ratelimit", "0", netns=ns)
    files.set_sysctl(state, f"net.ipv4.conf.{ext.link}.forwarding", "1")
    for net in ext.routed_nets:
        ip(["ip", "route", "add", net, "via", ext.addr, "dev", ext.link])


def make_certificate(ext: ExternalHost, files: LabFiles) -> None:
    """A fresh self-signed certificate for the external site (clients use ``curl -k``)."""
    system.run([
        "openssl", "req", "-x509", "-newkey", "ec",
        "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(files.key), "-out", str(files.cert), "-days", "30",
        "-subj", f"/CN={ext.web}", "-addext", f"subjectAltName=IP:{ext.web}",
    ])  # fmt: skip
    files.key.chmod(0o600)
