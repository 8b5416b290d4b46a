"""Test helpers for `podsight flows`: run it as a user would, send known traffic from lab pods."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from background import PODSIGHT, Background

SUMMARY = re.compile(r"podsight: (\d+) flow records, (\d+) packets in [\d.]+s, (\d+) lost")

# Send COUNT UDP datagrams of SIZE payload bytes from a fixed source port and print it.
UDP_SENDER = r"""
import json, socket, sys
host = sys.argv[1]
port, count, size, sport = (int(a) for a in sys.argv[2:6])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", sport))
for _ in range(count):
    s.sendto(b"x" * size, (host, port))
print(json.dumps({"sport": s.getsockname()[1]}), flush=True)
"""


@dataclass
class FlowsResult:
    records: list[dict[str, Any]]
    stdout: str
    stderr: str
    returncode: int
    summary: dict[str, int] = field(default_factory=dict)


class FlowsRun(Background):
    """`podsight flows ARGS` in the background, stopped with SIGINT like Ctrl-C.

    JSON output (``-o json --no-tui``) unless ``output`` says otherwise; the
    context manager returns once the ready line is on stderr, so traffic sent
    inside the ``with`` block is observed.
    """

    def __init__(self, *args: str, output: str = "json") -> None:
        super().__init__(["flows", "--no-tui", *(["-o", output] if output else []), *args],
                         ready="capturing flows", name="flows", start_timeout=30.0,
                         stop_timeout=30.0)
        self.result: FlowsResult | None = None

    def __enter__(self) -> FlowsRun:
        self.start()
        return self

    def stop(self, sig: int = signal.SIGINT) -> FlowsResult:
        if self.result is not None:
            return self.result
        out, err, rc = self.finish(sig)
        records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        summary: dict[str, int] = {}
        m = SUMMARY.search(err)
        if m:
            summary = {"records": int(m[1]), "packets": int(m[2]), "lost": int(m[3])}
        self.result = FlowsResult(records, out, err, rc, summary)
        return self.result

    def wait(self, timeout: float = 60) -> FlowsResult:
        """Wait for a run that ends by itself (--max-time, --max-bytes)."""
        assert self.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        return self.stop()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def send_udp(lab: Any, pod: str, host: str, port: int, count: int, size: int,
             sport: int = 0) -> int:
    """Send ``count`` datagrams of ``size`` bytes from a lab pod; returns the source port."""
    proc = lab.exec(
        pod, [sys.executable, "-c", UDP_SENDER, host, str(port), str(count), str(size), str(sport)],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    sport_used: int = json.loads(proc.stdout)["sport"]
    return sport_used


def dns_query(lab: Any, pod: str, server: str, name: str, tcp: bool = False,
              qtype: str = "A") -> dict[str, Any]:
    """Ask the lab's DNS server from a pod with podsight.lab.dnsquery; returns its JSON answer."""
    argv = [sys.executable, "-m", "podsight.lab.dnsquery", *(["--tcp"] if tcp else []),
            "--type", qtype, server, name]
    proc = lab.exec(pod, argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer


def flows_of(records: list[dict[str, Any]], **want: Any) -> list[dict[str, Any]]:
    """The records whose top-level fields equal ``want``."""
    return [r for r in records if all(r.get(k) == v for k, v in want.items())]


def run_flows(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `podsight flows ARGS` to completion (for errors and --max-time runs)."""
    return subprocess.run([*PODSIGHT, "flows", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
