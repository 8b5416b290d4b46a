"""``podsight trace <gadget>``: per-event traces (tcpconnect first)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from podsight.cli import args as A
from podsight.cli.identity import add_identity_flags
from podsight.errors import UserError
from podsight.timefmt import Clock


def register(groups: Any) -> None:
    trace = groups.add_parser("trace", help="trace events as they happen")
    gadgets = trace.add_subparsers(dest="gadget", metavar="GADGET")
    gadgets.required = True
    _register_tcpconnect(gadgets)


def _register_tcpconnect(gadgets: Any) -> None:
    p = gadgets.add_parser(
        "tcpconnect",
        help="every TCP connect attempt with its outcome and latency",
        description=(
            "Trace every active TCP connect (IPv4 and IPv6) and report it once its outcome is "
            "known: ok, refused, timeout, unreachable, error, aborted; attempts still open at "
            "the end are reported as pending."
        ),
    )
    p.add_argument("-o", "--output", default="columns",
                   help="columns (default), json, or columns=a,b,c to pick columns")
    p.add_argument("--latency", action="store_true",
                   help="show the latency column (always on in the default columns; "
                        "kept for Inspektor Gadget compatibility)")
    p.add_argument("--min-latency", type=A.duration_ns, default=0, metavar="DURATION",
                   help="only attempts that took at least this long (e.g. 5ms)")
    p.add_argument("--failed-only", action="store_true", help="only attempts that did not succeed")
    p.add_argument("--pid", type=A.pid, default=0, help="only this process (tgid)")
    p.add_argument("--comm", help="only processes with this command name (comma list)")
    p.add_argument("--netns", help="only these network namespaces: inode or name under "
                                   "/var/run/netns (comma list)")
    p.add_argument("--dst", type=A.cidr_list, help="only destinations in these CIDRs (comma list)")
    p.add_argument("--dport", type=A.port, default=0, help="only this destination port")
    p.add_argument("--timeout", type=A.seconds, default=None, metavar="SECONDS",
                   help="stop after this long")
    p.add_argument("--ring-size", type=_ring_size, default=4 << 20, metavar="BYTES",
                   help="ring buffer size (power of two, >= 4096; default 4 MiB)")
    add_identity_flags(p)
    p.set_defaults(func=run_tcpconnect)


def _ring_size(value: str) -> int:
    n = int(value) if value.isdigit() else -1
    if n < 4096 or n & (n - 1):
        raise argparse.ArgumentTypeError(f"invalid ring size {value!r}: a power of two >= 4096")
    return n


def _parse_output(value: str) -> tuple[str, str | None]:
    if value in ("columns", "table"):
        return "columns", None
    if value == "json":
        return "json", None
    if value.startswith("columns="):
        return "columns", value.split("=", 1)[1]
    raise UserError(f"invalid -o {value!r}: use columns, json or columns=a,b,c")


def run_tcpconnect(ns: argparse.Namespace) -> int:
    from contextlib import ExitStack

    import numpy as np

    from podsight.cli.identity import build_resolver, pod_selector, print_notices
    from podsight.events import select_fields
    from podsight.filters import CidrMatcher, combine
    from podsight.gadgets.tcpconnect.fields import K8S_COLUMNS, ConnectRow, fields, to_json
    from podsight.gadgets.tcpconnect.render import JsonRenderer
    from podsight.gadgets.tcpconnect.tcpconnect import ConnectEvent, TcpConnect, TcpConnectConfig
    from podsight.identity.netns import parse_netns
    from podsight.outputs.jsonlines import JsonLinesWriter
    from podsight.outputs.table import TableWriter
    from podsight.runtime import StopFlag

    mode, columns = _parse_output(ns.output)
    selector = pod_selector(ns)
    netns = {parse_netns(v) for v in (ns.netns or "").split(",") if v.strip()}
    if ns.netns is not None and not netns:
        raise UserError("--netns needs at least one namespace")

    predicates: list[Callable[[ConnectEvent], bool]] = []
    if ns.comm is not None:
        comms = {c.strip() for c in ns.comm.split(",") if c.strip()}
        if not comms:
            raise UserError("--comm needs a command name")
        predicates.append(lambda e: e.comm in comms)
    if ns.dst:
        in_dst = CidrMatcher(ns.dst)
        predicates.append(lambda e: in_dst(e.daddr))
    keep = combine(predicates)

    with ExitStack() as stack:
        resolver = build_resolver(ns, stack)
        clock = Clock()
        extra = ["latency"] if ns.latency else []
        if resolver.knows_pods:
            extra += [*K8S_COLUMNS, *(["k8s.node"] if resolver.has_kubernetes else [])]
        table_fields = select_fields(fields(clock), columns, extra=extra)

        # Pod flags and --netns become the kernel's netns filter; pods come and go, so the
        # set is recomputed whenever identity changes.
        filtering = bool(netns) or selector.selects_pods

        def wanted_netns() -> set[int]:
            return netns | resolver.selected_netns(selector) if selector.selects_pods else netns

        config = TcpConnectConfig(
            pid=ns.pid, dport=ns.dport, netns=wanted_netns(), filter_netns=filtering,
            failed_only=ns.failed_only, min_latency_ns=ns.min_latency, ring_bytes=ns.ring_size,
        )
        out = sys.stdout
        json_writer = JsonLinesWriter(out)
        table = TableWriter(table_fields, out)
        emitted = 0

        def admit(e: ConnectEvent) -> ConnectRow | None:
            """The event's row, identity resolved, or None if a filter drops it."""
            if keep is not None and not keep(e):
                return None
            src = resolver.local_endpoint(e.saddr, e.netns, e.cgroup_id, at_ns=e.ts_ns)
            if selector.selects_pods and not (
                e.netns in netns or resolver.selects(selector, src, e.netns)
            ):
                return None
            return ConnectRow(e, src, resolver.remote_endpoint(e.daddr, src, at_ns=e.ts_ns),
                              clock.wall_ns(e.ts_ns))

        def emit(events: list[ConnectEvent]) -> int:
            nonlocal emitted
            rows = [r for r in map(admit, events) if r is not None]
            if mode == "json":
                json_writer.write([to_json(r, clock) for r in rows])
            else:
                table.write(rows)
            emitted += len(rows)
            return len(rows)

        tracer = stack.enter_context(TcpConnect(config))
        renderer = JsonRenderer(clock, tracer.decode, admit, resolver)

        def emit_records(records: np.ndarray) -> None:
            """The hot path: JSON is rendered from the records through templates."""
            nonlocal emitted
            if mode != "json":
                emit(tracer.decode(records))
                return
            lines = renderer.lines(records)
            json_writer.write(lines)
            emitted += len(lines)

        stop = stack.enter_context(StopFlag(ns.timeout))
        if mode == "columns":
            table.header()
        # Printed once the programs are attached: from here on nothing is missed.
        sys.stderr.write("podsight: tracing TCP connects (Ctrl-C to stop)\n")
        sys.stderr.flush()
        while not stop.is_set():
            tracer.wait(stop.remaining(0.05))
            if resolver.refresh():
                renderer.clear()
                if filtering:
                    tracer.set_netns(wanted_netns())
            emit_records(tracer.drain())
            print_notices(resolver)
        emit_records(tracer.drain())
        pending = emit(tracer.pending(clock.boot_now_ns()))
        counters = tracer.counters()
    _summary(emitted, counters, pending)
    return 0


def _summary(emitted: int, counters: dict[str, int], pending: int) -> None:
    causes = {
        "lost_ringbuf": "ring buffer full (a larger --ring-size helps)",
        "lost_inflight": "in-flight table full",
        "lost_skipped": "outcome not seen: the kernel skipped a nested program run",
    }
    lost = sum(counters[k] for k in causes)
    line = f"podsight: {emitted} events, {lost} lost, {pending} pending"
    if lost:
        why = "; ".join(f"{text}: {counters[k]}" for k, text in causes.items() if counters[k])
        line += f" ({why})"
    sys.stderr.write(line + "\n")
