"""The lab's errors, told apart by exit status the way a shell user expects.

:class:`~podsight.errors.UserError` (exit 2) stays for usage mistakes: an
unknown pod, a bad duration, a missing command. What goes wrong while a
well-formed request runs (the lab is not up, a tool failed, no root) exits 1,
and ``lab exec`` reports a command it could not start with the shell's 127
(not found) and 126 (found, not executable), so scripts can tell "the command
failed" from "the command never ran".
"""

from __future__ import annotations

from podsight.errors import EnvironmentProblem, UserError


class LabError(UserError):
    """The lab could not do what a well-formed request asked: exit status 1."""

    exit_code = 1


class LabEnvironmentProblem(LabError, EnvironmentProblem):
    """The machine lacks what the lab needs (root, a tool): exit status 1, not a usage error."""


class CommandNotFound(LabError):
    """``lab exec``'s command does not exist: the shell's exit status 127."""

    exit_code = 127


class CommandNotExecutable(LabError):
    """``lab exec``'s command exists but cannot be executed: the shell's exit status 126."""

    exit_code = 126
