"""Network namespaces by name (/var/run/netns, as `ip netns` makes them) and inode."""

from __future__ import annotations

from podsight.identity.history import ChangeFeed, Timeline
from podsight.net.netns import NETNS_DIR, host_netns, named_netns, parse_netns

__all__ = ["NETNS_DIR", "NetnsAddresses", "host_netns", "named_netns", "parse_netns"]


class NetnsAddresses:
    """Which named network namespace holds which address.

    CNI plugins (and `podsight lab`) bind-mount every pod's namespace under
    /var/run/netns, so the namespace of a Kubernetes pod is the one holding
    its pod IP. Namespaces are listed on every refresh (one readdir) and
    their addresses read (``ip -n NAME addr``) only when the list changes,
    or every ``rescan`` seconds since CNI assigns addresses after creating
    the namespace. A namespace whose addresses change (a freed inode number is
    reused for a new pod's namespace) keeps its past: :meth:`ips_at`.
    """

    def __init__(self, rescan: float = 10.0) -> None:
        self.by_ip: dict[str, int] = {}
        self.ips_by_netns: dict[int, tuple[str, ...]] = {}
        self._seen: dict[str, int] = {}
        self._rescan = rescan
        self._next_scan = 0.0
        #: Every namespace whose addresses changed, for resolvers to drop what they derived.
        self.changes = ChangeFeed()
        self._past: Timeline[int, tuple[str, ...]] = Timeline(self.changes, "netns")
        self._past.recording = False  # the first scan is the initial state

    def ips_at(self, netns: int, at_ns: int) -> tuple[int, tuple[str, ...]]:
        """``(since, addresses)`` of a namespace at ``at_ns`` (boot ns)."""
        since, ips = self._past.held(netns, self.ips_by_netns.get(netns), at_ns)
        return since, ips or ()

    def refresh(self) -> bool:
        """Re-read when namespaces changed (or periodically); True when the mapping changed."""
        import time

        current = named_netns()
        now = time.monotonic()
        if current == self._seen and now < self._next_scan:
            return False
        self._seen = current
        self._next_scan = now + self._rescan
        ips_by_netns = {inode: _addresses_in(name) for name, inode in current.items()}
        if ips_by_netns == self.ips_by_netns:
            self._past.recording = True
            return False
        old = self.ips_by_netns
        for inode in old.keys() | ips_by_netns.keys():
            if old.get(inode) != ips_by_netns.get(inode):
                self._past.changed(inode, old.get(inode), ips_by_netns.get(inode))
        self._past.recording = True
        self.ips_by_netns = ips_by_netns
        self.by_ip = {ip: inode for inode, ips in ips_by_netns.items() for ip in ips}
        return True


def _addresses_in(name: str) -> tuple[str, ...]:
    import json
    import subprocess

    try:
        out = subprocess.run(["ip", "-n", name, "-j", "addr", "show"], capture_output=True,
                             text=True, timeout=5, check=False).stdout
        links = json.loads(out or "[]")
    except (OSError, ValueError, subprocess.SubprocessError):
        return ()
    return tuple(sorted(a["local"] for link in links for a in link.get("addr_info", [])
                        if "local" in a and a.get("scope") != "host"))
