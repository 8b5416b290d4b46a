"""Errors podsight reports, under one root.

Everything podsight raises on purpose derives from :class:`PodsightError`
and carries its exit code. The CLI boundary (``podsight.cli.main``) prints
any of them as one line, ``podsight: error: <message>``, and also maps what
lower layers raise (libbpf, the OS, sqlite, decoding) to one line, the way
httpx's ``map_exceptions`` translates transport errors at its boundary: a
traceback would hide the one sentence the user needs.

- :class:`UserError` (exit 2): bad input.
- :class:`EnvironmentProblem` (exit 1): a machine that lacks something.
- :class:`RunFailure` (exit 1): a run that started well and could not go on
  (a disk that filled, an output that went away).
"""

from __future__ import annotations


class PodsightError(Exception):
    """The root: anything podsight reports as a one-line error."""

    exit_code = 1


class UserError(PodsightError):
    """A problem the user can fix: bad input, missing privilege or kernel feature."""

    exit_code = 2


class EnvironmentProblem(UserError):
    """The machine lacks something podsight needs (root, BTF, libbpf, bpffs, tracefs).

    Exit 1, not 2: the command was right, this machine cannot run it (a script
    tells "I typed it wrong" from "it cannot run here" by the status).
    """

    exit_code = 1


class RunFailure(PodsightError):
    """A run could not go on (an output failed); what was written so far is valid."""

    exit_code = 1
