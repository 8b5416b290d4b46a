"""packets: capture inside pods into pcapng with pod names, direction and TLS keys
(``podsight packets``). This module only declares the gadget; its code is imported to run it."""

from podsight.spec import CIDRS, TEXT, GadgetSpec, Param, choice, integer, size

SPEC = GadgetSpec(
    name="packets",
    command=("packets",),
    help="capture packets inside pods into pcapng (pod names, direction, TLS keys)",
    description=(
        "Capture packets on each selected pod's eth0 (inside its network namespace) or on "
        "host interfaces (--host, --interfaces) into one pcapng file that stock Wireshark "
        "reads with the pod, namespace, node and container of each interface, the "
        "direction of each packet, names for pod, service and node addresses, and TLS keys "
        "(--tls-keylog). The filter is a tcpdump expression, compiled by libpcap and run "
        "in the kernel."
    ),
    factory="podsight.gadgets.packets.gadget:PacketsGadget",
    params=(
        Param(("expression",), "tcpdump filter expression (e.g. 'tcp port 80 and host "
              "10.244.0.5'); quoted or as several words", TEXT, None, "EXPRESSION"),
        Param(("-s", "--snaplen"), "bytes captured per packet (default 262144: whole "
              "packets); the original length is kept", integer(1, 262144), 262144, "BYTES"),
        Param(("--protocol",), "only this protocol (joined to the expression with 'and')",
              choice("tcp", "udp", "sctp", "icmp", "icmp6", "arp")),
        Param(("--port",), "only this port or range (80, 80-90), either side",
              TEXT, None, "PORT[-PORT]"),
        Param(("--peer-ip",), "only packets to or from these addresses (comma list)",
              CIDRS, None, "IP[,IP]"),
        Param(("--peer-cidr",), "only packets to or from these networks (comma list)",
              CIDRS, None, "CIDR[,CIDR]"),
        Param(("-B", "--buffer-size"), "kernel buffer (default 32M for snaplen <= 256; "
              "larger: per CPU, default 32M but 128M in all at most); too small a buffer "
              "drops packets, counted", size(4096, 1 << 30),
              None, "SIZE"),
    ),
    flag_groups=frozenset({"interfaces", "capture", "triggers"}),
    noun="packets captured",
    live=True,
    record_files=False,
    strict_pods=True,
)
