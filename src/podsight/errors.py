"""Errors a user can act on.

Anything raised as :class:`UserError` is printed by the CLI as one line,
``podsight: error: <message>``, with exit code 2 and no traceback: bad input
and a machine that lacks something are not bugs in podsight, and a traceback
would hide the one sentence the user needs.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: bad input, missing privilege or kernel feature."""

    exit_code = 2


class EnvironmentProblem(UserError):
    """The machine lacks something podsight needs (root, BTF, libbpf, bpffs, tracefs)."""
