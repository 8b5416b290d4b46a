"""Writing whole batches to stdout (or a file) so that a reader never sees a cut line.

A batch is encoded once and written with ``os.write`` until every byte is
out: a short write (a full pipe), EINTR (Ctrl-C, whose handler only sets a
flag while a trace runs) and EAGAIN (a stdout some parent left non-blocking)
all resume where they stopped instead of dropping the rest, which Python's
buffered writers can do.
"""

from __future__ import annotations

import os
import select
from typing import TextIO


def write_all(stream: TextIO, text: str) -> None:
    """Write ``text`` completely to the file descriptor behind ``stream``."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's StringIO)
        stream.write(text)
        stream.flush()
        return
    stream.flush()  # anything written through the TextIO before goes first
    view = memoryview(text.encode())
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[n:]
