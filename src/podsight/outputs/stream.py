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
import ctypes
import errno
import os
import select
import stat
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import numpy as np


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


IOV_MAX = 1024


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.writev.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
_libc.writev.restype = ctypes.c_ssize_t


def writev_all(fd: int, iov: np.ndarray) -> int:
    """Write every buffer of ``iov`` (an (n, 2) uint64 array of address, length) to ``fd``,
    in order, with ``writev`` calls of up to IOV_MAX buffers; or, on a regular file, none.

    The caller keeps the memory the addresses point into alive. Short writes
    (a full pipe), EINTR and EAGAIN resume where they stopped; a failure half
    way cuts a regular file back to where the call began. Returns the bytes written.
    """
    import numpy as np

    n = len(iov)
    if n == 0:
        return 0
    iov = np.ascontiguousarray(iov, dtype=np.uint64)
    start = _regular_file_offset(fd)
    written = 0
    i = 0
    try:
        while i < n:
            k = min(IOV_MAX, n - i)
            want = int(iov[i:i + k, 1].sum())
            got = _libc.writev(fd, iov.ctypes.data + i * 16, k)
            if got < 0:
                err = ctypes.get_errno()
                if err == errno.EINTR:
                    continue
                if err == errno.EAGAIN:
                    select.select([], [fd], [])
                    continue
                raise OSError(err, os.strerror(err))
            written += got
            if got == want:
                i += k
                continue
            # A short write: finish the buffer it stopped in, then go on from the next.
            ends = np.cumsum(iov[i:i + k, 1].astype(np.int64))
            j = int(np.searchsorted(ends, got, side="right"))
            done_in = got - (int(ends[j - 1]) if j else 0)
            addr, length = int(iov[i + j, 0]), int(iov[i + j, 1])
            if done_in:
                rest = (ctypes.c_char * (length - done_in)).from_address(addr + done_in)
                write_fd(fd, bytes(rest))
                written += length - done_in
                j += 1
            i += j
    except OSError:
        if start is not None and written:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
        raise
    return written
