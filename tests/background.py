"""A podsight command in the background, as a user runs it: ready when it says so, stopped
like Ctrl-C."""

from __future__ import annotations

import codecs
import os
import select
import signal
import subprocess
import sys
import time

PODSIGHT = [sys.executable, "-m", "podsight.cli.main"]


class Background:
    """`podsight ARGV` with stdout and stderr piped; ``with`` returns once stderr says ``ready``.

    Subclasses turn what :meth:`finish` returns into their result type.
    """

    def __init__(self, argv: list[str], ready: str, name: str,
                 start_timeout: float = 20.0, stop_timeout: float = 20.0) -> None:
        self.argv = [*PODSIGHT, *argv]
        self.proc: subprocess.Popen[str] | None = None
        self._ready = ready
        self._name = name
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._stderr_head = ""
        self._peeked = ""
        self._stderr_peeked = ""

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        assert self.proc.stderr is not None
        # Read the file descriptor itself, not the text stream: its readline() can take
        # the ready line into Python's buffer along with the line before it, and select()
        # on the descriptor then waits for output that never comes (serve's two start
        # lines come from two threads a few ms apart: seen as "did not start" on a loaded
        # machine). Everything read stays in _stderr_head; the stream itself is untouched.
        fd = self.proc.stderr.fileno()
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                chunk = os.read(fd, 1 << 16)
                self._stderr_head += text.decode(chunk, final=not chunk)
                if self._ready in self._stderr_head:
                    return
                if not chunk:
                    break
            if self.proc.poll() is not None:
                break
        self.finish(signal.SIGINT)
        raise AssertionError(f"{self._name} did not start: {self._stderr_head}")

    def peek(self) -> str:
        """What it printed so far (stdout), without stopping it."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            self._peeked += chunk.decode()
        return self._peeked

    def peek_stderr(self) -> str:
        """What it wrote on stderr so far, the ready line included, without stopping it."""
        assert self.proc is not None and self.proc.stderr is not None
        fd = self.proc.stderr.fileno()
        while select.select([fd], [], [], 0)[0]:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            self._stderr_peeked += chunk.decode()
        return self._stderr_head + self._stderr_peeked

    def wait_stderr(self, text: str, timeout: float = 30.0) -> bool:
        """Wait until it has written ``text`` on stderr (a notice, say)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.peek_stderr():
                return True
            time.sleep(0.05)
        return False

    def wait_printed(self, text: str, timeout: float = 10.0) -> bool:
        """Wait until it has printed ``text`` (identity is resolved at print time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.peek():
                return True
            time.sleep(0.05)
        return False

    def finish(self, sig: int) -> tuple[str, str, int]:
        """Send ``sig`` if it still runs; all of its stdout and stderr, and its exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=self._stop_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        return (self._peeked + out, self._stderr_head + self._stderr_peeked + err,
                self.proc.returncode)
