"""pid -> ProcessInfo on real processes, with ps, ip netns and a real pid reuse as oracles."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from identity_local_sys import kill_and_reap

from podsight.identity.local.cgroups import cgroup2_root
from podsight.identity.local.processes import (
    ProcessCache,
    read_process,
    read_start_time,
    start_ticks_from_ns,
)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]


def spawn(argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
    """Start ``argv`` and return once it has exec'd.

    Between fork and exec a child is still its parent's image (comm, cmdline);
    tests that compare against the program must not read it in that window.
    """
    proc = subprocess.Popen(argv, **kwargs)  # type: ignore[call-overload]
    want = os.path.basename(argv[0])[:15]
    # comm alone cannot tell a python child from its python parent: the cmdline can.
    args = b"".join(os.fsencode(a) + b"\0" for a in argv)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{proc.pid}/comm") as f, open(f"/proc/{proc.pid}/cmdline",
                                                           "rb") as c:
                if f.read().strip() == want and c.read() == args:
                    return proc
        except OSError:
            pass
        time.sleep(0.005)
    kill_and_reap(proc)
    raise AssertionError(f"{argv[0]} did not start")


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = spawn([*SLEEPER, "--marker", "podsight"])
    try:
        yield proc
    finally:
        kill_and_reap(proc)


def ps(pid: int, *fields: str) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-o", ",".join(f"{f}=" for f in fields), "-p", str(pid)],
                         capture_output=True, text=True, check=True).stdout
    return out.split(None, len(fields) - 1)


def test_read_process_agrees_with_ps(sleeper: subprocess.Popen[bytes]) -> None:
    if shutil.which("ps") is None:
        pytest.skip("ps (procps) not installed")
    info = read_process(sleeper.pid, cgroup_root=cgroup2_root())
    assert info is not None
    comm, ppid, args = ps(sleeper.pid, "comm", "ppid", "args")
    assert info.pid == sleeper.pid
    assert info.comm == comm
    assert info.ppid == int(ppid) == os.getpid()
    assert info.cmdline == args.strip()
    assert info.cmdline.endswith("--marker podsight")
    # Same namespaces and cgroup as this test process, which is its parent.
    assert info.netns == os.stat("/proc/self/ns/net").st_ino
    assert info.mntns == os.stat("/proc/self/ns/mnt").st_ino
    mine = read_process(os.getpid(), cgroup_root=cgroup2_root())
    assert mine is not None
    assert (info.cgroup_path, info.cgroup_id) == (mine.cgroup_path, mine.cgroup_id)
    root = cgroup2_root()
    if root is not None:
        assert info.cgroup_id == os.stat(root + info.cgroup_path.rstrip("/")).st_ino


def test_start_time_matches_boottime_clock() -> None:
    """A process started now has a start time of about now on CLOCK_BOOTTIME.

    That is the clock of ``task->start_boottime``, which BPF programs can read, so an
    event's start time can be compared with a cached entry.
    """
    before = start_ticks_from_ns(time.clock_gettime_ns(time.CLOCK_BOOTTIME))
    proc = subprocess.Popen(SLEEPER)
    try:
        after = start_ticks_from_ns(time.clock_gettime_ns(time.CLOCK_BOOTTIME))
        start = read_start_time(proc.pid)
        assert start is not None
        assert before <= start <= after
    finally:
        kill_and_reap(proc)


def test_comm_with_parentheses_and_spaces(tmp_path) -> None:
    """comm is whatever the executable is called; /proc/PID/stat does not escape it."""
    weird = tmp_path / "a) (b c"
    shutil.copy("/bin/sleep", weird)
    proc = spawn([str(weird), "600"])
    try:
        info = read_process(proc.pid)
        assert info is not None
        assert info.comm == "a) (b c"
        assert info.ppid == os.getpid()
        assert info.cmdline == f"{weird} 600"
    finally:
        kill_and_reap(proc)


@pytest.mark.root
def test_process_in_another_netns() -> None:
    """The netns inode is the one `ip netns` bind-mounted (the lab's pods look like this)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    name = "podsight-test-" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", name], check=True)
    proc = None
    try:
        proc = subprocess.Popen(["ip", "netns", "exec", name, *SLEEPER])
        inode = os.stat(f"/var/run/netns/{name}").st_ino
        deadline = time.monotonic() + 5
        info = read_process(proc.pid)
        while info is not None and info.netns != inode and time.monotonic() < deadline:
            time.sleep(0.02)  # `ip netns exec` enters the netns, then execs python
            info = read_process(proc.pid)
        assert info is not None
        assert info.netns == inode
        assert info.netns != os.stat("/proc/self/ns/net").st_ino
        # `ip netns exec` also unshares the mount namespace (to remount /sys).
        assert info.mntns != os.stat("/proc/self/ns/mnt").st_ino
    finally:
        if proc is not None:
            kill_and_reap(proc)
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_cache_hits_do_not_read_proc(sleeper: subprocess.Popen[bytes]) -> None:
    cache = ProcessCache()
    first = cache.get(sleeper.pid)
    assert first is not None
    assert cache.loads == 1
    for _ in range(1000):
        assert cache.get(sleeper.pid) is first
        assert cache.get(sleeper.pid, first.start_time) is first
    assert cache.loads == 1


def test_cache_is_bounded_lru() -> None:
    procs = [spawn(SLEEPER) for _ in range(4)]
    try:
        cache = ProcessCache(max_size=3)
        a, b, c, d = (p.pid for p in procs)
        for pid in (a, b, c):
            assert cache.get(pid) is not None
        cache.get(a)  # a is now the most recently used: b is the oldest
        cache.get(d)
        assert len(cache) == 3
        assert b not in cache
        assert all(pid in cache for pid in (a, c, d))
    finally:
        for proc in procs:
            kill_and_reap(proc)


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_exited_process_is_dropped_and_negative_cached() -> None:
    clock = ManualClock()
    cache = ProcessCache(dead_ttl=1.0, clock=clock)
    proc = spawn(SLEEPER)
    assert cache.get(proc.pid) is not None
    kill_and_reap(proc)
    assert cache.get(proc.pid) is not None  # still cached: nothing per event notices
    assert cache.sweep() == 1  # the background sweep does
    loads = cache.loads
    for _ in range(100):
        assert cache.get(proc.pid) is None
    assert cache.loads == loads + 1  # one failed read, then the negative cache
    clock.now += 2.0
    assert cache.get(proc.pid) is None
    assert cache.loads == loads + 2


def _spawn_at(pid: int, attempts: int = 50) -> subprocess.Popen[bytes] | None:
    """Start a sleeper with exactly ``pid``, through /proc/sys/kernel/ns_last_pid.

    The kernel hands out ns_last_pid + 1 to the next fork; another process on the
    machine may fork in between, so try a few times.
    """
    for _ in range(attempts):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(pid - 1))
        proc = spawn(SLEEPER)
        if proc.pid == pid:
            return proc
        kill_and_reap(proc)
    return None


@pytest.mark.root
def test_pid_reuse_is_detected() -> None:
    """A real pid reuse: a second process gets the first one's pid after it exited."""
    if os.geteuid() != 0:
        pytest.skip("choosing the next pid (ns_last_pid) needs root")
    first = spawn([*SLEEPER, "first"])
    cache, swept = ProcessCache(), ProcessCache()
    old = cache.get(first.pid)
    assert old is not None
    assert swept.get(first.pid) == old
    pid = first.pid
    kill_and_reap(first)
    time.sleep(0.02)  # start times are in 10 ms ticks: make the next one differ
    second = _spawn_at(pid)
    if second is None:
        pytest.skip(f"could not get pid {pid} again (the machine forks too much)")
    try:
        new_start = read_start_time(pid)
        assert new_start is not None and new_start != old.start_time
        # Without a hint nothing per event notices: the entry is stale until a sweep.
        assert cache.get(pid) is old
        # An event that carries the task's start time gets the right process.
        fresh = cache.get(pid, new_start)
        assert fresh is not None
        assert fresh.start_time == new_start and fresh.cmdline.endswith("600)")
        # An event from the *first* process, arriving late, must not be given the second.
        assert cache.get(pid, old.start_time) is None
        # The background sweep's revalidation catches reuse too (the pid is alive).
        assert swept.get(pid) == old
        assert swept.sweep() == 1
        assert swept.get(pid) == fresh
    finally:
        kill_and_reap(second)


EXEC_LATER = (
    "import os, sys\n"
    "sys.stdin.buffer.read(1)\n"
    "os.execv('/bin/sleep', ['sleep', '600'])\n"
)


def test_exec_is_detected_by_the_events_comm() -> None:
    """exec keeps the pid and the start time; the comm an event carries tells."""
    proc = spawn([sys.executable, "-c", EXEC_LATER], stdin=subprocess.PIPE)
    try:
        cache = ProcessCache()
        before = cache.get(proc.pid)
        assert before is not None and before.comm == os.path.basename(sys.executable)[:15]
        assert proc.stdin is not None
        proc.stdin.write(b"x")
        proc.stdin.flush()
        deadline = time.monotonic() + 5
        while read_process(proc.pid).comm != "sleep" and time.monotonic() < deadline:
            time.sleep(0.005)
        assert cache.get(proc.pid) is before  # nothing per event notices ...
        after = cache.get(proc.pid, comm="sleep")  # ... until an event names the new program
        assert after is not None
        assert (after.comm, after.cmdline, after.start_time) == (
            "sleep", "sleep 600", before.start_time
        )
        assert cache.get(proc.pid, comm="sleep") is after
    finally:
        kill_and_reap(proc)


NAMED_THREAD = (
    "import ctypes, threading, time\n"
    "def run():\n"
    "    ctypes.CDLL(None).prctl(15, b'podsight-worker')  # PR_SET_NAME\n"
    "    time.sleep(600)\n"
    "threading.Thread(target=run, daemon=True).start()\n"
    "time.sleep(600)\n"
)


def test_thread_names_do_not_reload_every_event() -> None:
    """Events name the thread (a worker's own name); /proc/PID/stat names the main thread."""
    proc = spawn([sys.executable, "-c", NAMED_THREAD])
    try:
        deadline = time.monotonic() + 5
        names: set[str] = set()
        while "podsight-worker" not in names and time.monotonic() < deadline:
            names = {Path(f"/proc/{proc.pid}/task/{tid}/comm").read_text().strip()
                     for tid in os.listdir(f"/proc/{proc.pid}/task")}
            time.sleep(0.01)
        assert "podsight-worker" in names
        cache = ProcessCache()
        main = cache.get(proc.pid)
        assert main is not None and main.comm != "podsight-worker"
        loads = cache.loads
        for _ in range(100):
            assert cache.get(proc.pid, comm="podsight-worker") is not None
        assert cache.loads == loads + 1  # one fresh read to learn the name, then hits
        assert cache.get(proc.pid, comm="podsight-worker") == main
    finally:
        kill_and_reap(proc)
