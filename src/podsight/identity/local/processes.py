"""pid -> what /proc says about the process, read once per process and kept.

Events carry a pid; the first event of a process pays for reading /proc (a few
small files), every later one is a dict hit. Pids are reused, so an entry is
keyed by (pid, start time): the start time in /proc/PID/stat is fixed for a
process's life and differs for the next process that gets the same pid.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice

from podsight.identity.local.cgroups import AUTO, cgroup2_root

CMDLINE_HEAD = 256  # characters of the command line kept: enough to tell processes apart

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

MAX_THREAD_NAMES = 64  # thread names remembered per process (a bound, not a limit of use)


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One process as /proc showed it when first seen.

    ``cgroup_path`` is the cgroup v2 path (relative to the cgroup2 mount), or on a
    v1-only host the first v1 path, which carries the same kubelet names;
    ``cgroup_id`` is the v2 cgroup id, 0 where there is none. ``start_time`` is in
    clock ticks since boot, as /proc/PID/stat field 22 has it.
    """

    pid: int
    comm: str
    cmdline: str
    netns: int
    mntns: int
    cgroup_path: str
    cgroup_id: int
    start_time: int
    ppid: int


def start_ticks_from_ns(boottime_ns: int) -> int:
    """A task's ``start_boottime`` in ns (what a BPF program can read) -> /proc's ticks.

    The kernel rounds the same way for /proc/PID/stat, so events that carry the task
    start time can be checked against a cached entry without touching /proc.
    """
    return boottime_ns // (1_000_000_000 // CLOCK_TICKS)


def read_stat(pid: int, proc: str = "/proc") -> tuple[str, int, int] | None:
    """(comm, ppid, start time) from /proc/PID/stat, or None if the process is gone."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: it ends at the *last* ')'.
    open_paren, close_paren = data.find(b"("), data.rfind(b")")
    if open_paren < 0 or close_paren < 0:
        return None
    comm = data[open_paren + 1 : close_paren].decode("utf-8", "replace")
    fields = data[close_paren + 2 :].split()
    try:
        return comm, int(fields[1]), int(fields[19])  # ppid is field 4, starttime 22
    except (IndexError, ValueError):
        return None


def read_start_time(pid: int, proc: str = "/proc") -> int | None:
    stat = read_stat(pid, proc)
    return stat[2] if stat is not None else None


def read_cmdline(pid: int, proc: str = "/proc", limit: int = CMDLINE_HEAD) -> str:
    """The command line's first ``limit`` characters, arguments joined by spaces."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            data = f.read(limit * 4)
    except OSError:
        return ""
    return data.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")[:limit]


def read_ns(pid: int, kind: str, proc: str = "/proc") -> int:
    """The inode of the process's ``kind`` namespace ("net", "mnt", ...), 0 if unreadable."""
    try:
        return os.stat(f"{proc}/{pid}/ns/{kind}").st_ino
    except OSError:
        return 0


def read_cgroup_path(pid: int, proc: str = "/proc") -> str:
    """The process's cgroup v2 path; on a v1-only host the first v1 path; "" if gone."""
    try:
        with open(f"{proc}/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    first_v1 = ""
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            return path
        if not first_v1 and path:
            first_v1 = path
    return first_v1


def read_process(
    pid: int, proc: str = "/proc", cgroup_root: str | None = None
) -> ProcessInfo | None:
    """Everything podsight wants to know about a process, or None if it is gone.

    The start time is read before and after the other files: if it changed, the pid
    was reused while we read and the mix would describe no real process.
    """
    stat = read_stat(pid, proc)
    if stat is None:
        return None
    comm, ppid, start_time = stat
    cmdline = read_cmdline(pid, proc)
    netns = read_ns(pid, "net", proc)
    mntns = read_ns(pid, "mnt", proc)
    cgroup_path = read_cgroup_path(pid, proc)
    cgroup_id = 0
    if cgroup_root is not None and cgroup_path.startswith("/"):
        full = cgroup_root if cgroup_path == "/" else cgroup_root + cgroup_path
        try:
            cgroup_id = os.stat(full).st_ino
        except OSError:  # exited and its cgroup removed, or outside our cgroup namespace
            cgroup_id = 0
    if read_start_time(pid, proc) != start_time:
        return None
    return ProcessInfo(
        pid=pid,
        comm=comm,
        cmdline=cmdline,
        netns=netns,
        mntns=mntns,
        cgroup_path=cgroup_path,
        cgroup_id=cgroup_id,
        start_time=start_time,
        ppid=ppid,
    )


class ProcessCache:
    """pid -> ProcessInfo, filled on first sight, bounded, and aware of pid reuse.

    ``get`` is a dict hit for a known pid. Pid reuse is caught three ways, none of
    them per event: a caller that knows the task's start time (from the event)
    passes it and a mismatch reloads the entry (the event's ``comm`` does the same
    for exec, which keeps the pid and the start time); :meth:`sweep`, run in the
    background, drops pids that left /proc (one directory read) and re-reads the
    start time of a bounded batch of the oldest-checked entries; and the cache
    evicts the least recently used entry when full.

    Pids that were gone when looked up are remembered for ``dead_ttl`` seconds so
    that a burst of events from a process that already exited costs one failed open.

    One thread looks up (the event loop) while another may sweep: the hot path takes
    no lock; the sweep iterates over snapshots and changes entries one key at a time.
    """

    def __init__(
        self,
        max_size: int = 8192,
        *,
        proc: str = "/proc",
        cgroup_root: str | None = AUTO,
        revalidate_batch: int = 256,
        dead_ttl: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_size = max_size
        self.proc = proc
        self.cgroup_root = cgroup2_root() if cgroup_root == AUTO else cgroup_root
        self.revalidate_batch = revalidate_batch
        self.dead_ttl = dead_ttl
        self._clock = clock
        self._entries: OrderedDict[int, ProcessInfo] = OrderedDict()
        self._checked: OrderedDict[int, None] = OrderedDict()  # oldest-checked first
        self._dead: dict[int, float] = {}
        self._aliases: dict[int, set[str]] = {}  # pid -> thread names seen in its events
        self.loads = 0  # /proc reads, for tests and stats

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, pid: object) -> bool:
        return pid in self._entries

    def get(
        self, pid: int, start_time: int | None = None, comm: str | None = None
    ) -> ProcessInfo | None:
        """The process behind ``pid``.

        ``start_time`` (ticks) guards against pid reuse. ``comm`` (what the event saw)
        catches exec: a process first read between fork and exec was cached with its
        parent's name and command line, and its start time does not change on exec.
        """
        info = self._entries.get(pid)
        if (
            info is not None
            and (start_time is None or start_time == info.start_time)
            and (comm is None or comm == info.comm or comm in self._aliases.get(pid, ()))
        ):
            # A sweep on another thread may just have dropped it. (try, not suppress():
            # this is the per-event path and a context manager costs more than the hit.)
            try:  # noqa: SIM105
                self._entries.move_to_end(pid)
            except KeyError:
                pass
            return info
        info = self._load(pid)
        if info is None:
            return None
        if start_time is not None and info.start_time != start_time:
            return None  # the event's process is gone and its pid already reused
        if comm is not None and comm != info.comm:
            # Still another name after a fresh read: a thread's own name (prctl
            # PR_SET_NAME; events name the thread, /proc/PID/stat the main one).
            # Remember it, or every event from that thread would read /proc again.
            names = self._aliases.setdefault(pid, set())
            if len(names) < MAX_THREAD_NAMES:
                names.add(comm)
        return info

    def invalidate(self, pid: int) -> None:
        """Forget ``pid`` (e.g. on an exit event), so the next get reads /proc again."""
        self._entries.pop(pid, None)
        self._checked.pop(pid, None)
        self._dead.pop(pid, None)
        self._aliases.pop(pid, None)

    def sweep(self) -> int:
        """Drop exited and reused pids; returns how many entries were dropped.

        Meant for a background thread or a periodic refresh, never per event.
        """
        try:
            alive = {int(name) for name in os.listdir(self.proc) if name.isdigit()}
        except OSError:
            return 0
        dropped = 0
        # Lookups may run on another thread meanwhile: iterate only over snapshots
        # (list() of a dict copies it in one step under the GIL), mutate by single key.
        for pid in [pid for pid in list(self._entries) if pid not in alive]:
            self.invalidate(pid)
            dropped += 1
        for pid in list(islice(self._checked, self.revalidate_batch)):
            info = self._entries.get(pid)
            if info is None:
                self._checked.pop(pid, None)
                continue
            if read_start_time(pid, self.proc) != info.start_time:
                self.invalidate(pid)
                dropped += 1
            else:
                self._checked.move_to_end(pid)
        now = self._clock()
        self._dead = {pid: t for pid, t in list(self._dead.items()) if t > now}
        return dropped

    def _load(self, pid: int) -> ProcessInfo | None:
        dead_until = self._dead.get(pid)
        if dead_until is not None:
            if dead_until > self._clock():
                return None
            del self._dead[pid]
        self.loads += 1
        info = read_process(pid, self.proc, self.cgroup_root)
        if info is None:
            self.invalidate(pid)
            if len(self._dead) >= self.max_size:
                self._dead.clear()
            self._dead[pid] = self._clock() + self.dead_ttl
            return None
        self._entries[pid] = info
        self._entries.move_to_end(pid)
        self._aliases.pop(pid, None)  # a new process image: its threads are named anew
        self._checked[pid] = None
        self._checked.move_to_end(pid)
        while len(self._entries) > self.max_size:
            old, _ = self._entries.popitem(last=False)
            self._checked.pop(old, None)
            self._aliases.pop(old, None)
        return info
