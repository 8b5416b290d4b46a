"""The lab's long-running processes: starting its web servers, and stopping whatever runs.

The servers run detached (``setsid -f``) inside their namespaces, so they
outlive the ``podsight lab up`` that started them and are nobody's child to
reap; each reports ``ready <pid>`` on a pipe once it listens, which tells
``up`` both that it may go on and which pid to record. Stopping is the other
half: TERM, then KILL, and reaping any that happen to be our children.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from podsight.lab import system
from podsight.lab.errors import LabError
from podsight.lab.state import LabFiles, State
from podsight.lab.topology import PODS, ExternalHost, LabPod

WEBSERVER_MODULE = "podsight.lab.webserver"
PORTSERVER_MODULE = "podsight.lab.portserver"
#: Modules the lab runs inside its namespaces, as ``python -m``.
HELPER_MODULES = (WEBSERVER_MODULE, PORTSERVER_MODULE, "podsight.lab.delayline",
                  "podsight.lab.prober")
#: In the command line of every server the lab records (web and port servers alike).
SERVER_MARKER = "podsight.lab."
EXTERNAL_KEY = "external"  # key of the external host's server in state["pids"]


def expected_servers(pods: Sequence[LabPod] = PODS) -> list[str]:
    """The keys of ``state["pids"]`` a healthy lab has: the external host, and every pod
    with an HTTP server or (a ``--topology`` pod) container ports."""
    return [EXTERNAL_KEY] + [p.ref for p in pods if p.http_port or p.ports]


def serving(state: State, key: str) -> bool:
    """True if the server recorded under ``key`` is still running."""
    pid = (state.get("pids") or {}).get(key)
    return isinstance(pid, int) and system.process_alive(pid, SERVER_MARKER)


def recorded_pids(state: State) -> set[int]:
    """The pids of the servers in ``state`` that still run (a stale pid is not ours)."""
    return {
        pid
        for pid in (state.get("pids") or {}).values()
        if isinstance(pid, int) and system.process_alive(pid, SERVER_MARKER)
    }


def start_servers(ext: ExternalHost, files: LabFiles, state: State,
                  pods: Sequence[LabPod] = PODS) -> None:
    """Start the external site and every pod's server; return once all listen."""
    pending = [
        _spawn(
            files,
            EXTERNAL_KEY,
            ext.netns,
            [
                "--name", "external",
                "--http", f"{ext.web}:{ext.http_port}",
                "--https", f"{ext.web}:{ext.https_port}",
                "--cert", str(files.cert),
                "--key", str(files.key),
            ],
        )
    ]  # fmt: skip
    for pod in pods:
        if pod.http_port:
            args = ["--name", pod.ref, "--http", str(pod.http_port)]
            pending.append(_spawn(files, pod.ref, pod.netns, args))
        elif pod.ports:
            numbers = ",".join(str(n) for n in sorted({port for _, port, _ in pod.ports}))
            args = ["--name", pod.ref, "--ports", numbers]
            pending.append(_spawn(files, pod.ref, pod.netns, args, PORTSERVER_MODULE))
    try:
        for key, fd, log in pending:
            state["pids"][key] = _await_ready(key, fd, log)
            files.save_state(state)
    finally:
        for _, fd, _ in pending:
            with contextlib.suppress(OSError):
                os.close(fd)


def _spawn(files: LabFiles, key: str, netns: str, args: list[str],
           module: str = WEBSERVER_MODULE) -> tuple[str, int, Path]:
    """Start a server detached (``setsid -f``) and return a pipe it reports on.

    Detached, the server is nobody's child: no zombie in a long test
    session, and it survives the ``podsight lab up`` that started it.
    """
    log = files.server_log(key)
    read_fd, write_fd = os.pipe()
    try:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                ["setsid", "-f", "ip", "netns", "exec", netns,
                 system.python(), "-m", module, *args,
                 "--ready-fd", str(write_fd)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                pass_fds=(write_fd,),
                env=system.child_env(),
            )  # fmt: skip
        proc.wait(timeout=10)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return key, read_fd, log


def _await_ready(key: str, fd: int, log: Path, timeout: float = 15.0) -> int:
    data = system.read_line(fd, timeout)
    line = data.decode(errors="replace").strip()
    if line.startswith("ready "):
        return int(line.split()[1])
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except FileNotFoundError:
        lines = []
    why = lines[-1].strip() if lines else "no output"
    raise LabError(f"web server of {key} did not start: {why}")


def stop(pids: Iterable[int]) -> None:
    """TERM, then KILL, each of ``pids`` (never this process), waiting up to 3 s for each."""
    remaining = set(pids)
    remaining.discard(os.getpid())
    if not remaining:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            _reap_children(remaining)
            remaining = {p for p in remaining if system.process_alive(p, "")}
            if not remaining:
                return
            time.sleep(0.02)


def _reap_children(pids: set[int]) -> None:
    """Collect zombies among our own children (e.g. ``lab.popen`` leftovers)."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
