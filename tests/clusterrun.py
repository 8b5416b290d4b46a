"""Helpers for the cluster tests: agents as separate simulated nodes (each its own process,
``--node-name`` and network namespace), the kubectl-podsight client, loopback connects
inside a namespace, and the BPF links a process holds (bpftool)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SRC = str(Path(__file__).resolve().parent.parent / "src")
# This tree first, then whatever path the tests run with: as nobody (test_noroot) the
# interpreter is Debian's and finds the environment's packages only through PYTHONPATH.
ENV = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join(
    [SRC, *filter(None, [os.environ.get("PYTHONPATH")])]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines in `path`. The client may be writing while a test polls, so a
    last line without its newline is still being written and is left for the next read."""
    text = path.read_text()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def wait_for(cond: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Agent:
    def __init__(self, node: str, *, netns: str | None = None, auth: str = "none",
                 kubeconfig: str | None = None, log_dir: Path) -> None:
        self.node = node
        self.port = free_port()
        self.health = free_port()
        self.log = log_dir / f"agent-{node}.log"
        argv = [sys.executable, "-m", "podsight.cli.main", "agent", "--listen",
                f"127.0.0.1:{self.port}", "--node-name", node, "--auth", auth,
                "--health-listen", f"127.0.0.1:{self.health}"]
        if netns:
            argv += ["--netns", netns]
        if kubeconfig:
            argv += ["--kubeconfig", kubeconfig]
        self.proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL,
                                     stderr=self.log.open("w"))
        wait_for(self.ready, f"agent {node} ready")

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health}/readyz",
                                        timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def agents(nodes: dict[str, str | None], log_dir: Path, **kw: object) -> Iterator[list[Agent]]:
    started: list[Agent] = []
    try:
        for node, netns in nodes.items():
            started.append(Agent(node, netns=netns, log_dir=log_dir, **kw))  # type: ignore[arg-type]
        yield started
    finally:
        for a in started:
            a.stop()


@contextlib.contextmanager
def namespaces(*names: str) -> Iterator[list[str]]:
    try:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            subprocess.run(["ip", "netns", "add", name], check=True)
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield list(names)
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


CONNECTS = r"""
import socket, sys
n = int(sys.argv[1])
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(4096)
port = srv.getsockname()[1]
for _ in range(n):
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    c.connect(("127.0.0.1", port))
    a, _ = srv.accept()
    a.close()
    c.close()
print(port)
"""


def connects(netns: str, n: int) -> int:
    """``n`` loopback connects inside ``netns``; the listener's port."""
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", CONNECTS, str(n)],
                         check=True, capture_output=True, text=True, timeout=120)
    return int(out.stdout.strip())


def build_connstorm(where: Path) -> Path:
    """bench/connstorm, built in ``where`` (gcc)."""
    src = Path(__file__).resolve().parent.parent / "bench" / "connstorm.c"
    exe = where / "connstorm"
    subprocess.run(["gcc", "-O2", "-pthread", "-Wall", "-o", str(exe), str(src)], check=True)
    return exe


def storm(exe: Path, netns: str, *args: str) -> subprocess.Popen[str]:
    """connstorm with ``args`` inside ``netns``; its one JSON line is on its stdout."""
    return subprocess.Popen(["ip", "netns", "exec", netns, str(exe), *args],
                            stdout=subprocess.PIPE, text=True)


def client(*argv: str, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "podsight.cli.kubectl", *argv], env=ENV,
                            text=True, **kw)  # type: ignore[call-overload]


def held_links(pids: set[int]) -> set[int]:
    """Ids of the BPF links ``pids`` hold an fd to (their fdinfo)."""
    ids: set[int] = set()
    for pid in pids:
        try:
            for info in Path(f"/proc/{pid}/fdinfo").iterdir():
                for line in info.read_text().splitlines():
                    if line.startswith("link_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def bpftool_links() -> set[int]:
    """Ids of every BPF link on the machine, as bpftool lists them."""
    out = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True,
                         check=True).stdout
    return {int(link["id"]) for link in json.loads(out or "[]")}
