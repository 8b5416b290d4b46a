"""Thin wrappers over ``ip``, ``nft`` and friends.

The lab shells out instead of speaking rtnetlink itself: the commands are
what a person would type to inspect or repair the lab by hand, so every step
can be reproduced from a terminal. Failures become :class:`~podsight.lab.errors.LabError`
(exit status 1) carrying the tool's own first line of stderr, which is nearly always the useful part
("Cannot find device", "File exists", ...).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import podsight
from podsight.lab.errors import LabEnvironmentProblem, LabError

NETNS_DIR = Path("/run/netns")

_INSTALL_HINT = {
    "ip": "iproute2",
    "nft": "nftables",
    "iptables": "iptables",
    "ip6tables": "iptables",
    "openssl": "openssl",
    "setsid": "util-linux",
    "sysctl": "procps",
}


def require_root() -> None:
    """Everything the lab does needs CAP_NET_ADMIN; say so before half of it fails."""
    if os.geteuid() != 0:
        raise LabEnvironmentProblem("podsight lab needs root (CAP_NET_ADMIN)")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        package = _INSTALL_HINT.get(name, name)
        raise LabEnvironmentProblem(f"{name} not found (apt-get install -y {package})")
    return path


def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run a tool, capture its output, and turn a failure into a one-line LabError."""
    require_tool(argv[0])
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(argv)}: timed out after {timeout:g} s") from exc
    if check and proc.returncode != 0:
        reason = first_line(proc.stderr) or first_line(proc.stdout) or f"exit {proc.returncode}"
        raise LabError(f"{' '.join(argv)}: {reason}")
    return proc


def ip_json(argv: Sequence[str]) -> list[dict[str, Any]]:
    """``ip -j ...`` parsed; ``ip`` prints nothing at all for an empty list."""
    out = run(["ip", "-j", *argv]).stdout.strip()
    if not out:
        return []
    data = json.loads(out)
    return data if isinstance(data, list) else []


def netns_names() -> list[str]:
    """Named network namespaces, read from the directory ``ip netns`` keeps them in."""
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def netns_pids(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (``ip netns pids``)."""
    proc = run(["ip", "netns", "pids", name], check=False)
    return [int(tok) for tok in proc.stdout.split() if tok.isdigit()]


def links(netns: str | None = None) -> dict[str, dict[str, Any]]:
    """Links by name, in the root netns or in ``netns``."""
    argv = ["link", "show"] if netns is None else ["-n", netns, "link", "show"]
    return {str(link["ifname"]): link for link in ip_json(argv)}


def sysctl_path(key: str) -> Path:
    """``net.ipv4.conf.psl0.forwarding`` -> ``/proc/sys/net/ipv4/conf/psl0/forwarding``."""
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctl(key: str) -> str | None:
    try:
        return sysctl_path(key).read_text().strip()
    except FileNotFoundError:
        return None


def write_sysctl(key: str, value: str, *, netns: str | None = None) -> None:
    argv = ["sysctl", "-q", "-w", f"{key}={value}"]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    run(argv)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for helper processes, able to import this very ``podsight``.

    Helpers run as ``python -m podsight.lab....`` through ``ip netns exec``;
    putting our own source root first on PYTHONPATH makes that work the same
    from a checkout (``PYTHONPATH=src``), an editable install or a wheel.
    """
    env = dict(os.environ)
    root = str(Path(podsight.__file__).resolve().parent.parent)
    paths = [root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env


def python() -> str:
    return sys.executable


def atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def process_alive(pid: int, marker: str) -> bool:
    """True if ``pid`` runs and its command line contains ``marker``.

    The marker guards against pid reuse: a pid from an old state file may now
    belong to somebody else's process, which ``down`` must never kill.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
    if state in ("Z", "X"):
        return False
    return marker.encode() in cmdline


def stray_processes(modules: Sequence[str], args: Sequence[str] = ()) -> list[int]:
    """Processes running ``python -m <one of modules>``, or with one of ``args`` among their
    arguments, in a netns other than ours.

    Lab helpers never run in the root netns, so a match elsewhere, perhaps in
    a netns whose name is gone (someone ran ``ip netns del``), is a leftover
    of the lab. Processes in our own netns are never matched.
    """
    own = os.stat("/proc/self/ns/net").st_ino
    markers = [f"-m\0{module}\0".encode() for module in modules]
    markers += [f"\0{arg}\0".encode() for arg in args]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if not any(marker in cmdline for marker in markers):
                continue
            if os.stat(entry / "ns" / "net").st_ino == own:
                continue
        except OSError:
            continue
        found.append(int(entry.name))
    return found


def read_line(fd: int, timeout: float) -> bytes:
    """Bytes from ``fd`` up to and including the first newline, or what came before
    ``timeout`` seconds or EOF: how lab daemons say they are ready."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 256)
        if not chunk:
            break
        data += chunk
    return data
