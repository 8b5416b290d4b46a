"""Every gadget's command, built from its :class:`~podsight.spec.GadgetSpec`.

The gadget declares its parameters; this module turns them into flags, adds
the flags every gadget shares (identity, outputs, limits, and filter rules
or interfaces where the gadget asks for them), parses, and hands the values
to :class:`podsight.pipeline.Run`. It is the only place that knows both
argparse and the pipeline; no gadget module imports it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from typing import Any

from podsight.cli import args as A
from podsight.cli.identity import add_identity_flags, netns_flag, pod_selector
from podsight.cli.parser import OneLineParser
from podsight.errors import UserError
from podsight.filters import AddressIn, FieldIn
from podsight.runtime import STOP, Stopped
from podsight.spec import GadgetSpec, Param

OUTPUT_HELP = "columns (default), json, or columns=a,b,c to pick columns"


def register(groups: Any, spec: GadgetSpec, parents: dict[tuple[str, ...], Any]) -> None:
    """Add ``spec``'s command under ``groups`` (making parent groups like ``trace`` as needed)."""
    where = groups
    for depth in range(1, len(spec.command)):
        path = spec.command[:depth]
        if path not in parents:
            raise ValueError(f"{spec.name}: no command group {' '.join(path)!r}")
        where = parents[path]
    p = where.add_parser(spec.command[-1], help=spec.help, description=spec.description)
    for param in spec.params:
        _add_param(p, param)
    _add_output_flags(p, spec)
    if "interfaces" in spec.flag_groups:
        g = p.add_argument_group("interfaces")
        g.add_argument("--interfaces", "--interface", "-i", dest="interfaces",
                       type=A.names, metavar="NAME[,NAME]",
                       help="observe these host interfaces (names or patterns like veth*; "
                            "followed as they come and go)")
        g.add_argument("--exclude-interfaces", type=A.names, metavar="NAME[,NAME]",
                       help="never observe these interfaces (names or patterns)")
    if "capture" in spec.flag_groups:
        _add_capture_flags(p)
    if "triggers" in spec.flag_groups:
        _add_trigger_flags(p, spec)
    if "rules" in spec.flag_groups:
        from podsight.cli.rules import add_filter_flags

        add_filter_flags(p)
        p.add_argument("more", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    add_identity_flags(p)
    p.set_defaults(func=partial(run, spec))


def _add_capture_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("capture file (pcapng)")
    g.add_argument("-w", "--write", metavar="FILE", required=True,
                   help="write pcapng to FILE (created with mode 0600), or '-' for stdout "
                        "(| wireshark -k -i -)")
    g.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    g.add_argument("--ring-size", type=lambda v: A.size(v, lo=4096), metavar="SIZE",
                   help="start a new file (FILE.00001.pcapng, ...) when one reaches SIZE")
    g.add_argument("--ring", type=lambda v: A.integer(v, 1, 1_000_000), metavar="N",
                   help="with --ring-size: keep only the last N files")
    g.add_argument("--max-packets", type=lambda v: A.integer(v, 1, 1 << 62),
                   metavar="N", help="stop after N packets")
    g.add_argument("--page-cache", action="store_true",
                   help="write FILE through the page cache, as tcpdump does (default: around "
                        "it with O_DIRECT where the filesystem allows, which costs a fraction "
                        "of the CPU per byte and leaves the node's cache alone)")
    g.add_argument("--comments", action="store_true",
                   help="a comment on every packet naming both ends (p/ns/pod:port -> "
                        "s/ns/svc:port); grows the file and costs user-space time")
    g.add_argument("--tls-keylog", metavar="FILE",
                   help="TLS key log (SSLKEYLOGFILE) to put in the file, followed as it "
                        "grows: a path on the host, or inside a selected pod")


def _add_trigger_flags(p: argparse.ArgumentParser, spec: GadgetSpec) -> None:
    from podsight.gadgets import specs

    g = p.add_argument_group("stop triggers")
    for other in specs():
        if other.name == spec.name:
            continue
        for trig in other.triggers:
            g.add_argument(trig.flag, nargs="?", const=trig.delay, default=None,
                           type=lambda v: A.seconds(v, lo=0) if v not in ("0", "0s") else 0.0,
                           metavar="DELAY", help=trig.help)
            if isinstance(p, OneLineParser):
                # `--until-failed-connect 'tcp port 80'`: the expression is not a DELAY.
                p.optional_values[trig.flag] = A.looks_like_duration


def _capture_output(ns: argparse.Namespace) -> Callable[[Any], Any]:
    """``-w`` and friends, checked now (bad input before anything is loaded), as a factory
    the pipeline calls once the gadget has started."""
    target = ns.write
    if not target or not target.strip():
        raise UserError("-w needs a file name, or - for stdout")
    if ns.ring is not None and ns.ring_size is None:
        raise UserError("--ring N needs --ring-size SIZE (when to start the next file)")
    if target == "-":
        if ns.ring_size is not None:
            raise UserError("--ring-size needs a file: -w - streams one pcapng to stdout")
        if sys.stdout.isatty():
            raise UserError("-w -: stdout is a terminal; pipe it (| wireshark -k -i -) or "
                            "give a file")
    else:
        first = target
        if ns.ring_size is not None:
            root, ext = os.path.splitext(target)
            first = f"{root}.00000{ext or '.pcapng'}"
        _check_new_file(first, "-w", force=ns.force)
    if ns.tls_keylog is not None and not ns.tls_keylog.strip():
        raise UserError("--tls-keylog needs a file name")

    def factory(ctx: Any) -> Any:
        from podsight.outputs.pcapng import PcapngOutput

        resolver = ctx.resolver
        def name_of(addr: str) -> str | None:
            """pod.namespace, service.namespace or the node's name (none for raw)."""
            ep = resolver.endpoint(addr)
            if not ep.name or ep.kind not in ("pod", "service", "node"):
                return None
            return str(ep.name) if ep.kind == "node" else f"{ep.name}.{ep.namespace}"

        def notation_of(addr: str) -> str:
            return str(resolver.endpoint(addr).notation)

        keylog = keylog_of(ns, ctx)
        output = PcapngOutput(target, application=f"podsight {ctx.spec.name}", force=ns.force,
                              ring=ns.ring, ring_size=ns.ring_size, max_packets=ns.max_packets,
                              comments=ns.comments, keylog=keylog, name_of=name_of,
                              notation_of=notation_of,
                              direct=not ns.page_cache)
        if keylog is None:
            return output
        from podsight.outputs.keyhold import KeyedHold

        # Keys are written after the packets they decrypt: hold packets until they can be.
        return KeyedHold(output, max_packets=ns.max_packets)

    return factory


def keylog_of(ns: argparse.Namespace, ctx: Any) -> Any:
    """``--tls-keylog FILE`` followed as a :class:`~podsight.outputs.pcapng.KeyLog` (a
    path on this host, else inside a selected pod), or None. Shared with
    ``podsight agent``, which sends the keys to the client's file."""
    if not getattr(ns, "tls_keylog", None):
        return None
    from podsight.outputs.pcapng import KeyLog

    resolver, selector = ctx.resolver, ctx.selector
    netns = frozenset(netns_flag(ns))

    def selected() -> set[int]:
        return set(netns) | (resolver.selected_netns(selector)
                             if selector.selects_pods else set())

    return KeyLog(ns.tls_keylog, selected)


def _check_new_file(path: str, flag: str, *, force: bool = False) -> None:
    """A file the run will create: its directory exists and is writable, and it does not
    exist unless ``force``."""
    if os.path.lexists(path) and not force:
        raise UserError(f"{path} exists: remove it, choose another file or add --force")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.stat(parent)
    except FileNotFoundError:
        raise UserError(f"cannot create {path}: no such directory {parent}") from None
    except OSError as exc:
        raise UserError(f"cannot create {path}: {exc.strerror}") from None
    if not os.path.isdir(parent):
        raise UserError(f"cannot create {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot create {path}: permission denied")
    if os.path.isdir(path):
        raise UserError(f"cannot create {path}: it is a directory")
    # Permissions are not the whole story (root, read-only or special file systems): try.
    existed = os.path.lexists(path)
    try:
        fd = os.open(path, os.O_WRONLY | (0 if existed else os.O_CREAT | os.O_EXCL), 0o600)
    except OSError as exc:
        raise UserError(f"cannot create {path}: {exc.strerror}") from None
    os.close(fd)
    if not existed:
        os.unlink(path)


def _triggers(spec: GadgetSpec, ns: argparse.Namespace, resolver: Any, selector: Any,
              clock: Any) -> list[Any]:
    """The stop triggers asked for (``--until-failed-connect``), each a gadget to run beside."""
    if "triggers" not in spec.flag_groups:
        return []
    from podsight.gadgets import specs
    from podsight.pipeline import RunContext, Trigger

    out = []
    for other in specs():
        for trig in other.triggers:
            delay = getattr(ns, trig.flag.lstrip("-").replace("-", "_"), None)
            if delay is None or other.name == spec.name:
                continue
            values = {p.key: p.default for p in other.params}
            values.update(trig.values)
            module, _, attr = other.factory.partition(":")
            factory = getattr(importlib.import_module(module), attr)
            ctx = RunContext(spec=other, values=values, resolver=resolver, selector=selector,
                             clock=clock, warn=_warn)
            out.append(Trigger(flag=trig.flag, ctx=ctx, factory=factory,
                               fires=FieldIn(trig.attr, frozenset(trig.matches)),
                               delay=float(delay), describe=_describer(trig.describe)))
    return out


def _describer(template: str) -> Callable[[Any], str]:
    def describe(record: Any) -> str:
        if not template:
            return str(record)
        fields = {}
        for name in ("src", "dst"):
            ep = getattr(record, name, None)
            port = getattr(record, {"src": "sport", "dst": "dport"}[name], 0)
            fields[name] = f"{ep.notation}:{port}" if ep is not None else "?"
        return template.format_map(_Attrs(record, fields))
    return describe


class _Attrs(dict):  # type: ignore[type-arg]
    def __init__(self, record: Any, fields: dict[str, str]) -> None:
        super().__init__(fields)
        self.record = record

    def __missing__(self, key: str) -> Any:
        return getattr(self.record, key, "?")


def _add_param(p: argparse.ArgumentParser, param: Param) -> None:
    kind = param.kind
    if not param.flags[0].startswith("-"):
        p.add_argument(param.flags[0], nargs="*", default=[], metavar=param.metavar,
                       help=param.help)
        return
    if kind.name == "flag":
        p.add_argument(*param.flags, dest=param.key, action="store_true", help=param.help)
    elif kind.name == "choice":
        p.add_argument(*param.flags, dest=param.key, choices=kind.choices,
                       default=param.default, help=param.help)
    else:
        parse = A.parser_for(kind)
        assert parse is not None
        p.add_argument(*param.flags, dest=param.key, type=parse,
                       default=param.default, metavar=param.metavar, help=param.help)


def _add_output_flags(p: argparse.ArgumentParser, spec: GadgetSpec) -> None:
    g = p.add_argument_group("outputs and limits")
    if spec.record_files:
        g.add_argument("-o", "--output", default="columns", help=OUTPUT_HELP)
    if spec.live:
        g.add_argument("--no-tui", action="store_true",
                       help="plain lines instead of the live view, even on a terminal"
                       if spec.record_files else
                       "a status line on stderr instead of the live view, even on a terminal")
    else:
        g.add_argument("--tui", action="store_true",
                       help="the live view (a table to sort, filter and aggregate; needs a "
                            "terminal) instead of plain lines")
    if spec.record_files:
        g.add_argument("--sqlite", metavar="FILE", help="also write every record to this new "
                       "SQLite file (written one transaction per batch: valid at every moment)")
        g.add_argument("--json", dest="json_file", metavar="FILE",
                       help="also write every record to this new file as JSON lines (beside "
                            "the live view, say)")
    g.add_argument("--max-time", "--timeout", dest="max_time",
                   type=lambda v: A.seconds(v), metavar="SECONDS", help="stop after this long")
    g.add_argument("--max-bytes", type=lambda v: A.size(v), metavar="SIZE",
                   help="stop once the outputs hold this much (e.g. 50M): JSON written plus "
                        "the SQLite file" if spec.record_files else
                        "stop once the output files hold this much (e.g. 50M)")
    if spec.interval is not None:
        g.add_argument("--interval", type=lambda v: A.seconds(v, hi=86400 * 1_000_000_000),
                       default=spec.interval, metavar="SECONDS",
                       help=f"how often records are read from the kernel and reported "
                            f"(default {spec.interval:g})")


def parse_output(value: str) -> tuple[str, str | None]:
    """``-o``: (mode, column spec)."""
    if value in ("columns", "table"):
        return "columns", None
    if value == "json":
        return "json", None
    if value.startswith("columns="):
        return "columns", value.split("=", 1)[1]
    raise UserError(f"invalid -o {value!r}: use columns, json or columns=a,b,c")


def predicates(spec: GadgetSpec, values: dict[str, Any]) -> list[Callable[[Any], bool]]:
    """The user-space filters a gadget's parameters declare (``Param.filter``)."""
    out: list[Callable[[Any], bool]] = []
    for param in spec.params:
        value = values.get(param.key)
        if param.filter is None or value is None:
            continue
        if param.kind.name == "names":
            out.append(FieldIn(param.filter, frozenset(value)))
        elif param.kind.name == "cidrs":
            out.append(AddressIn(param.filter, value))
        else:
            raise ValueError(f"{spec.name}: no user-space filter for {param.kind.name} params")
    return out


# -- running ---------------------------------------------------------------------------------

def _warn(text: str) -> None:
    sys.stderr.write(f"podsight: warning: {text}\n")
    sys.stderr.flush()


def _terminal() -> bool:
    """Can the live view run: a terminal to draw on (stdout) and keys to read (stdin)?"""
    return sys.stdout.isatty() and sys.stdin.isatty()


def _selector_words(ns: argparse.Namespace) -> str:
    words = []
    for flag, attr in (("-n", "namespace"), ("-p", "podname"), ("-l", "selector"),
                       ("-c", "containername"), ("--node", "node")):
        value = getattr(ns, attr, None)
        if value:
            words.append(f"{flag} {value}")
    return " ".join(words)


def run(spec: GadgetSpec, ns: argparse.Namespace) -> int:
    """Parse what is left of the flags, build the run, execute it; the summary line always."""
    from podsight.pipeline import OutputOptions, RunResult, summary_line

    mode, columns = parse_output(getattr(ns, "output", "columns"))
    if columns is not None:
        columns = columns.strip()
        if not columns.replace(",", "").strip():
            raise UserError("-o columns= needs at least one column name")
    sqlite, json_file = getattr(ns, "sqlite", None), getattr(ns, "json_file", None)
    for flag, path in (("--sqlite", sqlite), ("--json", json_file)):
        if path is not None:
            if not path.strip():
                raise UserError(f"{flag} needs a file name (it was empty)")
            if os.path.lexists(path):
                raise UserError(f"{path} exists: remove it or choose another file")
            _check_new_file(path, flag)
    if sqlite is not None and sqlite == json_file:
        raise UserError("--sqlite and --json name the same file")
    tui = getattr(ns, "tui", False)
    if tui and mode == "json":
        raise UserError("--tui shows the records on the terminal: with it, --json FILE "
                        "writes JSON lines (-o json is for stdout)")
    if tui and not _terminal():
        raise UserError("--tui needs a terminal on stdin and stdout (use -o json or "
                        "--json FILE otherwise)")
    live = tui or (mode == "columns" and spec.live and not getattr(ns, "no_tui", False)
                   and _terminal())
    frame_outputs: tuple[Callable[[Any], Any], ...] = ()
    if "capture" in spec.flag_groups:
        frame_outputs = (_capture_output(ns),)
        if not live:
            mode = "none"  # the capture file is the output; records only feed the view
    options = OutputOptions(
        mode=mode, columns=columns, sqlite=sqlite, json_file=json_file, live=live,
        max_time=ns.max_time, max_bytes=ns.max_bytes, command=" ".join(sys.argv),
        frame_outputs=frame_outputs, status_line=bool(frame_outputs) and not live,
    )
    result = RunResult()
    with ExitStack() as stack:
        try:
            run_ = build_run(spec, ns, options, stack)
        except Stopped:
            sys.stderr.write(summary_line(spec, result) + "\n")
            return 0
        if options.live:
            from podsight.tui import run_live

            err = run_.err

            def warn(text: str) -> None:
                err.write(f"podsight: warning: {text}\n")
            run_.ctx.warn = warn
            result = run_live(run_)
        else:
            result = run_.execute()
    if result.failure is not None:
        raise result.failure
    return 0


def build_run(spec: GadgetSpec, ns: argparse.Namespace, options: Any, stack: ExitStack, *,
              stop: Any = STOP, out: Any = None, err: Any = None,
              warn: Callable[[str], None] = _warn) -> Any:
    """The :class:`~podsight.pipeline.Run` of ``spec`` for parsed flags ``ns`` and
    ``options``: filter rules, pod selection, identity (closed by ``stack``), the gadget's
    factory and triggers. Shared by the local command and ``podsight agent``, which gives
    its own outputs, stop flag and error stream; raises :class:`Stopped` if ``stop`` is set
    during startup."""
    from podsight.pipeline import Run, RunContext
    from podsight.timefmt import Clock

    rules = []
    if "rules" in spec.flag_groups:
        from podsight.cli.rules import parse_rules

        rules = parse_rules(ns, ns.more)
    selector = pod_selector(ns)
    netns = netns_flag(ns)
    values = {p.key: getattr(ns, p.key) for p in spec.params}
    for extra in ("interval", "interfaces", "exclude_interfaces"):
        if hasattr(ns, extra):
            values[extra] = getattr(ns, extra)
    filters = predicates(spec, values)
    module, _, attr = spec.factory.partition(":")
    from podsight.cli.identity import build_resolver

    resolver = build_resolver(ns, stack)
    if spec.strict_pods and selector.pods.exact:
        known = {p.name for p in resolver.pods()}
        missing = sorted(selector.pods.exact - known)
        if missing and not (selector.pods.include - selector.pods.exact):
            raise UserError(f"no pod named {', '.join(missing)} (-p takes pod names "
                            "or patterns like 'web-*')")
    if selector.selects_pods and not any(
            selector.matches(p.namespace, p.name, p.labels, p.node or resolver.node_name,
                             p.containers) for p in resolver.pods()):
        warn(f"no pod matches {_selector_words(ns) or 'the pod flags'} yet; "
             "its traffic is captured as soon as one does")
    factory = getattr(importlib.import_module(module), attr)
    ctx = RunContext(spec=spec, values=values, resolver=resolver, selector=selector,
                     clock=Clock(), rules=rules, warn=warn)
    triggers = _triggers(spec, ns, resolver, selector, ctx.clock)
    stop.check()
    return Run(ctx, factory, options, netns, filters, stop=stop, out=out, err=err,
               triggers=triggers)
