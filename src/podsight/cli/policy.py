"""``podsight advise network-policy`` and ``podsight policy check``.

- ``advise network-policy`` writes one least-privilege NetworkPolicy per
  workload from observed connections: recorded ones (``--from FILE``, the
  JSON lines or SQLite that trace tcpconnect and flows write) or a live run
  of a gadget (``--gadget flows|tcpconnect``, until ``--timeout`` or Ctrl-C,
  with the usual pod flags), to stdout or ``--output-dir``.
- ``policy check`` says which observed connections a set of policies would
  deny, before anyone applies them: exit 0 when everything is allowed, 1
  when anything is denied (or, with ``--diff``, changes verdict), 2 for bad
  input (a policy the API server would reject, an unreadable file).

Who is who comes from ``--objects FILE`` (offline: ``kubectl get
namespaces,pods,services -A -o yaml``), else from the API server
(``--kubeconfig``, ``--context``, ``$KUBECONFIG``, in a pod), else only
from what the records say. Heavy modules are imported only when a command
runs, so ``podsight --help`` does not pay for them.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from podsight.cli import args as A
from podsight.errors import RunFailure, UserError

if TYPE_CHECKING:
    from podsight.analysis.policy import World

#: advise --output-dir names the files it wrote up to this many.
SHOWN_FILES = 4

ADVISE_TEXT = """Write one NetworkPolicy per workload (Ingress and Egress) allowing exactly the
connections observed: read from --from FILE (trace tcpconnect or flows, JSON lines or SQLite),
or from a live run of a gadget until --timeout or Ctrl-C. Each rule carries the observations
that justify it as YAML comments."""

CHECK_TEXT = """Judge every observed connection against a set of NetworkPolicies with Kubernetes'
semantics, before anyone applies them. Exit status: 0 all allowed, 1 something denied (with
--diff: something changes verdict), 2 bad input."""


def _subcommand(groups: Any, group: str, group_help: str, metavar: str, name: str,
                help: str, description: str) -> Any:
    """``podsight GROUP NAME``: the group's parser (its subcommand required) and NAME's."""
    from podsight.cli.parser import OneLineParser

    parent = groups.add_parser(group, help=group_help)
    what = parent.add_subparsers(dest=f"{group}_command", metavar=metavar,
                                 parser_class=OneLineParser)
    what.required = True
    return what.add_parser(name, help=help, description=description)


def register_advise(groups: Any) -> None:
    from podsight.cli.identity import add_identity_flags

    p = _subcommand(groups, "advise", "write NetworkPolicies from observed traffic", "WHAT",
                    "network-policy", "one least-privilege NetworkPolicy per workload",
                    ADVISE_TEXT)
    p.add_argument("--from", dest="sources", action="append", metavar="FILE",
                   help="recorded connections (repeatable; - for JSON lines on stdin); "
                        "without it, a live run")
    p.add_argument("--gadget", choices=("flows", "tcpconnect"), default="flows",
                   help="the gadget of a live run (default flows: both directions, TCP, UDP "
                        "and SCTP; tcpconnect sees TCP connects only)")
    p.add_argument("--max-time", "--timeout", dest="max_time", type=lambda v: A.seconds(v),
                   metavar="SECONDS", help="stop a live run after this long")
    p.add_argument("--objects", metavar="FILE",
                   help="Namespaces, Pods and Services (kubectl get namespaces,pods,services "
                        "-A -o yaml): labels, Service selectors and target ports")
    p.add_argument("--aggregate-cidr", metavar="N[,M]", type=_aggregate,
                   help="write addresses outside the cluster as IPv4 /N (and IPv6 /M) networks "
                        "instead of single addresses")
    p.add_argument("--output-dir", metavar="DIR",
                   help="write one file per policy (NAMESPACE.NAME.yaml) there instead of stdout")
    p.add_argument("--overwrite", action="store_true",
                   help="with --output-dir, replace files that exist")
    add_identity_flags(p)
    p.set_defaults(func=_advise)


def register_check(groups: Any) -> None:
    p = _subcommand(groups, "policy", "check NetworkPolicies against observed traffic",
                    "COMMAND", "check", "which observed connections would these policies deny?",
                    CHECK_TEXT)
    p.add_argument("--policies", required=True, metavar="PATH",
                   help="a file or a directory (*.yaml, *.yml, *.json, not recursive) of "
                        "NetworkPolicies: one per file, several documents, or a List")
    p.add_argument("--from", dest="sources", action="append", required=True, metavar="FILE",
                   help="observed connections: trace tcpconnect or flows JSON lines or SQLite, "
                        "or bare records (repeatable; - for stdin)")
    p.add_argument("--objects", metavar="FILE",
                   help="who is who, offline: Namespaces and Pods (kubectl get "
                        "namespaces,pods -A -o yaml; Services and Nodes too if you have them)")
    p.add_argument("--kubeconfig", help="who is who from this cluster (default: $KUBECONFIG)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--diff", metavar="DIR|cluster",
                   help="compare with these policies (a directory, or 'cluster' for the "
                        "cluster's): print the connections whose verdict changes")
    p.add_argument("-j", "--jobs", type=lambda v: A.integer(v, 1, 256), metavar="N",
                   help="judge on N CPUs (default: up to 4 when the records are 32 MB or more; "
                        "1: one CPU). Stdin and flow records are judged on one CPU")
    p.add_argument("-o", "--output", default="columns", choices=("columns", "json"),
                   help="columns: the denied connections with the reason (default); json: one "
                        "object per connection")
    p.set_defaults(func=_check)


def _aggregate(value: str) -> tuple[int, int]:
    parts = [p.strip() for p in value.split(",")]
    if len(parts) > 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"invalid --aggregate-cidr {value!r}: N or N,M")
    four = A.integer(parts[0], 1, 32)
    six = A.integer(parts[1], 1, 128) if len(parts) == 2 else 128
    return four, six


def _warn(text: str) -> None:
    sys.stderr.write(f"podsight: warning: {text}\n")
    sys.stderr.flush()


def _wants_api(ns: argparse.Namespace) -> bool:
    from podsight.cli.identity import wants_kubernetes

    return wants_kubernetes(ns)


def _world(ns: argparse.Namespace, *, live_lab: bool = False) -> World:
    """Who is who: --objects, else the API (when configured), else only the records (and,
    for a live run, the lab's inventory when the lab is up, as identity reads it)."""
    from podsight.analysis.policy import World, kube
    from podsight.analysis.policy import documents as docs
    from podsight.analysis.policy.world import from_documents

    if ns.objects is not None:
        if getattr(ns, "kubeconfig", None) or getattr(ns, "context", None):
            raise UserError("--objects and --kubeconfig/--context exclude each other: who is "
                            "who comes from one of them")
        return from_documents(docs.documents(ns.objects, "--objects"), f"--objects {ns.objects}")
    world = World(origin="the records")
    if live_lab:
        from podsight.identity.lab import inventory_path

        path = inventory_path()
        if path.exists():
            world = from_documents(docs.documents(str(path), "the lab inventory"),
                                   f"the lab inventory {path}")
    if _wants_api(ns):
        world.merge(kube.world(kube.connect(ns.kubeconfig, ns.context)))
        world.origin = "the Kubernetes API"
    return world


# -- policy check ------------------------------------------------------------------------------

def _check(ns: argparse.Namespace) -> int:
    from podsight.analysis.policy import Checker, Reader, load
    from podsight.analysis.policy import kube as kube_api
    from podsight.analysis.policy.checkrun import (
        MAX_AUTO_JOBS,
        Skip,
        Tally,
        judge,
        judge_parallel,
        plan,
    )
    from podsight.analysis.policy.policies import PolicySet, collect
    from podsight.analysis.policy.report import JsonReport, TableReport
    from podsight.runtime import STOP

    _hold_gc()
    policies = load(ns.policies)
    _say_skipped(policies, ns.policies)
    baseline: PolicySet | None = None
    if ns.diff is not None:
        if ns.diff == "cluster":
            if ns.objects is not None and not _wants_api(ns):
                raise UserError("--diff cluster needs the cluster: give --kubeconfig")
            baseline = collect(kube_api.policies(kube_api.connect(ns.kubeconfig, ns.context)))
        else:
            if not os.path.isdir(ns.diff):
                raise UserError(f"--diff {ns.diff}: not a directory (give a directory of "
                                "policies, or 'cluster')")
            baseline = load(ns.diff, "--diff")
            _say_skipped(baseline, ns.diff)
    world = _world(ns)
    checker = Checker(policies.policies, world)
    before = Checker(baseline.policies, world) if baseline is not None else None
    reader = Reader(ns.sources, server_port=_server_port(world))
    _settle_gc()
    out = sys.stdout
    diff = before is not None
    every = ns.output == "json" or diff  # the table shows the denied ones only

    def make_report(stream: Any, header: bool = True) -> Any:
        return JsonReport(stream) if ns.output == "json" else \
            TableReport(stream, diff=diff, header=header)

    def work(conns: Any, report: Any) -> Tally:
        return judge(conns, checker, before, report, every, STOP.is_set)

    tally: Tally | None = None
    written = 0  # characters of the one-CPU output already written
    chunks = plan(ns.sources, ns.jobs)
    if chunks is not None:
        jobs = ns.jobs or min(os.cpu_count() or 1, MAX_AUTO_JOBS)
        got = judge_parallel(chunks, jobs, reader, make_report, work, out,
                             lambda: "" if ns.output == "json" else
                             TableReport(out, diff=diff).header_text, STOP.is_set)
        if isinstance(got, Tally):
            tally = got
        else:
            written = got
    if tally is None:  # one CPU: small or unsplittable input, or --jobs 1
        tally = work(reader.items(), make_report(Skip(out, written) if written else out))
        tally.records, tally.skipped = reader.stats.records, reader.stats.skipped
    out.flush()
    n, denied, changed = tally.connections, tally.denied, tally.changed
    counts = {"allowed": n - denied, "denied": denied}
    line = (f"podsight: {n} connection{'s' if n != 1 else ''} checked: {counts['allowed']} "
            f"allowed, {counts['denied']} denied ({len(policies.policies)} "
            f"polic{'ies' if len(policies.policies) != 1 else 'y'}; who is who: {world.origin})")
    if before is not None:
        line += f"; {changed} change verdict against {ns.diff}"
    skipped = ", ".join(f"{k} {p}" for p, k in sorted(tally.skipped.items()))
    if skipped:
        line += f"; records skipped: {skipped} (NetworkPolicy covers tcp, udp and sctp)"
    sys.stderr.write(line + "\n")
    if before is not None:
        return 1 if changed else 0
    return 1 if counts["denied"] else 0


def _hold_gc() -> None:
    """No collection while the policies and objects load (:func:`_settle_gc` ends this).

    Why: loading 1,000 policies and 5,000 pods makes hundreds of thousands of containers
    (YAML nodes, dicts, lists), none of them garbage in a cycle, and every 700 of them
    started a collection that walked the ones made before: ~0.1-0.2 s of start-up (of
    ~1.1 s before a check reads its first record) for nothing found.
    """
    import gc

    gc.disable()


def _settle_gc() -> None:
    """Before reading records: the policies and objects just loaded are kept to the end, so
    they are moved out of the collector's sight (:func:`gc.freeze`), and young objects are
    collected every 50,000 allocations instead of 700.

    Why: each record allocates a few containers that reference counting frees at once (a
    record makes no cycles), yet every 700 of them started a collection, and the older
    generations' collections walked every pod, policy and cache entry again: ~7% of a
    check's or advise's CPU, for nothing found. Output does not depend on it.

    No collection before the freeze: loading leaves ~500 objects in cycles (~70 KB of
    classes and functions made by dataclasses and the like), frozen with the rest, and
    looking for them walked all ~156,000 objects (0.05 s).
    """
    import gc

    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    gc.enable()  # held while loading (_hold_gc)


def _say_skipped(policies: Any, path: str) -> None:
    if policies.skipped:
        _warn(f"{path}: skipped {policies.skipped_text()} (not NetworkPolicies)")


def _server_port(world: World) -> Any:
    """For flows without a SYN: is (addr, port, proto) a port a pod or Service serves?"""
    def serves(addr: str, port: int, proto: str) -> bool:
        pod = world.pods_by_ip.get(addr)
        want = proto.upper()
        if pod is not None and pod.ports:
            return any(c.port == port and c.protocol == want for c in pod.ports)
        svc = world.services_by_ip.get(addr)
        return svc is not None and svc.port(port, want) is not None

    return serves


# -- advise network-policy ------------------------------------------------------------------

def _advise(ns: argparse.Namespace) -> int:
    from podsight.analysis.policy import Advisor, Reader, render
    from podsight.cli.identity import pod_selector

    selector = pod_selector(ns)
    out_dir = ns.output_dir
    if out_dir is not None:
        _check_output_dir(out_dir)
    four, six = ns.aggregate_cidr or (32, 128)

    def subjects(pod: Any) -> bool:
        if not selector.selects_pods:
            return True
        return selector.matches(pod.namespace, pod.name, pod.labels or {}, pod.node,
                                ())

    if ns.sources:
        from podsight.analysis.policy.checkrun import MAX_AUTO_JOBS, advise_parallel, plan
        from podsight.runtime import STOP

        _hold_gc()
        world = _world(ns)

        def make_advisor() -> Advisor:
            return Advisor(world, subjects=subjects, aggregate4=four, aggregate6=six)

        reader = Reader(ns.sources, server_port=_server_port(world))
        _settle_gc()
        # Big captures are read on every CPU, as policy check reads them (same threshold).
        chunks = plan(ns.sources, None)
        jobs = min(os.cpu_count() or 1, MAX_AUTO_JOBS)
        advisor = None if chunks is None else \
            advise_parallel(chunks, jobs, reader, make_advisor, STOP.is_set)
        if advisor is None:  # one CPU (what the parts read is not counted twice)
            reader = Reader(ns.sources, server_port=_server_port(world))
            advisor = make_advisor()
            advisor.add_items(reader.items())
        records = reader.stats.records
        skipped = reader.stats.skipped_text()
    else:
        world = _world(ns, live_lab=True)
        advisor = Advisor(world, subjects=subjects, aggregate4=four, aggregate6=six)
        records, skipped = _live(ns, advisor)
    advices = advisor.policies()
    for text in advisor.warnings:
        _warn(text)
    if skipped:
        _warn(f"records skipped: {skipped} (NetworkPolicy covers tcp, udp and sctp)")
    what = (f"{len(advices)} polic{'ies' if len(advices) != 1 else 'y'} from "
            f"{advisor.connections} connection{'s' if advisor.connections != 1 else ''} "
            f"({records} records)")
    if out_dir is None:
        sys.stdout.write(render.documents(advices))
        sys.stdout.flush()
        sys.stderr.write(f"podsight: {what}\n")
        return 0
    names = _write_all(out_dir, {render.file_name(a): render.document(a) for a in advices},
                       ns.overwrite)
    # Names only while they fit on the line: 500 policies are 500 files, not a paragraph.
    listed = f": {', '.join(names)}" if 0 < len(names) <= SHOWN_FILES else ""
    sys.stderr.write(f"podsight: {what} written to {out_dir}{listed}\n")
    return 0


def _check_output_dir(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--output-dir {path}: not a directory")
    if not os.path.isdir(parent):
        raise UserError(f"--output-dir {path}: no such directory {parent}")


def _write_all(out_dir: str, files: dict[str, str], overwrite: bool) -> list[str]:
    """Every file or none: targets are checked first, each is written to a temporary file
    and renamed over its name, so a reader never sees half a policy."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--output-dir {out_dir}: cannot create it: "
                        f"{(exc.strerror or str(exc)).lower()}") from None
    if not overwrite:
        existing = [n for n in files if os.path.lexists(os.path.join(out_dir, n))]
        if existing:
            raise UserError(f"{os.path.join(out_dir, existing[0])} exists: remove it or use "
                            "--overwrite")
    temps: list[tuple[str, str]] = []
    try:
        for name, text in sorted(files.items()):
            final = os.path.join(out_dir, name)
            tmp = os.path.join(out_dir, f".{name}.{os.getpid()}.tmp")
            temps.append((tmp, final))  # before it exists: a failed write is removed too
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
        for tmp, final in temps:
            os.replace(tmp, final)
    except BaseException as exc:  # an error or Ctrl-C: no temporary file is left
        for tmp, _ in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if not isinstance(exc, OSError):
            raise
        text = f"writing to {out_dir}: {(exc.strerror or str(exc)).lower()}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            raise RunFailure(text) from None
        raise UserError(text) from None
    return sorted(files)


def _live(ns: argparse.Namespace, advisor: Any) -> tuple[int, str]:
    """A live run of the gadget; its records go to the advisor as they come."""
    import importlib

    from podsight.cli.identity import build_resolver, netns_flag, pod_selector
    from podsight.gadgets import specs
    from podsight.pipeline import OutputOptions, Run, RunContext
    from podsight.runtime import STOP, Stopped
    from podsight.timefmt import Clock

    spec = next(s for s in specs() if s.name == ns.gadget)
    values: dict[str, Any] = {p.key: p.default for p in spec.params}
    values.update(interval=spec.interval, interfaces=None, exclude_interfaces=None)
    sink = _Sink(advisor)
    options = OutputOptions(mode="none", sinks=(sink,), max_time=ns.max_time,
                            command=" ".join(sys.argv))
    with ExitStack() as stack:
        try:
            resolver = build_resolver(ns, stack)
            module, _, attr = spec.factory.partition(":")
            factory = getattr(importlib.import_module(module), attr)
            ctx = RunContext(spec=spec, values=values, resolver=resolver,
                             selector=pod_selector(ns), clock=Clock(), warn=_warn)
            STOP.check()
        except Stopped:
            return 0, ""
        sink.clock = ctx.clock
        result = Run(ctx, factory, options, netns_flag(ns), []).execute()
    if result.failure is not None:
        raise result.failure
    sink.finish()
    return sink.records, sink.merger_skipped


class _Sink:
    """An output of a live run: records become connections for the advisor at once."""

    def __init__(self, advisor: Any) -> None:
        from podsight.analysis.policy.records import FlowMerger

        self.advisor = advisor
        self.clock: Any = None
        self.records = 0
        self._flows = FlowMerger()
        self._skipped: dict[str, int] = {}

    @property
    def merger_skipped(self) -> str:
        return ", ".join(f"{n} {p}" for p, n in sorted(self._skipped.items()))

    def write(self, records: Any) -> None:
        from podsight.analysis.policy.records import Connection

        for r in records:
            self.records += 1
            src, dst = _hint(r.src), _hint(r.dst)
            if hasattr(r, "result"):  # a tcpconnect Connect
                when = self.clock.rfc3339(self.clock.wall_ns(r.ts_ns)) if self.clock else ""
                self.advisor.add(Connection("tcp", r.saddr, r.sport, r.daddr, r.dport, src,
                                            dst, when, when, 1, r.result))
                continue
            from podsight.net.protocols import flag_names

            proto = r.protocol
            if proto not in ("tcp", "udp", "sctp"):
                self._skipped[proto] = self._skipped.get(proto, 0) + 1
                continue
            first = self.clock.rfc3339(self.clock.wall_ns(r.first_ns)) if self.clock else ""
            last = self.clock.rfc3339(self.clock.wall_ns(r.last_ns)) if self.clock else ""
            self._flows.add(proto, r.saddr, r.sport, r.daddr, r.dport, src, dst, first, last,
                            flag_names(r.tcp_flags))

    def finish(self) -> None:
        self.advisor.add_all(self._flows.connections())


def _hint(ep: Any) -> Any:
    """A live record's Endpoint as the advisor reads records' identity."""
    from podsight.analysis.policy import Hint

    if ep is None:
        return None
    if ep.kind == "pod":
        return Hint("pod", ep.namespace, ep.name, tuple(ep.labels.items()), ep.node,
                    ep.workload_kind, ep.workload_name)
    if ep.kind == "service":
        return Hint("service", ep.namespace, ep.name)
    if ep.kind == "node":
        return Hint("node", name=ep.name)
    return None
