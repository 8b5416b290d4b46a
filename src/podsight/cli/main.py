"""Entry point of the ``podsight`` command, and its error boundary.

Signals first: from the first line podsight runs, SIGINT and SIGTERM only
set a flag (see :mod:`podsight.runtime`), so that a Ctrl-C at any moment,
startup included, stops the run through its normal end (final drain,
closed files, summary line) instead of a traceback or a hang.

Then one boundary: every error podsight raises (:class:`PodsightError`) and
what lower layers raise (libbpf, the OS, sqlite, decoding) is printed as
one line, ``podsight: error: ...``, with exit code 2 for usage and 1 for a
run that failed. ``PODSIGHT_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

from podsight.runtime import STOP

STOP.install()  # before any other import: a signal during imports must not raise

import argparse  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sqlite3  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

from podsight import __version__  # noqa: E402
from podsight.cli.parser import OneLineParser  # noqa: E402
from podsight.errors import PodsightError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    from podsight.cli import agent, gadget, graph, lab, policy, serve
    from podsight.gadgets import specs

    parser = OneLineParser(
        prog="podsight",
        description="See what pods say on the wire: connects, flows, packets and policies.",
    )
    parser.add_argument("--version", action="version", version=f"podsight {__version__}")
    groups = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    groups.required = True
    trace = groups.add_parser("trace", help="trace events as they happen")
    trace_gadgets = trace.add_subparsers(dest="gadget", metavar="GADGET",
                                         parser_class=OneLineParser)
    trace_gadgets.required = True
    parents: dict[tuple[str, ...], Any] = {("trace",): trace_gadgets}
    for spec in specs():
        gadget.register(groups, spec, parents)
    lab.register(groups)
    policy.register_advise(groups)
    policy.register_check(groups)
    serve.register(groups)
    graph.register(groups)
    agent.register(groups)
    return parser


def _message(exc: BaseException) -> tuple[str, int]:
    """The one line and exit code for an error that reached the boundary."""
    if isinstance(exc, PodsightError):
        return str(exc), exc.exit_code
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}", 1
    if isinstance(exc, sqlite3.Error):
        return f"sqlite: {exc}", 1
    if isinstance(exc, (struct.error, OverflowError, ValueError, UnicodeError)):
        return f"cannot decode or encode a value ({type(exc).__name__}: {exc}); this is a bug "\
               "in podsight: please report it with PODSIGHT_DEBUG=1", 1
    return f"internal error ({type(exc).__name__}: {exc}); please report it with "\
           "PODSIGHT_DEBUG=1", 1


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        func = args.func
        if args.command == "lab":
            # Lab commands run no capture: Ctrl-C and SIGTERM interrupt them (KeyboardInterrupt),
            # and each cleans up in its own ``finally``.
            STOP.restore()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
            if STOP.is_set():
                return 130
        rc: int = func(args)
        return rc
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `podsight ... | head`: the reader left; that is not an error.
        _quiet_stdio()
        return 0
    except SystemExit:
        raise
    except BaseException as exc:  # the boundary: one line, whatever it was
        text, code = _message(exc)
        if os.environ.get("PODSIGHT_DEBUG"):
            traceback.print_exc()
        try:
            sys.stderr.write(f"podsight: error: {text}\n")
            sys.stderr.flush()
        except OSError:
            pass
        return code


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _quiet_stdio() -> None:
    """Point stdout at /dev/null so Python's exit-time flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
