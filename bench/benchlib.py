"""What every benchmark here needs: children killed on every exit, their CPU time, one-line errors.

Imported by the scripts in this folder (run as ``python bench/NAME.py``, so
this folder is on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A failure worth one line, not a traceback."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised like KeyboardInterrupt so that every ``finally`` runs."""


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    """Signal handler for SIGTERM/SIGHUP: unwind through every ``finally``."""
    raise Terminated


class Children:
    """Every child we start, each in its own process group, killed on the way out.

    A tracer must get SIGINT only when we say so (a Ctrl-C at the terminal
    would stop it mid-run), so each child gets a new session; the price is
    that nothing kills them for us, hence this registry and its ``finally``.
    """

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self._procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self._procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError, subprocess.TimeoutExpired):
                    proc.wait(5)
        self._procs.clear()


def wait_with_cpu(proc: subprocess.Popen[bytes], timeout: float) -> float | None:
    """Reap ``proc``; the CPU seconds (user + system) it used, or None on timeout.

    ``os.wait4`` is the only way to get an exited child's rusage; Popen.wait
    would reap it and throw the rusage away.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        time.sleep(0.02)
    return None


def cpu_so_far(pid: int) -> float:
    """CPU seconds a running process has used (all threads), from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def prog_ids(pid: int) -> set[int]:
    """IDs of the BPF programs a process holds (program and link fds name them)."""
    ids: set[int] = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            for line in info.read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
    return ids


def run_guarded(name: str, work: Callable[[Children], dict[str, Any]],
                json_path: Path | None) -> int:
    """Run a benchmark: its exit status, with one-line errors, and no child left on any exit.

    Ctrl-C works even when started in the background (where SIGINT comes
    in ignored); SIGTERM and SIGHUP unwind like it. The results go to
    ``json_path`` only when the run completed.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, raise_terminated)
    signal.signal(signal.SIGHUP, raise_terminated)
    children = Children()
    try:
        results = work(children)
    except BenchError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated):
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    finally:
        children.kill_all()
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
    return 0
