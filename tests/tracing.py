"""Test helpers: run `podsight trace ...` as a user would, and make connects from lab pods."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from background import PODSIGHT, Background

SUMMARY = re.compile(r"podsight: (\d+) events, (\d+) lost, (\d+) pending")

# Connect once and report what the kernel said, with our own pid and comm, as JSON.
CLIENT = r"""
import errno, json, os, socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(timeout or None)  # 0 means a blocking connect
err = 0
try:
    s.connect((host, port))
except OSError as e:
    err = e.errno or errno.ETIMEDOUT
out = {"pid": os.getpid(), "comm": open("/proc/self/comm").read().strip(), "errno": err,
       "sport": s.getsockname()[1] if not err else 0}
s.close()
print(json.dumps(out), flush=True)
"""


@dataclass
class TraceResult:
    events: list[dict[str, Any]]
    stdout: str
    stderr: str
    returncode: int
    summary: dict[str, int] = field(default_factory=dict)


class Trace(Background):
    """`podsight trace tcpconnect ARGS` in the background, stopped with SIGINT like Ctrl-C."""

    def __init__(self, *args: str, gadget: str = "tcpconnect", output: str = "json") -> None:
        super().__init__(["trace", gadget, *(["-o", output] if output else []), *args],
                         ready="tracing", name="trace")
        self.result: TraceResult | None = None

    def __enter__(self) -> Trace:
        self.start()
        return self

    def stop(self) -> TraceResult:
        if self.result is not None:
            return self.result
        out, err, rc = self.finish(signal.SIGINT)
        events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        summary: dict[str, int] = {}
        m = SUMMARY.search(err)
        if m:
            summary = {"events": int(m[1]), "lost": int(m[2]), "pending": int(m[3])}
        self.result = TraceResult(events, out, err, rc, summary)
        return self.result

    def __exit__(self, *exc: object) -> None:
        self.stop()


def connect(lab: Any, pod: str, host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    """Connect from a lab pod; returns {pid, comm, errno, sport} of the client process."""
    proc = lab.exec(
        pod, [sys.executable, "-c", CLIENT, host, str(port), str(timeout)],
        capture_output=True, text=True, timeout=timeout + 30,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def connect_host(host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    """Connect from the root namespace (loopback only)."""
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT, host, str(port), str(timeout)],
        capture_output=True, text=True, timeout=timeout + 30,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def matching(events: list[dict[str, Any]], **want: Any) -> list[dict[str, Any]]:
    return [e for e in events if all(e.get(k) == v for k, v in want.items())]


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PODSIGHT, *args], capture_output=True, text=True, timeout=timeout)


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


class Capture:
    """tshark on an interface, as an independent oracle of what went on the wire."""

    def __init__(self, interface: str, bpf_filter: str) -> None:
        self.argv = ["tshark", "-l", "-n", "-i", interface, "-f", bpf_filter,
                     "-T", "fields", "-e", "frame.time_relative"]
        self.proc: subprocess.Popen[str] | None = None
        self.packets: list[float] = []

    def __enter__(self) -> Capture:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 30
        seen = ""
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            seen += line
            if "Capturing on" in line:
                return self
            if not line and self.proc.poll() is not None:
                break
        self.proc.kill()
        raise AssertionError(f"tshark did not start: {seen}")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=30)
        self.packets = [float(x) for x in out.split()]


@contextlib.contextmanager
def refused_connects(pause: float) -> Iterator[None]:
    """Refused connects to 127.0.0.1:9 from a thread, one every ``pause`` seconds or so,
    while the block runs: records for trace to see, in many small batches."""
    stop = threading.Event()

    def storm() -> None:
        while not stop.is_set():
            s = socket.socket()
            try:
                s.connect(("127.0.0.1", 9))
            except OSError:
                pass
            finally:
                s.close()
            time.sleep(pause)

    worker = threading.Thread(target=storm, daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()
