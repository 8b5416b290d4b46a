"""The default lab, as data: one node, five pods, two Services and one "external" host.

Everything the lab builds is derived from the constants in this module, so a
reader can see the whole simulated cluster at a glance and tests can name its
addresses without repeating them.

::

    root netns = the node (named after the host)
      psl0  bridge   10.244.0.1/24  fd00:244::1/64
        pslh2 <-> eth0 @ psl-default-mypod    10.244.0.2  fd00:244::2
        pslh3 <-> eth0 @ psl-default-web      10.244.0.3  fd00:244::3   http :8080
        pslh4 <-> eth0 @ psl-shop-frontend    10.244.0.4  fd00:244::4
        pslh5 <-> eth0 @ psl-shop-backend     10.244.0.5  fd00:244::5   http :9090
        pslh6 <-> eth0 @ psl-kube-system-coredns
                                              10.244.0.6  fd00:244::6   dns :53 udp+tcp
      psl-ext 198.51.100.253/30 <-> eth0 @ psl-ext 198.51.100.254/30
                                   lo 203.0.113.10/32   http :80, https :443
                                   198.51.100.0/24      unreachable (ICMP at once)
                                   203.0.113.96/28      blackhole (SYNs vanish)
      routes 203.0.113.10/32, 203.0.113.96/28, 198.51.100.0/24 via 198.51.100.254
      Service default/web          10.96.0.10:80 -> web:8080 (nftables DNAT)
      Service kube-system/kube-dns 10.96.0.53:53 udp+tcp -> coredns:53 (dnsmasq)

The cluster DNS (see :mod:`podsight.lab.dns` for the names it serves) needs
``dnsmasq``; without it the coredns pod still exists but serves nothing, and
the kube-dns Service and the pods' ``resolv.conf`` are left out.

The node-to-external link is a /30 at the top of 198.51.100.0/24, not in
192.0.2.0/24: that TEST-NET is the real uplink of the VMs this project runs on
(host 192.0.2.2, gateway 192.0.2.1), and taking it over would cut the machine
off. ``up`` refuses to start if any lab range is already routed elsewhere.
Only the few 203.0.113.0/24 addresses the lab uses are routed into it: this
sandbox's package mirrors and registries answer at 203.0.113.80, and a lab
that took the whole /24 would cut apt and pip off while it is up.

Every interface and namespace name starts with ``psl`` so that ``down`` can
find leftovers by name even when its state file is gone, and so that the
nftables guard can tell lab interfaces from real ones with one prefix match.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Prefix of every netns, link and nft object the lab creates.
NAME_PREFIX = "psl"

BRIDGE = "psl0"
BRIDGE_MAC = "02:70:73:6c:00:01"  # fixed, so the bridge MAC does not change as ports join
POD_PREFIXLEN = 24
POD_PREFIXLEN6 = 64
GATEWAY4 = "10.244.0.1"
GATEWAY6 = "fd00:244::1"
POD_CIDR = "10.244.0.0/16"  # what the external host routes back to the node

#: The ``nftables`` table holding the egress guard and the Service DNAT.
NFT_FAMILY = "inet"
NFT_TABLE = "podsight-lab"

CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True)
class LabPod:
    """One simulated pod: a network namespace with a veth into the node's bridge.

    ``index`` is the last octet of its IPv4 address and the suffix of every
    name, which keeps names short (interface names are limited to 15 bytes).
    """

    namespace: str
    name: str
    index: int
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    http_port: int | None = None
    #: The pod serves the cluster DNS on this port (UDP and TCP).
    dns_port: int | None = None
    #: Container ports of a pod from ``lab up --topology`` (name, number, protocol): the
    #: pod answers on each number over TCP and UDP (:mod:`podsight.lab.portserver`).
    ports: tuple[tuple[str, int, str], ...] = ()

    @property
    def ref(self) -> str:
        """``namespace/name``, the way kubectl users write a pod."""
        return f"{self.namespace}/{self.name}"

    @property
    def netns(self) -> str:
        return f"{NAME_PREFIX}-{self.namespace}-{self.name}"

    @property
    def veth(self) -> str:
        """Host side of the pod's veth, enslaved to the bridge."""
        return f"{NAME_PREFIX}h{self.index}"

    @property
    def ifname(self) -> str:
        """Pod side of the veth, renamed like a CNI plugin does."""
        return "eth0"

    @property
    def ipv4(self) -> str:
        return f"10.244.0.{self.index}"

    @property
    def ipv6(self) -> str:
        return f"fd00:244::{self.index:x}"

    @property
    def mac(self) -> str:
        """Locally administered and fixed, so captures read the same on every run."""
        return f"02:70:73:6c:01:{self.index:02x}"

    @property
    def container(self) -> str:
        """The single container's name, the same as the pod's (as in ``kubectl run``)."""
        return self.name

    @property
    def image(self) -> str:
        return f"podsight-lab/{self.name}"


@dataclass(frozen=True)
class ExternalHost:
    """A host outside the cluster, reached through the node like the internet would be.

    It lives in its own netns behind a point-to-point veth so that pods reach
    it only by being routed through the node, the path real egress takes.
    """

    netns: str = "psl-ext"
    link: str = "psl-ext"  # root side of the veth; the netns side is eth0
    node_addr: str = "198.51.100.253"
    addr: str = "198.51.100.254"
    prefixlen: int = 30
    web: str = "203.0.113.10"
    http_port: int = 80
    https_port: int = 443
    #: Routed as ``unreachable`` in the external host: connects fail at once.
    unreachable_net: str = "198.51.100.0/24"
    #: Routed as ``blackhole`` in the external host: SYNs vanish, connects time out.
    blackhole_net: str = "203.0.113.96/28"

    @property
    def routed_nets(self) -> tuple[str, ...]:
        """Destinations the node sends to the external host (nothing more of TEST-NET-3)."""
        return (f"{self.web}/32", self.blackhole_net, self.unreachable_net)


@dataclass(frozen=True)
class LabService:
    """A ClusterIP Service implemented with one nftables DNAT rule per protocol."""

    namespace: str
    name: str
    cluster_ip: str
    port: int
    target_port: int
    selector: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    target: str = ""  # ref of the single backend pod
    protocols: tuple[str, ...] = ("TCP",)  # as Kubernetes spells them
    port_name: str = "http"  # the first protocol's port; others get "-<proto>" appended

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


PODS: tuple[LabPod, ...] = (
    LabPod("default", "mypod", 2, {"app": "mypod"}),
    LabPod("default", "web", 3, {"app": "web"}, http_port=8080),
    LabPod("shop", "frontend", 4, {"app": "frontend", "tier": "web"}),
    LabPod("shop", "backend", 5, {"app": "backend"}, http_port=9090),
    LabPod("kube-system", "coredns", 6, {"k8s-app": "kube-dns"}, dns_port=53),
)

EXTERNAL = ExternalHost()

SERVICES: tuple[LabService, ...] = (
    LabService("default", "web", "10.96.0.10", 80, 8080, {"app": "web"}, target="default/web"),
    LabService("kube-system", "kube-dns", "10.96.0.53", 53, 53, {"k8s-app": "kube-dns"},
               target="kube-system/coredns", protocols=("UDP", "TCP"), port_name="dns"),
)  # fmt: skip

#: The pod serving the cluster DNS and the Service in front of it, as kube-dns is named.
DNS_POD = "kube-system/coredns"
DNS_SERVICE = "kube-system/kube-dns"

#: A page served over HTTP and HTTPS by the external host.
EXTERNAL_WEB = EXTERNAL.web
#: Inside the external host's ``unreachable`` route: ICMP net-unreachable at once.
EXTERNAL_UNREACHABLE = "198.51.100.7"
#: Inside the external host's ``blackhole`` route: no answer, the connect times out.
EXTERNAL_BLACKHOLE = "203.0.113.99"
