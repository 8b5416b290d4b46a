"""A real terminal for the live view's end-to-end tests: tmux, read with capture-pane.

Each :class:`Terminal` has its own tmux server (``-L``), started with exactly
the environment given, so that no user's tmux and no other test's panes are
touched and the command imports this checkout's podsight. The command's
stderr goes to a file (the summary line, printed once the view is closed)
and its exit code is appended to it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parent.parent / "src")


class Terminal:
    """``podsight ARGV`` in a tmux pane of ``width`` x ``height``."""

    def __init__(self, argv: list[str], workdir: Path, width: int = 200,
                 height: int = 50) -> None:
        if shutil.which("tmux") is None:
            pytest.fail("the live view's tests need tmux: run 'make setup-test'")
        self.socket = f"podsight-test-{uuid.uuid4().hex[:8]}"
        self.err = workdir / "stderr.txt"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm-256color",
               "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
               "PYTHONPATH": os.pathsep.join(
                   [SRC, *filter(None, [os.environ.get("PYTHONPATH")])])}
        for key in ("PODSIGHT_TEST_LOCK", "PODSIGHT_DEBUG", "KUBECONFIG"):
            if key in os.environ:
                env[key] = os.environ[key]
        command = " ".join(shlex.quote(a) for a in
                           [sys.executable, "-m", "podsight.cli.main", *argv])
        script = f"{command} 2>{shlex.quote(str(self.err))}; " \
                 f"echo \"exit=$?\" >>{shlex.quote(str(self.err))}"
        self._tmux("-f", "/dev/null", "new-session", "-d", "-x", str(width), "-y", str(height),
                   "env", "-i", *(f"{k}={v}" for k, v in env.items()), "sh", "-c", script)
        self.started = time.monotonic()

    def _tmux(self, *args: str) -> str:
        proc = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True, timeout=30, check=False)
        return proc.stdout

    def screen(self) -> str:
        """The pane as text, as a person sees it now."""
        return self._tmux("capture-pane", "-p", "-t", "0")

    def keys(self, *keys: str) -> float:
        """Press ``keys`` (tmux names: Enter, Left, C-c, or literal text); when, monotonic."""
        at = time.monotonic()
        self._tmux("send-keys", "-t", "0", *keys)
        return at

    def text(self, text: str) -> None:
        self._tmux("send-keys", "-t", "0", "-l", text)

    def wait(self, cond: Callable[[str], bool], what: str, timeout: float = 30.0) -> str:
        """Poll the screen until ``cond(screen)``; the screen that satisfied it."""
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if cond(screen):
                return screen
            if self.exited():
                break
            time.sleep(0.02)
        raise AssertionError(f"never on screen: {what}\n--- screen ---\n{screen}\n"
                             f"--- stderr ---\n{self.stderr()}")

    def exited(self) -> bool:
        return "exit=" in self.stderr()

    def stderr(self) -> str:
        try:
            return self.err.read_text()
        except FileNotFoundError:
            return ""

    def wait_exit(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            err = self.stderr()
            if "exit=" in err:
                return int(err.rsplit("exit=", 1)[1].split()[0])
            time.sleep(0.05)
        raise AssertionError(f"the command did not end within {timeout}s: {self.screen()}")

    def command_pid(self) -> int:
        """The podsight process (the pane runs ``sh -c``, whose child it is)."""
        shell = int(self._tmux("list-panes", "-F", "#{pane_pid}").split()[0])
        children = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
        return int(children[0])

    def close(self) -> None:
        self._tmux("kill-server")


def table_lines(screen: str) -> list[str]:
    """The table's rows: the lines between the title and the filter bar that hold a record."""
    lines = screen.splitlines()
    return [line for line in lines[2:] if line.strip() and not line.lstrip().startswith(
        ("filters:", "no filter", "up/down", "filter:"))]
