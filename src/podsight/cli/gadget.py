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
        g.add_argument("--interfaces", type=A.names, metavar="NAME[,NAME]",
                       help="observe these host interfaces (names or patterns like veth*; "
                            "followed as they come and go)")
        g.add_argument("--exclude-interfaces", type=A.names, metavar="NAME[,NAME]",
                       help="never observe these interfaces (names or patterns)")
    if "rules" in spec.flag_groups:
        from podsight.cli.rules import add_filter_flags

        add_filter_flags(p)
        p.add_argument("more", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    add_identity_flags(p)
    p.set_defaults(func=partial(run, spec))


def _add_param(p: argparse.ArgumentParser, param: Param) -> None:
    kind = param.kind
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
    g.add_argument("-o", "--output", default="columns", help=OUTPUT_HELP)
    if spec.live:
        g.add_argument("--no-tui", action="store_true",
                       help="plain lines instead of the live view, even on a terminal")
    else:
        g.add_argument("--tui", action="store_true",
                       help="the live view (a table to sort, filter and aggregate; needs a "
                            "terminal) instead of plain lines")
    g.add_argument("--sqlite", metavar="FILE", help="also write every record to this new "
                   "SQLite file (written one transaction per batch: valid at every moment)")
    g.add_argument("--json", dest="json_file", metavar="FILE",
                   help="also write every record to this new file as JSON lines (beside the "
                        "live view, say)")
    g.add_argument("--max-time", "--timeout", dest="max_time",
                   type=lambda v: A.seconds(v), metavar="SECONDS", help="stop after this long")
    g.add_argument("--max-bytes", type=lambda v: A.size(v), metavar="SIZE",
                   help="stop once the outputs hold this much (e.g. 50M): JSON written plus "
                        "the SQLite file")
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


def _check_new_file(flag: str, path: str) -> None:
    """An output file must be new, in a directory that exists and that we may write."""
    if not path.strip():
        raise UserError(f"{flag} needs a file name (it was empty)")
    if os.path.lexists(path):
        raise UserError(f"{path} exists: remove it or choose another file")
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
    from podsight.pipeline import OutputOptions, Run, RunContext, RunResult, summary_line
    from podsight.timefmt import Clock

    mode, columns = parse_output(ns.output)
    if columns is not None:
        columns = columns.strip()
        if not columns.replace(",", "").strip():
            raise UserError("-o columns= needs at least one column name")
    for flag, path in (("--sqlite", ns.sqlite), ("--json", ns.json_file)):
        if path is not None:
            _check_new_file(flag, path)
    if ns.sqlite is not None and ns.sqlite == ns.json_file:
        raise UserError("--sqlite and --json name the same file")
    tui = getattr(ns, "tui", False)
    if tui and mode == "json":
        raise UserError("--tui shows the records on the terminal: with it, --json FILE "
                        "writes JSON lines (-o json is for stdout)")
    if tui and not _terminal():
        raise UserError("--tui needs a terminal on stdin and stdout (use -o json or "
                        "--json FILE otherwise)")
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
    options = OutputOptions(
        mode=mode, columns=columns, sqlite=ns.sqlite, json_file=ns.json_file,
        live=tui or (mode == "columns" and spec.live and not getattr(ns, "no_tui", False)
                     and _terminal()),
        max_time=ns.max_time, max_bytes=ns.max_bytes, command=" ".join(sys.argv),
    )
    result = RunResult()
    with ExitStack() as stack:
        try:
            from podsight.cli.identity import build_resolver

            resolver = build_resolver(ns, stack)
            if selector.selects_pods and not any(
                    selector.matches(p.namespace, p.name, p.labels, p.node or resolver.node_name,
                                     p.containers) for p in resolver.pods()):
                _warn(f"no pod matches {_selector_words(ns) or 'the pod flags'} yet; "
                      "its traffic is captured as soon as one does")
            factory = getattr(importlib.import_module(module), attr)
            ctx = RunContext(spec=spec, values=values, resolver=resolver, selector=selector,
                             clock=Clock(), rules=rules, warn=_warn)
            STOP.check()
        except Stopped:
            sys.stderr.write(summary_line(spec, result) + "\n")
            return 0
        run_ = Run(ctx, factory, options, netns, filters)
        if options.live:
            from podsight.tui import run_live

            err = run_.err

            def warn(text: str) -> None:
                err.write(f"podsight: warning: {text}\n")
            ctx.warn = warn
            result = run_live(run_)
        else:
            result = run_.execute()
    if result.failure is not None:
        raise result.failure
    return 0
