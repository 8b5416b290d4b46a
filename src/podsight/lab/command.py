"""Finding a command before ``ip netns exec`` runs it, the way a shell does.

``ip netns exec NS CMD`` reports a CMD it cannot execute with its own
message and exit status 1, which a caller cannot tell from CMD failing with
1. So the lab looks CMD up first, with the same rules as ``execvp`` (a name
with a ``/`` is a path, any other is searched in ``PATH``), and says what a
shell would: 127 for a command that is not there, 126 for one that is there
but cannot be executed. ``ip netns exec`` changes the network namespace and
``/etc`` files under ``/etc/netns``, never where programs live, so the answer
here is the answer inside the pod.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from podsight.lab.errors import CommandNotExecutable, CommandNotFound


def check_command(
    name: str, env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None
) -> None:
    """Raise :class:`CommandNotFound` or :class:`CommandNotExecutable` unless ``name`` runs.

    ``env`` is the environment the command will get (its ``PATH`` is searched)
    and ``cwd`` the directory it starts in; None means this process's.
    """
    if not name:
        raise CommandNotFound("'': command not found")
    if "/" in name:
        path = os.path.join(cwd, name) if cwd is not None else name
        if not os.path.exists(path):
            raise CommandNotFound(f"{name}: command not found")
        why = _why_not_executable(path)
        if why:
            raise CommandNotExecutable(f"{name}: {why}")
        return
    search = (env if env is not None else os.environ).get("PATH", os.defpath)
    denied = None
    for directory in search.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if cwd is not None:
            candidate = os.path.join(cwd, candidate)
        if not os.path.exists(candidate):
            continue
        why = _why_not_executable(candidate)
        if not why:
            return
        denied = denied or f"{candidate}: {why}"
    if denied:  # execvp: a match that cannot run is EACCES, unless a later one can
        raise CommandNotExecutable(f"{name}: {denied}")
    raise CommandNotFound(f"{name}: command not found")


def _why_not_executable(path: str) -> str | None:
    if os.path.isdir(path):
        return "is a directory"
    if not os.access(path, os.X_OK):
        return "permission denied (not executable)"
    return None
