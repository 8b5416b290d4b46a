"""Tearing the lab down: find everything it made by name and remove it, in a safe order.

``down`` must work on a lab that is up, half-built, or whose state file is
gone, and must leave nothing behind: no namespace, veth, bridge, route,
nftables table, process, sysctl change or file. So it trusts names (every lab
object starts with ``psl``) more than records, and every step tolerates its
object being gone already. Only the saved sysctls need the state file.
"""

from __future__ import annotations

import contextlib

from podsight.lab import dnsserver, nft, servers, system
from podsight.lab.errors import LabError
from podsight.lab.state import LabFiles, State, restore_sysctls
from podsight.lab.topology import NAME_PREFIX


def lab_netns() -> list[str]:
    """Named network namespaces that belong to the lab."""
    return [n for n in system.netns_names() if n.startswith(NAME_PREFIX)]


def lab_links() -> list[str]:
    """Links in the root netns that belong to the lab (veths, the bridge)."""
    return [n for n in system.links() if n.startswith(NAME_PREFIX)]


def anything_present(files: LabFiles) -> bool:
    """True if any part of a lab exists, healthy or not."""
    return bool(
        lab_netns()
        or lab_links()
        or nft.table_exists()
        or nft.table_exists(nft.POLICY_TABLE)
        or files.state.exists()
        or files.inventory.exists()
    )


def teardown(files: LabFiles, state: State | None) -> None:
    """Remove the lab by name; every step tolerates the object being gone already."""
    state = state or {}
    # Identity must stop seeing pods before they start disappearing.
    with contextlib.suppress(FileNotFoundError):
        files.inventory.unlink()
    stop_processes(files, state)
    nft.delete_table(nft.POLICY_TABLE)
    nft.delete_table()
    # Deleting one end of a veth deletes its peer, in whichever netns it is.
    for name in lab_links():
        system.run(["ip", "link", "del", name], check=False)
    for name in lab_netns():
        system.run(["ip", "netns", "del", name], check=False)
    restore_sysctls(state)
    dnsserver.remove_resolv_confs()
    for path in (files.state, files.cert, files.key, files.policies, *files.dns_files):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for log in files.server_logs():
        log.unlink(missing_ok=True)
    leftovers = lab_links() + lab_netns()
    if leftovers:
        raise LabError(f"could not remove {', '.join(leftovers)}")


def stop_processes(files: LabFiles, state: State) -> None:
    """Stop the lab's servers and anything else still running in a lab netns.

    A process left in a deleted netns would keep that netns (and its veth)
    alive, invisible to ``ip netns``; killing by netns catches servers whose
    pids were never recorded as well as leftovers of ``lab exec``, and the
    scan for stray helpers catches those whose netns lost its name.
    """
    pids = servers.recorded_pids(state)
    for ns in lab_netns():
        pids.update(system.netns_pids(ns))
    dns_pid = dnsserver.running_pid(files, state)
    if dns_pid is not None:
        pids.add(dns_pid)
    marker = dnsserver.marker(files)
    pids.update(system.stray_processes(servers.HELPER_MODULES, args=[marker]))
    servers.stop(pids)
