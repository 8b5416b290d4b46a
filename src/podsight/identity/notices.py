"""One-line messages from identity's background threads, printed by the command loop.

Why: the informer and poller threads run while a capture is printing records.
A line they wrote themselves would land in the middle of that output, and a
traceback would bury the one sentence a user needs. So they queue one line
per change of state here, and the command loop prints what :meth:`Notices.take`
returns once per batch, between records (``Resolver.take_notices`` gathers
every source's). A failure repeats at every poll or retry, so each cause is
told once, until its topic recovers. ``PODSIGHT_DEBUG=1`` adds the traceback
(through :mod:`logging`), for developers only.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("podsight.identity")

DEBUG_ENV = "PODSIGHT_DEBUG"


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") == "1"


def one_line(exc: BaseException) -> str:
    """An exception as the words a user reads: its message on one line, else its type."""
    return " ".join(str(exc).split()) or type(exc).__name__


class Notices:
    """A thread-safe queue of lines for the user, each cause told once per outage."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._failing: dict[str, set[str]] = {}  # topic -> causes told since it last worked

    def add(self, line: str) -> None:
        with self._lock:
            self._lines.append(line)

    def warn(self, topic: str, line: str, cause: str = "") -> bool:
        """Queue ``line`` unless ``topic`` already told this ``cause`` since it last worked."""
        with self._lock:
            told = self._failing.setdefault(topic, set())
            if cause in told:
                return False
            told.add(cause)
            self._lines.append(line)
            return True

    def recovered(self, topic: str, line: str = "") -> bool:
        """``topic`` works again: queue ``line`` if it had failed, and forget its causes."""
        with self._lock:
            if self._failing.pop(topic, None) is None:
                return False
            if line:
                self._lines.append(line)
            return True

    def failing(self, topic: str) -> bool:
        with self._lock:
            return topic in self._failing

    def take(self) -> list[str]:
        """The lines queued since the last call, oldest first."""
        with self._lock:
            lines, self._lines = self._lines, []
            return lines


def tell_failure(notices: Notices, topic: str, what: str, exc: BaseException) -> None:
    """``podsight: warning: <what>: <message>``, once per distinct message until ``topic``
    recovers; the traceback only with ``PODSIGHT_DEBUG=1``."""
    message = one_line(exc)
    notices.warn(topic, f"podsight: warning: {what}: {message}", cause=message)
    if debugging():
        log.error("%s", what, exc_info=exc)
