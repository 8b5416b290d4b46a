"""A capture file written around the page cache (``O_DIRECT``), for whole packets at line rate.

Why: a capture of whole packets writes hundreds of MB/s, and every byte
written through the page cache lands in a page the kernel must first find
and zero: on a VM whose host takes freed guest memory back (virtio-balloon
free page reporting), that costs a host fault per page, and ``write`` into
the page cache ran at ~360 MB/s there at a full CPU, where ``O_DIRECT`` to the
same disk took 1.8 GB/s (bench/packets.py, README). On any node it also keeps
gigabytes of capture from pushing the workload's own files out of the cache.

How: the blocks are gathered by the kernel (``pwritev``) into a staging
buffer (a memfd mapped here, its pages touched once: the same pages every
time, so they stay resident) of four parts; a thread writes one part's whole
4 KiB pages to the file with one ``O_DIRECT`` write while the next blocks are
gathered into the next (four parts: three writes may wait for a slow disk
before the reader does). The last part page is written
through a second, ordinary descriptor of the same file when no page write
is in flight (a capture that is not busy: the file then ends where the
batch ends), and again, page aligned, with the next pages; while a page
write is in flight it waits for the next batch or :meth:`DirectFile.flush`,
because an ``O_DIRECT`` write that extends the file holds the inode's lock
and the capture would wait for the disk with it (bench: the reader spent
~10% of its time there). So under load the file ends on a page boundary, up
to three parts behind; once flushed (Ctrl-C, SIGTERM, a limit, rotation) it
is whole. A failed write cuts the file back to the end of an append that is
wholly in it.

Filesystems that refuse ``O_DIRECT`` (ramfs, tmpfs before Linux 6.6, some FUSE) make
:func:`open_direct` return None, and the caller writes as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
from concurrent.futures import Future
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

from podsight.outputs.stream import IOV_MAX

ALIGN = 4096
#: Each part of the staging buffer: a batch larger than this goes out in several writes.
STAGE = 8 << 20
#: A part and room for the part page the previous one leaves.
PART = STAGE + ALIGN
#: Parts of the staging buffer: up to PARTS - 1 writes wait for the disk while the reader
#: gathers into the last. Two parts (one write in flight, 8 MiB of slack: ~12 ms at
#: whole packets' ~700 MB/s) lost 0.01-1.0% of the packets per round when this VM's disk
#: stalled; four lost none in the same runs, 10 s rounds included (bench/packets.py,
#: README). The buffer is per capture, not per CPU: 32 MiB wherever it runs.
PARTS = 4

_libc = ctypes.CDLL(None, use_errno=True)
_libc.pwritev.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_long]
_libc.pwritev.restype = ctypes.c_ssize_t


class DirectFile:
    """Appends to ``fd`` (opened with ``O_DIRECT``) through a staging buffer; ``plain``
    is the same file opened without it, for the tail that is not a whole page.

    The buffer has :data:`PARTS` parts: while earlier parts' pages are being written (by
    a thread, in order: the write waits for the disk, and the capture must go on
    reading meanwhile), the next blocks are gathered into the next part."""

    def __init__(self, fd: int, plain: int, stage: Stage | None = None) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.fd = fd
        self.plain = plain
        self.size = 0  # bytes appended (in the file once every write is done)
        self._own = stage is None
        self._stage = stage or Stage()
        self._memfd = self._stage.memfd
        self._mm = self._stage.mm
        self._view = memoryview(self._mm)
        self._part = 0  # the part being filled; its byte 0 is at file offset self._base
        self._staged = 0
        self._base = 0
        self._writing: list[Future[None] | None] = [None] * PARTS
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="podsight-direct")
        #: appends' ends, from the last one wholly in the file on: where a failure cuts to
        self._ends: list[int] = [0]
        self._written = 0  # the file is whole up to here (the thread's last write's end)
        self._dirty = False  # the part page has bytes the file has not

    @property
    def writes_in_flight(self) -> int:
        """Page writes handed to the thread and not done yet (at most :data:`PARTS` - 1
        before an append waits for the disk)."""
        return sum(job is not None and not job.done() for job in self._writing)

    @property
    def _at(self) -> int:
        return self._part * PART + self._staged

    def append(self, data: bytes) -> int:
        """Write ``data`` at the end of the file."""
        if not data:
            return 0
        start = self.size
        try:
            done = 0
            while done < len(data):
                k = min(len(data) - done, STAGE - self._staged)
                self._view[self._at:self._at + k] = data[done:done + k]
                self._staged += k
                done += k
                if self._staged >= STAGE:
                    self._out()
            self._commit(start + len(data))
        except BaseException:
            self._cut(start)
            raise
        return len(data)

    def append_iov(self, iov: np.ndarray) -> int:
        """Write the buffers of ``iov`` ((n, 2) uint64: address, length) at the end of the
        file, in order; the kernel gathers them into the staging buffer."""
        import numpy as np

        n = len(iov)
        if not n:
            return 0
        iov = np.ascontiguousarray(iov, dtype=np.uint64)
        lengths = iov[:, 1].astype(np.int64)
        total = int(lengths.sum())
        start = self.size
        try:
            i = 0
            while i < n:
                # As many buffers as fit the part (at least one: none is larger than it).
                ends = np.cumsum(lengths[i:i + IOV_MAX])
                k = int(np.searchsorted(ends, STAGE - self._staged, side="right"))
                if k == 0:
                    self._out()
                    continue
                want = int(ends[k - 1])
                while True:
                    got = _libc.pwritev(self._memfd, iov.ctypes.data + i * 16, k, self._at)
                    if got >= 0 or ctypes.get_errno() != errno.EINTR:
                        break
                if got < 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
                if got != want:  # a memfd write within its size is never short
                    raise OSError(errno.EIO, "short write into the staging buffer")
                self._staged += want
                i += k
                if self._staged >= STAGE:
                    self._out()
            self._commit(start + total)
        except BaseException:
            self._cut(start)
            raise
        return total

    def _write(self, at: int, length: int, offset: int) -> None:
        """(The thread) pages of the buffer to the file; the writes are done in order."""
        done = 0
        while done < length:
            done += os.pwrite(self.fd, self._view[at + done:at + length], offset + done)
        self._written = offset + length

    def _wait(self, part: int) -> None:
        """Until the write from ``part`` is done; its error, if it failed."""
        job, self._writing[part] = self._writing[part], None
        if job is not None:
            job.result()

    def _out(self) -> None:
        """The part's whole pages to the file (by the thread); the rest to the next part."""
        whole = self._staged // ALIGN * ALIGN
        if not whole:
            return
        part = self._part
        nxt = (part + 1) % PARTS
        self._wait(nxt)  # its buffer is reused now: its write must be over
        self._writing[part] = self._pool.submit(self._write, part * PART, whole, self._base)
        rest = self._staged - whole
        if rest:
            self._mm.move(nxt * PART, part * PART + whole, rest)
        self._part = nxt
        self._base += whole
        self._staged = rest

    def _commit(self, size: int) -> None:
        """The append's whole pages on their way to the file; its last part page written
        through the page cache too when no page write is in flight (a capture that is not
        busy: the file then ends on the append's end, for a reader of the growing file).
        Not while one is: an ``O_DIRECT`` write that extends the file holds the inode's
        lock, and the capture would wait for the disk with it."""
        self._out()
        self.size = size
        self._ends.append(size)
        self._dirty = True
        self.settle()

    def settle(self) -> None:
        """The part page into the file if it is not and no page write is in flight (the
        caller's idle turns end a quiet capture's file on its last block)."""
        if self._dirty and all(job is None or job.done() for job in self._writing):
            self._tail()
        while len(self._ends) > 1 and self._ends[1] <= self._written:
            self._ends.pop(0)

    def _tail(self) -> None:
        """Wait for the page writes; then the part page through the page cache (an
        ``O_DIRECT`` write of the same page later flushes and drops the cached one)."""
        for part in range(PARTS):
            self._wait(part)
        at = self._part * PART
        done = 0
        while done < self._staged:
            done += os.pwrite(self.plain, self._view[at + done:at + self._staged],
                              self._base + done)
        self._written = self._base + self._staged
        self._dirty = False

    def flush(self) -> None:
        """Every byte appended into the file."""
        self._tail()
        self._ends = [self.size]

    def _cut(self, size: int) -> None:
        """After a failure: the file back to the end of the last append that is wholly in
        it (``size`` at most), the buffer to that end's page."""
        for part in range(PARTS):
            with contextlib.suppress(OSError):
                self._wait(part)
        tail = b""
        good = 0
        for end in sorted({0, *self._ends}, reverse=True):
            if end > min(size, self._written):
                continue
            try:  # the end's part page, for the next pages (the file is write-only here)
                tail = _read(self.plain, end // ALIGN * ALIGN, end % ALIGN)
            except OSError:
                continue
            good = end
            break
        with contextlib.suppress(OSError):
            os.ftruncate(self.plain, good)
        self._part = 0
        self._base = good // ALIGN * ALIGN
        self._written = self._base
        self._staged = len(tail)
        self._view[:len(tail)] = tail
        self.size = good
        self._ends = [good]

    def close(self) -> None:
        """Wait for the writes, then close both descriptors."""
        try:
            self.flush()
        finally:
            self._pool.shutdown(wait=True)
            view, self._view = self._view, memoryview(b"")
            view.release()
            if self._own:
                self._stage.close()
            os.close(self.fd)
            os.close(self.plain)


class Stage:
    """The staging buffer: a memfd of :data:`PARTS` parts, mapped here, its pages touched now.

    Touched now, not as the first batches arrive: a fresh page costs a fault (a host
    fault too, on a VM that gave freed memory back), ~45 ms per 16 MiB on the bench
    VM, which a capture at line rate spends dropping packets. One stage serves every
    file of a ring in turn (each file's writes are done before the next opens)."""

    def __init__(self) -> None:
        self.memfd = os.memfd_create("podsight-pcapng", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.memfd, PARTS * PART)
            self.mm = mmap.mmap(self.memfd, PARTS * PART)
        except BaseException:
            os.close(self.memfd)
            raise
        try:
            self.mm.madvise(getattr(mmap, "MADV_POPULATE_WRITE", 23))  # Linux 5.14+
        except (AttributeError, OSError):
            for at in range(0, PARTS * PART, mmap.PAGESIZE):
                self.mm[at] = 0

    def close(self) -> None:
        self.mm.close()
        os.close(self.memfd)


def _read(fd: int, offset: int, length: int) -> bytes:
    """``length`` bytes at ``offset`` of the file ``fd`` (open for writing only) names."""
    if not length:
        return b""
    rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.pread(rfd, length, offset)
    finally:
        os.close(rfd)
    if len(data) != length:
        raise OSError(errno.EIO, "short read")
    return data


def open_direct(fd: int, path: str, stage: Stage | None = None) -> DirectFile | None:
    """A :class:`DirectFile` for ``fd`` (a new, empty regular file opened for writing at
    ``path``), or None where the filesystem does not take ``O_DIRECT`` (``fd`` is then
    left as it was)."""
    try:
        direct = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        probe = mmap.mmap(-1, ALIGN)
        try:
            os.pwrite(direct, memoryview(probe), 0)  # EINVAL here on some filesystems
        finally:
            probe.close()
        os.ftruncate(fd, 0)
        return DirectFile(direct, fd, stage)
    except OSError:
        os.close(direct)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        return None
