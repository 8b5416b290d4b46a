"""`make demo`: a simulated cluster, two gadgets on it, then a clean teardown.

1. ``trace tcpconnect``: mypod fetches a page from the external web server
   over port 80 and 443 (both succeed), then tries another external address,
   which fails; the trace shows all three with their latency and result.
2. ``flows --enable-all``: shop/frontend resolves a Service name and a name
   that does not exist through the cluster DNS, then calls the web Service;
   the flows show bytes, packets, TCP flags, RTT and the DNS answers.
3. the seed scenario of Inspektor Gadget's tcpconnect guide, with NetworkPolicies
   (:mod:`podsight.demoseed`): trace mypod, advise its policy, check it, enforce it
   in the lab, and see the one connection it blocks, in the trace and in the check.

A lab that was already up is left up (the demo did not build it). A gadget
that does not say it is running within 30 s is stopped and named, with what
it printed, and the demo exits 1 (tearing down the lab it built) instead of
waiting forever. Run as root: ``python -m podsight.demo``.
"""

from __future__ import annotations

import os
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from podsight.errors import UserError
from podsight.lab import EXTERNAL_UNREACHABLE, EXTERNAL_WEB, Lab
from podsight.lab.topology import SERVICES

WEB_SERVICE_IP = next(s.cluster_ip for s in SERVICES if s.ref == "default/web")
DNS_SERVICE_IP = next(s.cluster_ip for s in SERVICES if s.ref == "kube-system/kube-dns")

TRACE_STEPS = [
    ("mypod fetches http://{web}/ from the external web server",
     ["curl", "-sS", "-o", "/dev/null", "-w", "  -> HTTP %{{http_code}}\\n", "http://{web}/"]),
    ("mypod fetches https://{web}/ (TLS, self-signed)",
     ["curl", "-sSk", "-o", "/dev/null", "-w", "  -> HTTP %{{http_code}}\\n", "https://{web}/"]),
    ("mypod tries another external address, {bad}, which is unreachable",
     ["curl", "-sS", "-o", "/dev/null", "--connect-timeout", "5", "http://{bad}/"]),
]

FLOWS_STEPS = [
    ("frontend resolves web.default.svc.cluster.local (NOERROR)",
     [sys.executable, "-m", "podsight.lab.dnsquery", "{dns}", "web.default.svc.cluster.local"]),
    ("frontend resolves nothing-here.example over TCP (NXDOMAIN)",
     [sys.executable, "-m", "podsight.lab.dnsquery", "--tcp", "{dns}", "nothing-here.example"]),
    ("frontend calls the web Service, http://{svc}/",
     ["curl", "-sS", "-o", "/dev/null", "-w", "  -> HTTP %{{http_code}}\\n", "http://{svc}/"]),
]


#: How long a gadget may take to say it is running before the demo gives up on it.
READY_TIMEOUT = 30.0
#: Lines a gadget may print before its ready line that say nothing the demo needs.
QUIET_NOTES = ("podsight: no pod interfaces",)


class DemoFailed(UserError):
    """A step of the demo did not work (exit status 1: the demo, not its caller, went wrong)."""

    exit_code = 1


@dataclass(frozen=True)
class Act:
    """One gadget of the demo: where the traffic runs, the podsight command, and the traffic."""

    pod: str  # the pod the steps run in
    argv: list[str]  # podsight's arguments
    ready_word: str  # in the line the command prints on stderr once it is running
    steps: list[tuple[str, list[str]]]


def acts(lab: Lab) -> list[Act]:
    """The demo: ``trace tcpconnect`` on mypod, then ``flows`` on the shop namespace."""
    mypod = lab.pod("mypod")
    return [
        Act("mypod", ["trace", "tcpconnect", "--netns", mypod.netns], "tracing", TRACE_STEPS),
        Act("frontend", ["flows", "--enable-all", "--no-tui", "-n", "shop",
                         "-o", "columns=src,dst,proto,bytes,packets,flags,rtt,dns"],
            "capturing flows", FLOWS_STEPS),
    ]  # fmt: skip


def say(text: str) -> None:
    sys.stderr.write(f"\033[1m==> {text}\033[0m\n" if sys.stderr.isatty() else f"==> {text}\n")
    sys.stderr.flush()


def gadget(lab: Lab, act: Act, fill: dict[str, str],
           ready_timeout: float = READY_TIMEOUT) -> None:  # fmt: skip
    """Start a podsight command, run the steps in ``act.pod``, stop it with Ctrl-C's signal."""
    command = "podsight " + shlex.join(act.argv)
    say(command)
    proc = subprocess.Popen([sys.executable, "-m", "podsight.cli.main", *act.argv],
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        early = _await_ready(proc, command, act.ready_word, ready_timeout)
        for title, step in act.steps:
            say(title.format(**fill))
            lab.exec(act.pod, [a.format(**fill) for a in step], check=False,
                     stdout=subprocess.DEVNULL if step[0] == sys.executable else None)
            time.sleep(0.3)
        time.sleep(1.2)  # one more flows interval
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        sys.stderr.write((early + err).decode(errors="replace"))
    finally:
        _stop(proc)


def _await_ready(proc: subprocess.Popen[bytes], command: str, ready_word: str,
                 timeout: float) -> bytes:  # fmt: skip
    """Wait until ``proc`` prints a stderr line with ``ready_word``; fail at exit or timeout.

    Returns what it printed on stderr besides that line (except
    :data:`QUIET_NOTES`), for the caller to show with the rest. A command
    that never gets ready is stopped and named with what it printed, instead
    of the demo waiting forever.
    """
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    deadline = time.monotonic() + timeout
    said = b""
    pending = b""
    while True:
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if ready_word.encode() in line:
                return said + pending
            if line.strip() and not line.decode(errors="replace").startswith(QUIET_NOTES):
                said += line + b"\n"
        chunk = _read(fd, deadline - time.monotonic())
        if not chunk:
            break
        pending += chunk
    said += pending
    if chunk is None:  # the deadline passed: alive, but it never said it was running
        _stop(proc)
        said += _read_rest(fd)
        what = f"never became ready (no {ready_word!r} on stderr within {timeout:g} s)"
    else:
        proc.wait()
        what = f"exited ({_exit_status(proc.returncode)}) before it was ready"
    lines = [ln.strip() for ln in said.decode(errors="replace").splitlines() if ln.strip()]
    printed = " | ".join(lines)
    if len(printed) > 300:
        printed = "..." + printed[-297:]
    raise DemoFailed(f"{command} {what}; its stderr: {printed or '(nothing)'}")


def _read(fd: int, timeout: float) -> bytes | None:
    """Some bytes from ``fd``, b"" at end of file, None if nothing came within ``timeout``."""
    if timeout <= 0 or not select.select([fd], [], [], timeout)[0]:
        return None
    return os.read(fd, 4096)


def _read_rest(fd: int, timeout: float = 1.0) -> bytes:
    """What a stopped command left in its stderr pipe; a grandchild holding the pipe open
    must not make the demo wait again, so this too has a deadline."""
    deadline = time.monotonic() + timeout
    rest = b""
    while chunk := _read(fd, deadline - time.monotonic()):
        rest += chunk
    return rest


def _exit_status(returncode: int) -> str:
    return f"signal {-returncode}" if returncode < 0 else f"exit {returncode}"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a gadget as Ctrl-C would (it detaches from the kernel); kill it if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _seed(lab: Lab, ready_timeout: float) -> None:
    import tempfile
    from pathlib import Path

    from podsight import demoseed

    with tempfile.TemporaryDirectory(prefix="podsight-demo-") as workdir:
        seed = demoseed.replay(lab, Path(workdir), say, sys.stdout, ready_timeout)
    assert seed.check_after is not None
    if seed.check_after.returncode != 1:
        raise DemoFailed("policy check on the second trace did not flag the blocked fetch")


def run(plan: Callable[[Lab], list[Act]] = acts, ready_timeout: float = READY_TIMEOUT) -> int:
    if os.geteuid() != 0:
        raise UserError("the demo builds network namespaces: run it as root (sudo make demo)")
    lab = Lab()
    was_up = lab.is_up()
    say("building the lab: a node (this host), pods in network namespaces, an external host")
    lab.up()
    try:
        for pod in lab.pods:
            ref = f"p/{pod.namespace}/{pod.name}"
            sys.stderr.write(f"    {ref:<24} {pod.ipv4:<12} netns {pod.netns}\n")
        fill = {"web": EXTERNAL_WEB, "bad": EXTERNAL_UNREACHABLE, "dns": DNS_SERVICE_IP,
                "svc": WEB_SERVICE_IP}  # fmt: skip
        for act in plan(lab):
            gadget(lab, act, fill, ready_timeout)
        if plan is acts:
            _seed(lab, ready_timeout)
    finally:
        if not was_up:
            say("tearing the lab down")
            lab.down()
    return 0


def main(plan: Callable[[Lab], list[Act]] = acts, ready_timeout: float = READY_TIMEOUT) -> int:
    """``python -m podsight.demo``; tests pass their own ``plan`` and a short ``ready_timeout``."""
    try:
        return run(plan, ready_timeout)
    except UserError as exc:
        sys.stderr.write(f"podsight: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
