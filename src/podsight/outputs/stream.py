"""Writing whole batches to stdout (or a file) so that a reader never sees a cut line.

A batch is encoded once and written with ``os.write`` until every byte is
out: a short write (a full pipe), EINTR (Ctrl-C, whose handler only sets a
flag while a trace runs) and EAGAIN (a stdout some parent left non-blocking)
all resume where they stopped instead of dropping the rest, which Python's
buffered writers can do.

A write that fails half way (the disk filled) would leave half a line in a
file: when the output is a regular file, it is cut back to where the batch
began, so the file still holds whole lines only, and the error goes up.
"""

from __future__ import annotations

import contextlib
import os
import select
import stat
from typing import TextIO


def write_all(stream: TextIO, text: str) -> None:
    """Write ``text`` completely to the file descriptor behind ``stream``, or not at all."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's StringIO)
        stream.write(text)
        stream.flush()
        return
    stream.flush()  # anything written through the TextIO before goes first
    write_fd(fd, text.encode())


def write_fd(fd: int, data: bytes) -> None:
    """Write ``data`` completely to ``fd``, or (on a regular file) not at all."""
    view = memoryview(data)
    total = len(view)
    start = _regular_file_offset(fd)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        except OSError:
            if start is not None and len(view) < total:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                    os.lseek(fd, start, os.SEEK_SET)
            raise
        view = view[n:]


def _regular_file_offset(fd: int) -> int | None:
    """Where the next write lands, for a regular file (None for a pipe or a terminal)."""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return None
