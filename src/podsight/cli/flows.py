"""``podsight flows``: on-demand flow capture, aggregated in the kernel, enriched with identity.

The command is a loop over intervals: attach tc programs to the chosen
interfaces, every ``--interval`` harvest the kernel tables, turn them into
one record per flow, name both ends, and hand the records to the outputs
(live table or plain lines, JSON, SQLite). Stopping (Ctrl-C, SIGTERM,
``--max-time``, ``--max-bytes``) always goes through one last harvest and a
clean close, so every file is complete.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import ExitStack
from typing import Any

from podsight.cli import args as A
from podsight.cli.identity import add_identity_flags
from podsight.errors import UserError
from podsight.gadgets.flows.rules import add_filter_flags


def register(groups: Any) -> None:
    p = groups.add_parser(
        "flows",
        help="flows with bytes, packets, TCP flags, RTT, drops and DNS",
        description=(
            "Capture flows on the host side of pods' veths (or the host's interfaces with "
            "--host): bytes, packets and TCP flags per 5-tuple, aggregated in the kernel and "
            "reported every --interval, with the identity of both ends. Filters are kernel "
            "side; several filter rules are joined with a bare 'or'."
        ),
    )
    p.add_argument("-o", "--output", default="columns",
                   help="columns (default: a live table on a terminal), json, or columns=a,b,c")
    p.add_argument("--no-tui", action="store_true",
                   help="plain lines instead of the live table, even on a terminal")
    p.add_argument("--sqlite", metavar="FILE", help="also write every flow to this SQLite file")
    p.add_argument("--interval", type=A.seconds, default=1.0, metavar="SECONDS",
                   help="how often flows are read from the kernel and reported (default 1)")
    p.add_argument("--max-time", type=A.seconds, default=None, metavar="SECONDS",
                   help="stop after this long")
    p.add_argument("--max-bytes", type=_size, default=None, metavar="SIZE",
                   help="stop once the outputs hold this much (e.g. 50M): JSON written plus "
                        "the SQLite file")
    p.add_argument("--rtt", action="store_true", help="TCP RTT per flow (tcp:tcp_probe)")
    p.add_argument("--drops", action="store_true",
                   help="dropped packets per flow with the kernel's reason (skb:kfree_skb)")
    p.add_argument("--dns", action="store_true",
                   help="DNS id, name, type, response code and latency (UDP and TCP port 53)")
    p.add_argument("--enable-all", action="store_true", help="--rtt --drops --dns")
    p.add_argument("--drops-only", action="store_true",
                   help="only flows with dropped packets (turns on --drops)")
    p.add_argument("--interfaces", type=_names, metavar="NAME[,NAME]",
                   help="observe these host interfaces (names or patterns like veth*)")
    p.add_argument("--exclude-interfaces", type=_names, metavar="NAME[,NAME]",
                   help="never observe these interfaces (names or patterns)")
    p.add_argument("--max-flows", type=_max_flows, default=65536, metavar="N",
                   help="flow table size per interval (default 65536); flows beyond it go "
                        "through the ring buffer, never silently lost")
    add_filter_flags(p)
    add_identity_flags(p)
    p.add_argument("more", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(func=run_flows)


def _size(value: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = value.strip().upper().removesuffix("B").removesuffix("I")
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "")
    try:
        n = int(float(number) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid size {value!r}: e.g. 1048576, 500K, 50M") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {value!r}: must be positive")
    return n


def _names(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise argparse.ArgumentTypeError("needs at least one interface name")
    return names


def _max_flows(value: str) -> int:
    if not value.isdigit() or not 16 <= int(value) <= 1 << 22:
        raise argparse.ArgumentTypeError(f"invalid --max-flows {value!r}: 16 to 4194304")
    return int(value)


def run_flows(ns: argparse.Namespace) -> int:
    from podsight.cli.flows_run import FlowsCommand

    if ns.interval < 0.05:
        raise UserError("--interval must be at least 0.05 seconds")
    with ExitStack() as stack:
        cmd = FlowsCommand(ns, stack)
        started = time.monotonic()
        cmd.run()
        elapsed = time.monotonic() - started
    cmd.summary(elapsed, sys.stderr)
    return 0
