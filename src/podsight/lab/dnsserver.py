"""Running the lab's cluster DNS: dnsmasq in the DNS pod, and every pod's ``resolv.conf``.

:mod:`podsight.lab.dns` says what the cluster DNS answers; this module makes
it answer and undoes that. It is the one part of the lab that writes outside
the state directory (``/etc/netns/<netns>/resolv.conf``, which ``ip netns
exec`` shows the pod as ``/etc/resolv.conf``), so finding and removing those
files by name lives here too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from podsight.lab import dns, system
from podsight.lab.errors import LabError
from podsight.lab.state import LabFiles, State
from podsight.lab.topology import DNS_POD, DNS_SERVICE, NAME_PREFIX, PODS, LabService

#: ``ip netns exec NS`` bind-mounts ``ETC_NETNS/NS/resolv.conf`` over ``/etc/resolv.conf``.
ETC_NETNS = Path("/etc/netns")


def marker(files: LabFiles) -> str:
    """In the command line of our dnsmasq and no other's."""
    return f"--conf-file={files.dns_conf}"


def resolv_conf_path(netns: str) -> Path:
    """The file ``ip netns exec`` shows a pod as its ``/etc/resolv.conf``."""
    return ETC_NETNS / netns / "resolv.conf"


def off_reason(dnsmasq: str | None) -> str | None:
    """Why a lab built now would run without cluster DNS, or None if it will have it."""
    return None if dnsmasq else f"dnsmasq not installed ({dns.INSTALL_HINT})"


def start(dnsmasq: str, files: LabFiles, state: State, services: Sequence[LabService]) -> None:
    """Start dnsmasq in the DNS pod and point every pod's ``resolv.conf`` at it.

    dnsmasq daemonizes itself, and its first process exits only once the
    daemon listens (or with the reason it cannot): ready when ``run`` returns.
    Pods use the kube-dns Service when it runs, the DNS pod's own address
    when the lab has no Services.
    """
    pod = next(p for p in PODS if p.ref == DNS_POD)
    port = pod.dns_port or 53
    system.atomic_write(files.dns_hosts, dns.hosts_file(PODS, services))
    system.atomic_write(
        files.dns_conf,
        dns.dnsmasq_conf(str(files.dns_hosts), str(files.dns_pid), str(files.dns_log), port),
    )
    files.dns_pid.unlink(missing_ok=True)
    system.run(["ip", "netns", "exec", pod.netns, dnsmasq, marker(files)])
    try:
        pid = int(files.dns_pid.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        why = f"no pid in {files.dns_pid}"
        raise LabError(f"dns server of {DNS_POD} did not start: {why}") from None
    nameserver = next((s.cluster_ip for s in services if s.ref == DNS_SERVICE), pod.ipv4)
    state["dns"] = {"server": "dnsmasq", "pid": pid, "nameserver": nameserver}
    files.save_state(state)
    for each in PODS:
        system.atomic_write(resolv_conf_path(each.netns), dns.resolv_conf(each, nameserver))


def running(files: LabFiles, state: State) -> bool:
    """True if DNS is on and its server runs; also True while DNS is (rightly) off."""
    info = state.get("dns") or {}
    if "off" in info:
        return True
    pid = info.get("pid")
    return isinstance(pid, int) and system.process_alive(pid, marker(files))


def running_pid(files: LabFiles, state: State) -> int | None:
    """The pid of our dnsmasq if it still runs (a stale pid is not ours to kill)."""
    pid = (state.get("dns") or {}).get("pid")
    if isinstance(pid, int) and system.process_alive(pid, marker(files)):
        return pid
    return None


def problems(files: LabFiles, state: State, installed: bool) -> list[str]:
    """What is wrong with the cluster DNS of a lab whose state is ``state``."""
    info = state.get("dns")
    if not isinstance(info, dict):
        return ["no cluster DNS state"]
    if "off" in info:
        # Installed since: a rebuild turns DNS on.
        return ["cluster DNS is off but dnsmasq is installed now"] if installed else []
    found = []
    if not running(files, state):
        found.append(f"dns server of {DNS_POD} not running")
    missing = [p.netns for p in PODS if not resolv_conf_path(p.netns).exists()]
    if missing:
        found.append(f"no {ETC_NETNS}/<netns>/resolv.conf for {', '.join(missing)}")
    return found


def remove_resolv_confs() -> None:
    """Remove the pods' ``resolv.conf`` by name (every lab netns name starts ``psl-``).

    ``/etc/netns`` goes too when the lab's were the only entries in it: it
    rarely exists otherwise, and the state file (which could say who made
    it) may be gone.
    """
    ours = list(ETC_NETNS.glob(f"{NAME_PREFIX}-*"))
    for directory in ours:
        (directory / "resolv.conf").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            directory.rmdir()
    if ours:
        with contextlib.suppress(OSError):
            ETC_NETNS.rmdir()  # only if empty
