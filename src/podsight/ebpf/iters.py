"""BPF iterators: one read of an attached ``iter/...`` program is one walk of what it
iterates (every TCP socket of a network namespace, every entry of a map).

Attach with :meth:`podsight.ebpf.Program.attach_iter`; each :func:`read_iter`
creates a fresh iterator from the link (``bpf_iter_create``) and reads it to the
end. The program writes fixed-size binary records with ``bpf_seq_write``, so
the bytes read are records to view with a numpy dtype.

A TCP iterator walks the network namespace of the thread that creates it:
:func:`podsight.net.netns.run_in_netns_path` runs a read inside another one.
"""

from __future__ import annotations

import errno as errno_mod
import os

from podsight.ebpf import _libbpf as L
from podsight.ebpf.objects import Link


def read_iter(link: Link, chunk: int = 1 << 16) -> bytes:
    """Everything one walk of the iterator ``link`` writes."""
    fd = int(L.lib().bpf_iter_create(link.fd))
    if fd < 0:
        raise L.error("bpf_iter_create", L.errno(), f"create an iterator of {link.description}")
    parts = []
    try:
        while True:
            try:
                data = os.read(fd, chunk)
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno_mod.EAGAIN:
                    continue
                raise L.error("read", exc.errno or 0, f"read the iterator {link.description}"
                              ) from None
            if not data:
                break
            parts.append(data)
    finally:
        os.close(fd)
    return b"".join(parts)
