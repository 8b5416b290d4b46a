"""flows: flows with bytes, packets, TCP flags, RTT, drops and DNS (``podsight flows``).
This module only declares the gadget; its code is imported to run it."""

from podsight.spec import FLAG, GadgetSpec, Param, integer

SPEC = GadgetSpec(
    name="flows",
    command=("flows",),
    help="flows with bytes, packets, TCP flags, RTT, drops and DNS",
    description=(
        "Capture flows on the host side of pods' veths (or the host's interfaces with "
        "--host): bytes, packets and TCP flags per 5-tuple, aggregated in the kernel and "
        "reported every --interval, with the identity of both ends. Filters are kernel "
        "side; several filter rules are joined with a bare 'or'."
    ),
    factory="podsight.gadgets.flows.gadget:FlowsGadget",
    params=(
        Param(("--rtt",), "TCP RTT per flow (tcp:tcp_probe)", FLAG, False),
        Param(("--drops",), "dropped packets per flow with the kernel's reason "
              "(skb:kfree_skb)", FLAG, False),
        Param(("--dns",), "DNS id, name, type, response code and latency (UDP and TCP "
              "port 53)", FLAG, False),
        Param(("--tls",), "TLS server name, offered versions and ALPN (ClientHello), chosen "
              "version and cipher suite (ServerHello) of TCP flows", FLAG, False),
        Param(("--enable-all",), "--rtt --drops --dns --tls", FLAG, False),
        Param(("--drops-only",), "only flows with dropped packets (turns on --drops)",
              FLAG, False),
        Param(("--max-flows",), "flow table size per interval (default 65536); flows beyond "
              "it go through the ring buffer, never silently lost", integer(16, 1 << 22),
              65536, "N"),
    ),
    flag_groups=frozenset({"rules", "interfaces"}),
    live=True,
    interval=1.0,
    noun="flow records",
    # In `podsight serve` only with its --tls (TLS names for external peers) or --flows
    # (bytes on the wire, drops, DNS), with the values each turns on.
    extra={"graph": "podsight.gadgets.flows.graph:observe",
           "graph_recorded": "podsight.gadgets.flows.graph:observe_recorded",
           "graph_flags": {"tls": {"tls": True}, "flows": {"drops": True, "dns": True}}},
)
