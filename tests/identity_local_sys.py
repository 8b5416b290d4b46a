"""Test helpers for the local identity tests: real cgroups and processes, always cleaned up.

Everything a test makes lives under one ``podsight-test-<random>`` cgroup (in every
cgroup hierarchy a runtime may have used, v1 controllers included) and is removed
on close, failures included: processes are killed first, because a cgroup with
members cannot be removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from podsight.identity.local.cgroups import cgroup2_root

PREFIX = "podsight-test-"

# A child that stays until killed and makes one getpgid() a tick, so a tracer
# keyed on that syscall and its pid sees it soon.
TICKER = "import os, time\nwhile True:\n    os.getpgid(0); time.sleep(0.02)\n"


def cgroup_mounts() -> list[str]:
    """Mount points of every cgroup hierarchy, v1 controllers and v2."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split(" ")[0] in ("cgroup", "cgroup2"):
                out.append(left.split(" ")[4])
    return out


def leftover_cgroups() -> list[str]:
    """Test cgroups still present in any hierarchy (there must be none after a test)."""
    found = []
    for mount in cgroup_mounts():
        try:
            names = os.listdir(mount)
        except OSError:
            continue
        found += [f"{mount}/{name}" for name in names if name.startswith(PREFIX)]
    return found


def kill_and_reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def remove_cgroup_tree(mount: str, top: str) -> None:
    """rmdir ``mount/top`` and its children, deepest first; members are moved to the root."""
    base = Path(mount) / top.strip("/")
    if not base.is_dir():
        return
    dirs = sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for directory in [*dirs, base]:
        for attempt in range(50):
            try:
                directory.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                _evacuate(directory, Path(mount))
                time.sleep(0.02 * attempt)


def _evacuate(directory: Path, mount: Path) -> None:
    """Move any process still in ``directory`` to the hierarchy's root, so it can go."""
    try:
        pids = (directory / "cgroup.procs").read_text().split()
    except OSError:
        return
    for pid in pids:
        with contextlib.suppress(OSError):
            (mount / "cgroup.procs").write_text(pid)


class CgroupSandbox:
    """A private ``podsight-test-*`` subtree of the cgroup2 hierarchy, with processes in it."""

    def __init__(self) -> None:
        root = cgroup2_root()
        if root is None:
            raise RuntimeError("no cgroup2 hierarchy mounted")
        self.mount = root
        self.top = PREFIX + secrets.token_hex(4)
        self.procs: list[subprocess.Popen[bytes]] = []
        os.mkdir(f"{self.mount}/{self.top}")

    def mkdir(self, rel: str) -> str:
        """Make ``rel`` (below the sandbox) and its parents; returns the path from the mount."""
        path = f"/{self.top}/{rel.strip('/')}"
        os.makedirs(self.mount + path, exist_ok=True)
        return path

    def full(self, path: str) -> str:
        return self.mount + path

    def spawn(self, path: str) -> subprocess.Popen[bytes]:
        """A ticker process moved into the cgroup at ``path`` (from the mount)."""
        proc = subprocess.Popen([sys.executable, "-c", TICKER])
        self.procs.append(proc)
        self.move(proc.pid, path)
        return proc

    def move(self, pid: int, path: str) -> None:
        with open(f"{self.full(path)}/cgroup.procs", "w") as f:
            f.write(str(pid))

    def close(self) -> None:
        for proc in self.procs:
            kill_and_reap(proc)
        for mount in cgroup_mounts():
            remove_cgroup_tree(mount, self.top)

    def __enter__(self) -> CgroupSandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# bpftrace's ``cgroup`` builtin is ``bpf_get_current_cgroup_id()``: the very value
# podsight's programs put in events.
PRINT_CGROUP = '{ printf("cgroup=%llu\\n", cgroup); exit(); }'


def _bpftrace_cgroup(program: str, timeout: float) -> int:
    out = subprocess.run(
        ["bpftrace", "-e", program], capture_output=True, text=True, timeout=timeout, check=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("cgroup="):
            return int(line.split("=", 1)[1])
    raise AssertionError(f"bpftrace printed no cgroup id: {out!r}")


def bpftrace_cgroup_of(
    pid: int, probe: str = "tracepoint:syscalls:sys_enter_getpgid", timeout: float = 30.0
) -> int:
    """The cgroup id the kernel's BPF helper reports for process ``pid`` at its next ``probe``.

    The default probe fits the ticker processes; a container's init that only
    sleeps and forks needs ``tracepoint:raw_syscalls:sys_enter``.
    """
    return _bpftrace_cgroup(f"{probe} /pid == {pid}/ {PRINT_CGROUP}", timeout)


def bpftrace_cgroupid(path: str, timeout: float = 30.0) -> int:
    """bpftrace's ``cgroupid(path)``: the kernel's file handle for the cgroup directory."""
    program = 'BEGIN { printf("cgroup=%llu\\n", cgroupid("' + path + '")); exit(); }'
    return _bpftrace_cgroup(program, timeout)
