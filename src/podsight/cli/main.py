"""Entry point of the ``podsight`` command.

Every command group lives in its own module and registers itself here. The
parser is built so that any usage mistake prints exactly one line and exits
with code 2, the same as a :class:`~podsight.errors.UserError` raised later.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

from podsight import __version__
from podsight.errors import UserError


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, not a usage block."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"podsight: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    from podsight.cli import flows, lab, trace

    parser = OneLineParser(
        prog="podsight",
        description="See what pods say on the wire: connects, flows, packets and policies.",
    )
    parser.add_argument("--version", action="version", version=f"podsight {__version__}")
    groups = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    groups.required = True
    trace.register(groups)
    flows.register(groups)
    lab.register(groups)
    return parser


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    """SIGTERM takes the same clean path as Ctrl-C: every ``with`` block closes."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except UserError as exc:
        sys.stderr.write(f"podsight: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `podsight ... | head`: the reader left; that is not an error.
        sys.stderr.close()
        return 0
    return rc


if __name__ == "__main__":
    sys.exit(main())
