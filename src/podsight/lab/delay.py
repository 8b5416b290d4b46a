"""Delay injection for the lab: hold every TCP packet a netns sends for a fixed time.

This kernel has no ``netem`` qdisc and nftables' ``queue`` expression is not
built, but ``iptables -j NFQUEUE`` works (iptables-nft via nft_compat). So an
OUTPUT rule in the pod's netns sends its TCP packets to an nfqueue, and a small
helper process bound to that queue releases each packet ``delay_s`` after it
arrived. The delay is constant, so releasing in arrival order preserves order.

The helper runs as ``ip netns exec NETNS python -m podsight.lab.delayline`` because
nfqueue instances are per network namespace: the queue socket must be opened
inside the pod's netns, and ``setns`` in a thread of *this* process would only
move that thread (and would leak into whatever else it runs).

Safety: the rule uses ``--queue-bypass`` and the queue is configured fail-open,
so a crashed helper or a full queue lets traffic pass instead of cutting the
pod off; exiting the context removes the rule before stopping the helper, and
the helper accepts everything it still holds before it unbinds.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from podsight.errors import UserError
from podsight.lab import system
from podsight.lab.errors import LabError

DEFAULT_QUEUE = 4711
MAX_DELAY_S = 60.0
RULE_COMMENT = "podsight-lab-delay"

_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|µs|ms|s)\s*$")


def parse_duration(text: str) -> float:
    """``50ms`` -> 0.05. Units are required: a bare ``50`` is too easy to misread."""
    match = _DURATION.match(text)
    if not match:
        if text.strip().startswith("-"):
            raise UserError(
                f"invalid duration {text!r}: negative (a delay is more than 0, at most "
                f"{MAX_DELAY_S:g}s)"
            )
        raise UserError(f"invalid duration {text!r} (a number and us, ms or s: e.g. 50ms, 1.5s)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds <= MAX_DELAY_S:
        raise UserError(f"duration {text!r} out of range (more than 0, at most {MAX_DELAY_S:g}s)")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:g}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:g}ms"
    return f"{seconds * 1e6:g}us"


def _rule(queue_num: int) -> list[str]:
    return [
        "OUTPUT", "-p", "tcp", "!", "-o", "lo",
        "-m", "comment", "--comment", RULE_COMMENT,
        "-j", "NFQUEUE", "--queue-num", str(queue_num), "--queue-bypass",
    ]  # fmt: skip


@dataclass
class DelayLine:
    """A running delay: the netns it applies to and the helper holding its packets."""

    netns: str
    delay_s: float
    queue_num: int
    process: subprocess.Popen[bytes]

    def alive(self) -> bool:
        return self.process.poll() is None


@contextlib.contextmanager
def delayed(netns: str, delay_s: float, *, queue_num: int = DEFAULT_QUEUE) -> Iterator[DelayLine]:
    """Delay every TCP packet sent from ``netns`` (except over ``lo``) by ``delay_s``.

    Incoming packets are not delayed, so a TCP connect from the netns takes
    about ``delay_s`` longer (the SYN waits) and a round trip from elsewhere
    into it also about ``delay_s`` longer (the SYN-ACK waits).
    """
    system.require_root()
    for tool in ("ip", "iptables", "ip6tables"):
        system.require_tool(tool)
    if not 0 < delay_s <= MAX_DELAY_S:
        raise UserError(f"delay must be more than 0 and at most {MAX_DELAY_S:g}s")
    if not system.netns_exists(netns):
        raise LabError(f"no network namespace {netns!r}")

    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, system.python(), "-m", "podsight.lab.delayline",
         "--queue", str(queue_num), "--delay", repr(delay_s)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=system.child_env(),
        # Ctrl-C goes to us alone: we remove the rule first, then stop the helper.
        start_new_session=True,
    )  # fmt: skip
    added: list[str] = []
    try:
        _await_ready(proc)
        for tool in ("iptables", "ip6tables"):
            system.run(["ip", "netns", "exec", netns, tool, "-w", "-I", *_rule(queue_num)])
            added.append(tool)
        yield DelayLine(netns, delay_s, queue_num, proc)
    finally:
        for tool in added:
            system.run(
                ["ip", "netns", "exec", netns, tool, "-w", "-D", *_rule(queue_num)], check=False
            )
        _stop(proc)


def _await_ready(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    assert proc.stdout is not None and proc.stderr is not None
    data = system.read_line(proc.stdout.fileno(), timeout)
    if data.startswith(b"ready"):
        return
    _stop(proc, close=False)
    why = system.first_line(proc.stderr.read().decode(errors="replace")) or "no output"
    raise LabError(f"delay helper did not start: {why}")


def _stop(proc: subprocess.Popen[bytes], *, close: bool = True) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if close:
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
