"""The lab as one object: what callers (the CLI, the demo, tests) use to build and use it.

The root namespace plays the node, each pod is a netns on the node's bridge,
and an "external" netns plays the internet. Nothing the lab builds may route
out of the machine: forwarding is enabled only on lab interfaces and an
nftables guard drops anything crossing between a lab interface and any other.

``up`` and ``down`` are idempotent and safe to interrupt: ``down`` finds what
to remove by name (every lab object starts with ``psl``) rather than trusting
the state file, and ``up`` rebuilds a lab it finds half-built. Both hold a lock
on the state directory so that concurrent callers (two test sessions, a test
and a person) do not interleave.

This module only decides the order of things; each part lives in its own
module: :mod:`~podsight.lab.state` (files, lock), :mod:`~podsight.lab.nft`
(guard, Services), :mod:`~podsight.lab.build` (bridge, pods, external host),
:mod:`~podsight.lab.servers` (processes), :mod:`~podsight.lab.dnsserver`
(cluster DNS), :mod:`~podsight.lab.health` (status) and
:mod:`~podsight.lab.teardown`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podsight.errors import UserError
from podsight.lab import build, dns, dnsserver, health, inventory, nft, servers, system, teardown
from podsight.lab.command import check_command
from podsight.lab.errors import LabError
from podsight.lab.health import HostStatus
from podsight.lab.state import LabFiles, State, new_state
from podsight.lab.topology import (
    DNS_POD,
    DNS_SERVICE,
    EXTERNAL,
    PODS,
    SERVICES,
    ExternalHost,
    LabPod,
    LabService,
)

if TYPE_CHECKING:
    from podsight.lab.topologyfile import Topology

#: Why a lab built from a file runs without the default lab's Services and DNS.
TOPOLOGY_DNS_OFF = "a --topology lab has no Services and no cluster DNS"


class Lab:
    """The default lab of :mod:`podsight.lab.topology` on this machine.

    A ``Lab`` object is cheap and holds no resources; the kernel objects it
    manages are global, so any number of ``Lab()`` instances see the same lab.
    """

    def __init__(self, state_dir: str | os.PathLike[str] | None = None) -> None:
        self.files = LabFiles.at(state_dir)
        self.state_dir = self.files.state_dir
        self.node_name = socket.gethostname()
        self.external: ExternalHost = EXTERNAL
        #: The cluster DNS server; None runs the lab without DNS (``up`` says so).
        self.dnsmasq: str | None = dns.find_dnsmasq()

    # ----------------------------------------------------------------- data

    @property
    def pods(self) -> list[LabPod]:
        """The running lab's pods: those of its ``--topology`` file, else the default ones."""
        topology = self.topology
        return list(topology.pods) if topology is not None else list(PODS)

    @property
    def topology(self) -> Topology | None:
        """The file the running lab was built from (``lab up --topology``), else None."""
        from podsight.lab.topologyfile import Topology

        data = (self.files.read_state() or {}).get("topology")
        return Topology.from_state(data) if isinstance(data, dict) else None

    @property
    def services(self) -> list[LabService]:
        """The Services running now (none while the lab is down or lacks br_netfilter)."""
        state = self.files.read_state() or {}
        running = set(state.get("services") or [])
        return [s for s in SERVICES if s.ref in running]

    @property
    def inventory_path(self) -> Path:
        return self.files.inventory

    @property
    def state_path(self) -> Path:
        return self.files.state

    @property
    def cert_path(self) -> Path:
        return self.files.cert

    @property
    def key_path(self) -> Path:
        return self.files.key

    @property
    def dns_conf_path(self) -> Path:
        return self.files.dns_conf

    @property
    def dns_hosts_path(self) -> Path:
        """Every name the cluster DNS serves, as a hosts file a person can read."""
        return self.files.dns_hosts

    @property
    def nameserver(self) -> str | None:
        """The address in the pods' ``resolv.conf``; None while DNS is off or the lab down."""
        info = (self.files.read_state() or {}).get("dns") or {}
        value = info.get("nameserver")
        return value if isinstance(value, str) else None

    @property
    def dns_off_reason(self) -> str | None:
        """Why the running lab has no cluster DNS (dnsmasq not installed), else None."""
        info = (self.files.read_state() or {}).get("dns") or {}
        value = info.get("off")
        return value if isinstance(value, str) else None

    def resolv_conf_path(self, ref: str) -> Path:
        """The file ``ip netns exec`` shows a pod as its ``/etc/resolv.conf``."""
        return dnsserver.resolv_conf_path(self.pod(ref).netns)

    def pod(self, ref: str) -> LabPod:
        """Find a pod by ``name`` or ``namespace/name``, as a person would type it."""
        pods = self.pods
        if "/" in ref:
            matches = [p for p in pods if p.ref == ref]
        else:
            matches = [p for p in pods if p.name == ref]
        if not matches:
            known = ", ".join(p.ref for p in pods)
            raise UserError(f"unknown lab pod {ref!r} (lab pods: {known})")
        if len(matches) > 1:
            refs = ", ".join(p.ref for p in matches)
            raise UserError(f"lab pod name {ref!r} is ambiguous ({refs}): use namespace/name")
        return matches[0]

    def inventory(self) -> dict[str, Any]:
        """The inventory as written by ``up`` (a Kubernetes ``v1 List``)."""
        try:
            data: dict[str, Any] = json.loads(self.inventory_path.read_text())
        except FileNotFoundError:
            raise LabError("the lab is not up (run: podsight lab up)") from None
        return data

    # ------------------------------------------------------------- commands

    def exec(
        self, ref: str, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` inside the pod's netns and wait for it (``subprocess.run`` kwargs).

        A command that cannot start raises :class:`~podsight.lab.errors.CommandNotFound`
        or :class:`~podsight.lab.errors.CommandNotExecutable`, as ``subprocess`` would.
        """
        return subprocess.run(self._netns_argv(ref, argv, kwargs), **kwargs)

    def popen(self, ref: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the pod's netns (``subprocess.Popen`` kwargs)."""
        return subprocess.Popen(self._netns_argv(ref, argv, kwargs), **kwargs)

    def _netns_argv(
        self, ref: str, argv: Sequence[str], kwargs: Mapping[str, Any] | None = None
    ) -> list[str]:
        pod = self.pod(ref)
        if not argv:
            raise UserError("no command given")
        if not system.netns_exists(pod.netns):
            raise LabError(f"lab pod {pod.ref} is not running (run: podsight lab up)")
        kwargs = kwargs or {}
        check_command(argv[0], kwargs.get("env"), kwargs.get("cwd"))
        return ["ip", "netns", "exec", pod.netns, *argv]

    # ---------------------------------------------------------- up and down

    def up(self, topology: Topology | None = None) -> None:
        """Build the lab (the default one, or ``topology``'s pods); a no-op if that lab is
        already up and healthy.

        A lab found half-built (a crash, a deleted namespace, a dead server), or built from
        another topology, is torn down and rebuilt: rebuilding takes half a second, and
        repairing piecemeal would need a second, subtler code path that is rarely run.
        """
        self._preflight()
        with self.files.locked():
            if not self.problems() and self.built_from(topology):
                return
            if teardown.anything_present(self.files):
                teardown.teardown(self.files, self.files.read_state())
            state = new_state(self.node_name)
            if topology is not None:
                state["topology"] = topology.to_state()
            try:
                self._build(state, topology)
            except BaseException:
                teardown.teardown(self.files, state)
                raise

    def down(self) -> None:
        """Remove everything the lab made; succeeds whether the lab is up, half-built or gone."""
        system.require_root()
        system.require_tool("ip")
        with self.files.locked():
            teardown.teardown(self.files, self.files.read_state())

    def built_from(self, topology: Topology | None) -> bool:
        """Is the lab on record the one ``up(topology)`` builds (same file content)?"""
        def pods_of(data: Any) -> Any:  # where the file was read from does not matter
            return {k: v for k, v in data.items() if k != "source"} if data else None

        wanted = topology.to_state() if topology is not None else None
        return bool(pods_of((self.files.read_state() or {}).get("topology")) == pods_of(wanted))

    def is_up(self) -> bool:
        """True if every part of the lab is in place and every server runs."""
        return not self.problems()

    def status(self) -> list[HostStatus]:
        """One row per pod, then one for the external host."""
        return health.status(self.files, self.external, self.pods)

    def problems(self) -> list[str]:
        """What is missing or broken, in words; empty when the lab is up."""
        topology = self.topology
        # A --topology lab runs without DNS by design: dnsmasq being installed is no reason
        # to rebuild it.
        installed = self.dnsmasq is not None and topology is None
        return health.problems(self.files, self.external, installed, self.pods)

    # ------------------------------------------------------------ internals

    def _preflight(self) -> None:
        system.require_root()
        for tool in ("ip", "nft", "sysctl", "openssl", "setsid"):
            system.require_tool(tool)

    def _build(self, state: State, topology: Topology | None = None) -> None:
        files, ext = self.files, self.external
        build.check_route_conflicts(ext)
        pods = list(topology.pods) if topology is not None else list(PODS)
        services = list(SERVICES) if nft.enable_bridge_netfilter(files, state) else []
        dns_off = dnsserver.off_reason(self.dnsmasq)
        if topology is not None:
            services, dns_off = [], TOPOLOGY_DNS_OFF
        if dns_off:
            services = [s for s in services if s.ref != DNS_SERVICE]
            state["dns"] = {"off": dns_off}
        state["services"] = [s.ref for s in services]
        # The guard goes in first: forwarding is never on without it.
        nft.install(services)
        build.build_bridge(files, state)
        for pod in pods:
            build.build_pod(pod)
        build.build_external(ext, files, state)
        build.make_certificate(ext, files)
        servers.start_servers(ext, files, state, pods)
        if self.dnsmasq and topology is None:
            dnsserver.start(self.dnsmasq, files, state, services)
        files.save_state(state)
        not_ready = {DNS_POD: f"cluster DNS is off: {dns_off}"} \
            if dns_off and topology is None else None
        namespaces = topology.namespaces if topology is not None else None
        system.atomic_write(
            files.inventory,
            inventory.dumps(inventory.build(pods, services, self.node_name, not_ready,
                                            namespaces)),
        )
