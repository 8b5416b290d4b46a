"""Interfaces to observe: pods' host-side veths, or the host's; names across namespaces.

A pod's traffic all crosses the host end of its veth, so observing that one
interface (both directions) sees everything the pod sends and receives
without entering its namespace. The host end is found from inside the pod's
netns: its interface's ``link_index`` is the ifindex of the peer on the host.
"""

from __future__ import annotations

import fnmatch
import json
import socket
import subprocess
from collections.abc import Iterable
from pathlib import Path

from podsight.net.netns import netns_names, run_in_netns


def host_interfaces() -> dict[int, str]:
    """Every interface of this (the root) namespace except loopback: ifindex -> name."""
    out: dict[int, str] = {}
    for dev in Path("/sys/class/net").iterdir():
        try:
            flags = int((dev / "flags").read_text(), 16)
            ifindex = int((dev / "ifindex").read_text())
        except (OSError, ValueError):
            continue
        if flags & 0x8:  # IFF_LOOPBACK
            continue
        out[ifindex] = dev.name
    return out


def interface_name_in(netns: int, ifindex: int) -> str:
    """The name of ``ifindex`` inside network namespace ``netns`` (inode); ``ifN`` if unknown.

    Ifindexes are per namespace (a pod's eth0 is often 2, which is some other
    device on the host), so the name must be asked inside that namespace.
    """
    return run_in_netns(netns, lambda: interface_name(ifindex), f"if{ifindex}")


def interface_name(ifindex: int) -> str:
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return f"if{ifindex}"


def _peers_in(netns_name: str) -> set[int]:
    """Host-side ifindexes of the veths whose other end is in this namespace."""
    try:
        proc = subprocess.run(
            ["ip", "-n", netns_name, "-j", "link", "show"], capture_output=True, text=True,
            timeout=5, check=False,
        )
        links = json.loads(proc.stdout or "[]")
    except (OSError, subprocess.TimeoutExpired, json.JSONDecodeError):
        return set()
    # Only peers in another namespace (the host) count: link_netnsid says so.
    return {
        int(link["link_index"]) for link in links
        if "link_index" in link and "link_netnsid" in link
    }


class PodInterfaces:
    """Maps pod network namespaces to host-side veth ifindexes, cached per namespace."""

    def __init__(self) -> None:
        self._cache: dict[int, set[int]] = {}

    def for_netns(self, inodes: Iterable[int]) -> set[int]:
        names = netns_names()
        host = host_interfaces()
        found: set[int] = set()
        for inode in inodes:
            peers = self._cache.get(inode)
            if peers is None or not peers <= host.keys():
                name = names.get(inode)
                peers = _peers_in(name) if name else set()
                self._cache[inode] = peers
            found |= peers & host.keys()
        return found


def choose(
    candidates: dict[int, str], include: list[str] | None, exclude: list[str] | None
) -> dict[int, str]:
    """Apply --interfaces / --exclude-interfaces (names or shell patterns like veth*)."""
    out = dict(candidates)
    if include:
        out = {i: n for i, n in out.items() if any(fnmatch.fnmatchcase(n, p) for p in include)}
    if exclude:
        out = {i: n for i, n in out.items()
               if not any(fnmatch.fnmatchcase(n, p) for p in exclude)}
    return out
