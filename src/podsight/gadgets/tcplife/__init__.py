"""tcplife: every TCP connection with its bytes, segments and duration, both sides
(``podsight trace tcplife``). This module only declares the gadget; its code is imported
to run it."""

from podsight.spec import FLAG, GadgetSpec, Param, choice, duration, integer, power_of_two

SPEC = GadgetSpec(
    name="tcplife",
    command=("trace", "tcplife"),
    help="every TCP connection when it closes: both sides, bytes, segments, duration",
    description=(
        "Report every TCP connection (IPv4 and IPv6) when it closes, from the side of each "
        "local socket (client and server): bytes sent and acknowledged, bytes received, "
        "segments, retransmits, smoothed RTT and how long it lived, read from the socket "
        "through BTF. Connections still open are reported with state 'open' every "
        "--open-every and at the end, read with a BPF iterator; connections open before "
        "podsight started are found too (their start is when podsight first saw them)."
    ),
    factory="podsight.gadgets.tcplife.tcplife:TcpLifeGadget",
    params=(
        Param(("--open-every",), "also report connections still open, every this often "
              "(e.g. 10s; default: only at the end)", duration(0, 86400 * 10**9), 0,
              "DURATION"),
        Param(("--role",), "only the client or the server side of connections",
              choice("any", "client", "server"), "any"),
        Param(("--loopback-once",), "report a loopback connection once, from its client "
              "side (both sides are on this host)", FLAG, False),
        Param(("--failed-connects",), "also report connects that failed before they were "
              "established, with state refused, timeout, unreachable, error or aborted (from "
              "the socket error) and the attempt's duration", FLAG, False),
        Param(("--max-open",), "sockets followed at once, each side of a connection one "
              "(default 131072, ~17 MiB of kernel memory); a connection beyond it is not "
              "reported and is counted lost", integer(16, 1 << 24), 131072, "N"),
        Param(("--ring-size",), "ring buffer size (power of two, 4K to 1G; default 4M)",
              power_of_two(4096, 1 << 30), 4 << 20, "BYTES"),
    ),
    noun="connections",
    reports_pending=True,
    # serve: the graph counts a loopback connection from its client anyway; a larger ring
    # rides out storms while the graph is read.
    # serve aggregates each raw ring batch before naming it (graph_raw). It also reports
    # failed connects, so it feeds all that a gadget feeding only those would (graph_feeds):
    # serve then runs no second program on every TCP state change.
    extra={"graph": "podsight.gadgets.tcplife.graph:observe",
           "graph_raw": "podsight.gadgets.tcplife.graph:observe_raw",
           "graph_recorded": "podsight.gadgets.tcplife.graph:observe_recorded",
           "graph_feeds": ("connections", "connect_failures"),
           # aggregate: closed connections summed per edge in the kernel, read every
           # edge_every (serve --per-connection: records, as trace tcplife writes them)
           "graph_values": {"loopback_once": True, "failed_connects": True,
                            "ring_size": 32 << 20, "aggregate": True,
                            "persistent_ns": 10 * 10**9, "edge_every": 10**9,
                            "edge_entries": 16384}},
)
