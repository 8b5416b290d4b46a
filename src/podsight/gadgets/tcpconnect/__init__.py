"""tcpconnect: every active TCP connect with its outcome and latency (``podsight trace
tcpconnect``). This module only declares the gadget; its code is imported to run it."""

from podsight.spec import (
    CIDRS,
    FLAG,
    NAMES,
    PID,
    PORT,
    GadgetSpec,
    Param,
    TriggerSpec,
    duration,
    power_of_two,
)

SPEC = GadgetSpec(
    name="tcpconnect",
    command=("trace", "tcpconnect"),
    help="every TCP connect attempt with its outcome and latency",
    description=(
        "Trace every active TCP connect (IPv4 and IPv6) and report it once its outcome is "
        "known: ok, refused, timeout, unreachable, error, aborted; attempts still open at "
        "the end are reported as pending."
    ),
    factory="podsight.gadgets.tcpconnect.tcpconnect:TcpConnectGadget",
    params=(
        Param(("--latency",), "show the latency column (always on in the default columns; "
              "kept for Inspektor Gadget compatibility)", FLAG, False),
        Param(("--min-latency",), "only attempts that took at least this long (e.g. 5ms)",
              duration(), 0, "DURATION"),
        Param(("--failed-only",), "only attempts that did not succeed", FLAG, False),
        Param(("--pid",), "only this process (tgid)", PID, 0),
        Param(("--comm",), "only processes with this command name (comma list)", NAMES,
              filter="comm"),
        Param(("--dst",), "only destinations in these CIDRs (comma list)", CIDRS,
              filter="daddr"),
        Param(("--dport",), "only this destination port", PORT, 0),
        Param(("--ring-size",), "ring buffer size (power of two, 4K to 1G; default 4M)",
              power_of_two(4096, 1 << 30), 4 << 20, "BYTES"),
    ),
    noun="events",
    reports_pending=True,
    triggers=(
        TriggerSpec(
            flag="--until-failed-connect",
            help="also trace TCP connects, and stop DELAY (default 2s) after the first one "
                 "from a selected pod that is refused, times out or is unreachable",
            attr="result", matches=("refused", "timeout", "unreachable"), delay=2.0,
            values={"failed_only": True},
            describe="{result} connect {src} -> {dst}",
        ),
    ),
    # serve needs only the failures: the kernel keeps the successes to itself.
    # serve leaves it out while another gadget feeds failed connects too (graph_feeds).
    extra={"graph": "podsight.gadgets.tcpconnect.graph:observe",
           "graph_feeds": ("connect_failures",),
           "graph_recorded": "podsight.gadgets.tcpconnect.graph:observe_recorded",
           "graph_values": {"failed_only": True}},
)
