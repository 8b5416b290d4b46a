"""Network namespaces by name (/var/run/netns, as `ip netns` makes them) and inode."""

from __future__ import annotations

import os
from pathlib import Path

from podsight.errors import UserError

NETNS_DIR = Path("/var/run/netns")


def named_netns() -> dict[str, int]:
    """name -> inode of every namespace bind-mounted under /var/run/netns."""
    out: dict[str, int] = {}
    try:
        entries = list(os.scandir(NETNS_DIR))
    except FileNotFoundError:
        return out
    for entry in entries:
        try:
            out[entry.name] = os.stat(entry.path).st_ino
        except OSError:
            continue
    return out


def host_netns() -> int:
    return os.stat("/proc/1/ns/net").st_ino


def parse_netns(value: str) -> int:
    """A ``--netns`` value: an inode number, or a name under /var/run/netns."""
    if value.isdigit():
        inode = int(value)
        if inode <= 0 or inode > 0xFFFFFFFF:
            raise UserError(f"--netns {value}: not a network namespace inode")
        return inode
    path = NETNS_DIR / value
    if "/" in value or not path.exists():
        raise UserError(f"--netns {value}: no such network namespace (see 'ip netns list')")
    return os.stat(path).st_ino
