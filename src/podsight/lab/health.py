"""Is the lab up? What is missing? One row per pod for ``podsight lab status``.

Health is read from the kernel and ``/proc`` (links, namespaces, the nft
table, live server pids), never from the state file alone: ``up`` decides
from :func:`problems` whether to rebuild, and a person reads ``status`` to
see what broke, so both must describe the machine as it is now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from podsight.lab import dnsserver, nft, servers, system
from podsight.lab.state import LabFiles
from podsight.lab.topology import BRIDGE, NFT_FAMILY, NFT_TABLE, PODS, ExternalHost, LabPod


@dataclass(frozen=True)
class HostStatus:
    """One row of ``podsight lab status``: a pod or the external host, and how it is doing."""

    namespace: str
    name: str
    netns: str
    ipv4: str
    ipv6: str
    veth: str
    state: str  # "Running", "Absent", or "Degraded: <what is wrong>"
    pod: LabPod | None = None

    @property
    def running(self) -> bool:
        return self.state == "Running"


def status(files: LabFiles, ext: ExternalHost,
           pods: Sequence[LabPod] = PODS) -> list[HostStatus]:
    """One row per pod, then one for the external host."""
    root_links = system.links()
    state = files.read_state() or {}
    rows: list[HostStatus] = []
    for pod in pods:
        issues = _host_issues(pod.netns, pod.veth, root_links)
        if pod.http_port and not issues and not servers.serving(state, pod.ref):
            issues.append(f"http :{pod.http_port} not serving")
        if pod.ports and not issues and not servers.serving(state, pod.ref):
            issues.append("ports not serving")
        if pod.dns_port and not issues and not dnsserver.running(files, state):
            issues.append(f"dns :{pod.dns_port} not serving")
        word = _state_word(issues, pod.netns, pod.veth, root_links)
        rows.append(HostStatus(pod.namespace, pod.name, pod.netns, pod.ipv4, pod.ipv6,
                               pod.veth, word, pod))  # fmt: skip
    issues = _host_issues(ext.netns, ext.link, root_links)
    if not issues and not servers.serving(state, servers.EXTERNAL_KEY):
        issues.append("web server not serving")
    word = _state_word(issues, ext.netns, ext.link, root_links)
    rows.append(HostStatus("-", "(external)", ext.netns, ext.web, "-", ext.link, word))
    return rows


def problems(files: LabFiles, ext: ExternalHost, dnsmasq_installed: bool,
             pods: Sequence[LabPod] = PODS) -> list[str]:
    """What is missing or broken, in words; empty when the lab is up."""
    found: list[str] = []
    state = files.read_state()
    if state is None:
        found.append(f"no state file {files.state}")
    if not files.inventory.exists():
        found.append(f"no inventory {files.inventory}")
    root_links = system.links()
    bridge = root_links.get(BRIDGE)
    if bridge is None or "UP" not in bridge.get("flags", []):
        found.append(f"bridge {BRIDGE} missing or down")
    for pod in pods:
        found += _host_issues(pod.netns, pod.veth, root_links)
        if (root_links.get(pod.veth) or {}).get("master", BRIDGE) != BRIDGE:
            found.append(f"{pod.veth} not on {BRIDGE}")
    found += _host_issues(ext.netns, ext.link, root_links)
    if not nft.table_exists():
        found.append(f"nft table {NFT_FAMILY} {NFT_TABLE} missing")
    if state is not None:
        for key in servers.expected_servers(pods):
            if not servers.serving(state, key):
                found.append(f"web server of {key} not running")
        found += dnsserver.problems(files, state, dnsmasq_installed)
    return found


def _host_issues(netns: str, link: str, root_links: dict[str, dict[str, Any]]) -> list[str]:
    issues = []
    if not system.netns_exists(netns):
        issues.append(f"netns {netns} missing")
    info = root_links.get(link)
    if info is None:
        issues.append(f"link {link} missing")
    elif "LOWER_UP" not in info.get("flags", []):
        issues.append(f"link {link} down")
    return issues


def _state_word(
    issues: list[str], netns: str, link: str, root_links: dict[str, dict[str, Any]]
) -> str:
    if not issues:
        return "Running"
    if not system.netns_exists(netns) and link not in root_links:
        return "Absent"
    return "Degraded: " + "; ".join(issues)
