"""Network namespaces: by name (as ``ip netns`` and CNI bind-mount them) and by inode.

One lister for the whole tool: identity, the interface finder and the
``--netns`` flag all ask here, so "which namespace is this" has one answer.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from podsight.errors import UserError

#: Where ``ip netns`` (and CNI plugins, and the lab) bind-mount named namespaces.
NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def named_netns() -> dict[str, int]:
    """name -> inode of every namespace bind-mounted under /var/run/netns."""
    out: dict[str, int] = {}
    try:
        entries = list(os.scandir(NETNS_DIR))
    except OSError:
        return out
    for entry in entries:
        try:
            out[entry.name] = os.stat(entry.path).st_ino
        except OSError:
            continue
    return out


def netns_names() -> dict[int, str]:
    """inode -> name: the inverse of :func:`named_netns` (the first name wins)."""
    out: dict[int, str] = {}
    for name, inode in sorted(named_netns().items()):
        out.setdefault(inode, name)
    return out


def host_netns() -> int:
    """The host's network namespace: init's, or ours when init's cannot be read (a sandbox
    or a container without hostPID; podsight then assumes it runs in the host's)."""
    try:
        return os.stat("/proc/1/ns/net").st_ino
    except OSError:
        return os.stat("/proc/self/ns/net").st_ino


def own_netns() -> int:
    return os.stat("/proc/self/ns/net").st_ino


def parse_netns(value: str) -> int:
    """A ``--netns`` value: an inode number, or a name under /var/run/netns."""
    value = value.strip()
    if value.isdigit():
        inode = int(value)
        if inode <= 0 or inode > 0xFFFFFFFF:
            raise UserError(f"--netns {value}: not a network namespace inode")
        return inode
    path = NETNS_DIR / value
    if not value or "/" in value or not path.exists():
        raise UserError(f"--netns {value}: no such network namespace (see 'ip netns list')")
    return os.stat(path).st_ino


def netns_path(inode: int) -> str | None:
    """A path that opens the network namespace ``inode``: its bind mount, else a process's."""
    for name, ino in named_netns().items():
        if ino == inode:
            return str(NETNS_DIR / name)
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.stat(proc / "ns" / "net").st_ino == inode:
                return str(proc / "ns" / "net")
        except OSError:
            continue
    return None


def every_netns() -> dict[int, str]:
    """inode -> a path that opens it, for every network namespace on the host that a bind
    mount or a live process holds (the host's included)."""
    out: dict[int, str] = {}
    for name, inode in sorted(named_netns().items()):
        out.setdefault(inode, str(NETNS_DIR / name))
    for proc in Path("/proc").glob("[0-9]*"):
        path = proc / "ns" / "net"
        try:
            out.setdefault(os.stat(path).st_ino, str(path))
        except OSError:
            continue
    return out


def run_in_netns(inode: int, fn: Callable[[], T], default: T) -> T:
    """``fn()`` run inside network namespace ``inode``; ``default`` if it cannot be entered.

    Why a thread: ``setns`` moves only the calling thread, so a short-lived
    thread enters the namespace, runs ``fn`` and exits, leaving the rest of
    podsight where it was.
    """
    if inode == own_netns():
        return fn()
    path = netns_path(inode)
    if path is None:
        return default
    try:
        return run_in_netns_path(path, fn, default)
    except Exception:
        return default


def run_in_netns_path(path: str, fn: Callable[[], T], default: T) -> T:
    """``fn()`` run inside the network namespace that ``path`` opens (in a short-lived
    thread, see :func:`run_in_netns`); ``default`` if it cannot be entered. An exception
    of ``fn`` is raised here."""
    result = [default]
    error: list[BaseException] = []

    def enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        try:
            if libc.setns(fd, CLONE_NEWNET) == 0:
                result[0] = fn()
        except BaseException as exc:
            error.append(exc)
        finally:
            os.close(fd)

    worker = threading.Thread(target=enter, name="podsight-netns", daemon=True)
    worker.start()
    worker.join()
    if error:
        raise error[0]
    return result[0]


def call_in_netns(inode: int, fn: Callable[[], T]) -> T:
    """``fn()`` run inside network namespace ``inode``, its exceptions raised here.

    Unlike :func:`run_in_netns`, failing to enter is an error (``ProcessLookupError``:
    no path opens that namespace any more, e.g. its pod was deleted) and ``fn``'s own
    exceptions reach the caller. Kernel objects made inside (a tc link on the pod's
    ``eth0``, a socket) keep that namespace whatever thread later uses them.
    """
    if inode == own_netns():
        return fn()
    path = netns_path(inode)
    if path is None:
        raise ProcessLookupError(f"network namespace {inode} is gone")
    box: list[T] = []
    error: list[BaseException] = []

    def enter() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into network namespace {inode}: "
                                       f"{os.strerror(err)}")
            finally:
                os.close(fd)
            box.append(fn())
        except BaseException as exc:
            error.append(exc)
        # The thread ends here: it never goes back, so it is never reused in the wrong netns.

    worker = threading.Thread(target=enter, name="podsight-netns", daemon=True)
    worker.start()
    worker.join()
    if error:
        raise error[0]
    return box[0]


def pids_in_netns(inode: int) -> list[int]:
    """Processes whose network namespace is ``inode`` (a pod's containers), lowest first."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if os.stat(proc / "ns" / "net").st_ino == inode:
                pids.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return sorted(pids)


class _FilterTable(Protocol):
    def update(self, key: bytes, value: bytes) -> None: ...
    def delete(self, key: bytes) -> bool: ...


def sync_netns_filter(table: _FilterTable, have: set[int], wanted: set[int],
                      capacity: int) -> set[int]:
    """Make a kernel ``netns_filter`` hash (netns inode -> 1) hold ``wanted``; return
    what it holds now.

    One home for what every gadget that traces by network namespace does as pods
    come and go: only the difference is written, and more namespaces than the
    table holds become key 0 alone ("every namespace"), with user space doing the
    filtering (the pipeline checks every record's netns).
    """
    if len(wanted) > capacity:
        wanted = {0}
    for inode in have - wanted:
        table.delete(inode.to_bytes(4, "little"))
    for inode in wanted - have:
        table.update(inode.to_bytes(4, "little"), b"\x01")
    return set(wanted)
