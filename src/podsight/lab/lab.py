"""Build, inspect and tear down the lab: a Kubernetes node simulated with network namespaces.

The root namespace plays the node, each pod is a netns on the node's bridge,
and an "external" netns plays the internet. Nothing the lab builds may route
out of the machine: forwarding is enabled only on lab interfaces and an
nftables guard drops anything crossing between a lab interface and any other.

``up`` and ``down`` are idempotent and safe to interrupt: ``down`` finds what
to remove by name (every lab object starts with ``psl``) rather than trusting
the state file, and ``up`` rebuilds a lab it finds half-built. Both hold a lock
on the state directory so that concurrent callers (two test sessions, a test
and a person) do not interleave.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podsight.errors import UserError
from podsight.lab import dns, inventory, system
from podsight.lab.topology import (
    BRIDGE,
    BRIDGE_MAC,
    DNS_POD,
    DNS_SERVICE,
    EXTERNAL,
    GATEWAY4,
    GATEWAY6,
    NAME_PREFIX,
    NFT_FAMILY,
    NFT_TABLE,
    POD_CIDR,
    POD_PREFIXLEN,
    POD_PREFIXLEN6,
    PODS,
    SERVICES,
    ExternalHost,
    LabPod,
    LabService,
)

DEFAULT_DIR = Path("/run/podsight/lab")
DIR_ENV = "PODSIGHT_LAB_DIR"
WEBSERVER_MODULE = "podsight.lab.webserver"
#: Modules the lab runs inside its namespaces, as ``python -m``.
HELPER_MODULES = (WEBSERVER_MODULE, "podsight.lab.delayline")
EXTERNAL_KEY = "external"  # key of the external host's server in state["pids"]
STATE_VERSION = 1
#: ``ip netns exec NS`` bind-mounts ``ETC_NETNS/NS/resolv.conf`` over ``/etc/resolv.conf``.
ETC_NETNS = Path("/etc/netns")


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


class Lab:
    """The default lab of :mod:`podsight.lab.topology` on this machine.

    A ``Lab`` object is cheap and holds no resources; the kernel objects it
    manages are global, so any number of ``Lab()`` instances see the same lab.
    """

    def __init__(self, state_dir: str | os.PathLike[str] | None = None) -> None:
        self.state_dir = Path(state_dir or os.environ.get(DIR_ENV) or DEFAULT_DIR)
        self.node_name = socket.gethostname()
        self.external: ExternalHost = EXTERNAL
        #: The cluster DNS server; None runs the lab without DNS (``up`` says so).
        self.dnsmasq: str | None = dns.find_dnsmasq()

    # ----------------------------------------------------------------- data

    @property
    def pods(self) -> list[LabPod]:
        return list(PODS)

    @property
    def services(self) -> list[LabService]:
        """The Services running now (none while the lab is down or lacks br_netfilter)."""
        state = self._read_state() or {}
        running = set(state.get("services") or [])
        return [s for s in SERVICES if s.ref in running]

    @property
    def inventory_path(self) -> Path:
        return self.state_dir / "inventory.json"

    @property
    def state_path(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def cert_path(self) -> Path:
        return self.state_dir / "external-cert.pem"

    @property
    def key_path(self) -> Path:
        return self.state_dir / "external-key.pem"

    @property
    def dns_conf_path(self) -> Path:
        return self.state_dir / "dnsmasq.conf"

    @property
    def dns_hosts_path(self) -> Path:
        """Every name the cluster DNS serves, as a hosts file a person can read."""
        return self.state_dir / "dns-hosts"

    @property
    def _dns_files(self) -> list[Path]:
        return [self.dns_conf_path, self.dns_hosts_path, self.state_dir / "dnsmasq.pid",
                self.state_dir / "dnsmasq.log"]  # fmt: skip

    @property
    def _dnsmasq_marker(self) -> str:
        """In the command line of our dnsmasq and no other's."""
        return f"--conf-file={self.dns_conf_path}"

    @property
    def nameserver(self) -> str | None:
        """The address in the pods' ``resolv.conf``; None while DNS is off or the lab down."""
        info = (self._read_state() or {}).get("dns") or {}
        value = info.get("nameserver")
        return value if isinstance(value, str) else None

    @property
    def dns_off_reason(self) -> str | None:
        """Why the running lab has no cluster DNS (dnsmasq not installed), else None."""
        info = (self._read_state() or {}).get("dns") or {}
        value = info.get("off")
        return value if isinstance(value, str) else None

    def resolv_conf_path(self, ref: str) -> Path:
        """The file ``ip netns exec`` shows a pod as its ``/etc/resolv.conf``."""
        return ETC_NETNS / self.pod(ref).netns / "resolv.conf"

    def pod(self, ref: str) -> LabPod:
        """Find a pod by ``name`` or ``namespace/name``, as a person would type it."""
        if "/" in ref:
            matches = [p for p in PODS if p.ref == ref]
        else:
            matches = [p for p in PODS if p.name == ref]
        if not matches:
            known = ", ".join(p.ref for p in PODS)
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
            raise UserError("the lab is not up (run: podsight lab up)") from None
        return data

    # ------------------------------------------------------------- commands

    def exec(
        self, ref: str, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` inside the pod's netns and wait for it (``subprocess.run`` kwargs)."""
        return subprocess.run(self._netns_argv(ref, argv), **kwargs)

    def popen(self, ref: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the pod's netns (``subprocess.Popen`` kwargs)."""
        return subprocess.Popen(self._netns_argv(ref, argv), **kwargs)

    def _netns_argv(self, ref: str, argv: Sequence[str]) -> list[str]:
        pod = self.pod(ref)
        if not argv:
            raise UserError("no command given")
        if not system.netns_exists(pod.netns):
            raise UserError(f"lab pod {pod.ref} is not running (run: podsight lab up)")
        return ["ip", "netns", "exec", pod.netns, *argv]

    # ---------------------------------------------------------- up and down

    def up(self) -> None:
        """Build the lab; a no-op if it is already up and healthy.

        A lab found half-built (a crash, a deleted namespace, a dead server) is
        torn down and rebuilt: rebuilding takes half a second, and repairing
        piecemeal would need a second, subtler code path that is rarely run.
        """
        self._preflight()
        with self._locked():
            if not self.problems():
                return
            if self._anything_present():
                self._teardown(self._read_state())
            state: dict[str, Any] = {
                "version": STATE_VERSION,
                "node": self.node_name,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "pids": {},
                "sysctls": {},
            }
            try:
                self._build(state)
            except BaseException:
                self._teardown(state)
                raise

    def down(self) -> None:
        """Remove everything the lab made; succeeds whether the lab is up, half-built or gone."""
        system.require_root()
        system.require_tool("ip")
        with self._locked():
            self._teardown(self._read_state())

    def is_up(self) -> bool:
        """True if every part of the lab is in place and every server runs."""
        return not self.problems()

    def status(self) -> list[HostStatus]:
        """One row per pod, then one for the external host."""
        root_links = system.links()
        state = self._read_state() or {}
        pids: dict[str, int] = state.get("pids", {})
        rows: list[HostStatus] = []
        for pod in PODS:
            issues = self._host_issues(pod.netns, pod.veth, root_links)
            if pod.http_port and not issues:
                pid = pids.get(pod.ref)
                if pid is None or not system.process_alive(pid, WEBSERVER_MODULE):
                    issues.append(f"http :{pod.http_port} not serving")
            if pod.dns_port and not issues and not self._dns_running(state):
                issues.append(f"dns :{pod.dns_port} not serving")
            rows.append(
                HostStatus(
                    pod.namespace,
                    pod.name,
                    pod.netns,
                    pod.ipv4,
                    pod.ipv6,
                    pod.veth,
                    _state_word(issues, pod.netns, pod.veth, root_links),
                    pod,
                )
            )
        ext = self.external
        issues = self._host_issues(ext.netns, ext.link, root_links)
        if not issues:
            pid = pids.get(EXTERNAL_KEY)
            if pid is None or not system.process_alive(pid, WEBSERVER_MODULE):
                issues.append("web server not serving")
        rows.append(
            HostStatus(
                "-",
                "(external)",
                ext.netns,
                ext.web,
                "-",
                ext.link,
                _state_word(issues, ext.netns, ext.link, root_links),
            )
        )
        return rows

    # ------------------------------------------------------------ internals

    def _preflight(self) -> None:
        system.require_root()
        for tool in ("ip", "nft", "sysctl", "openssl", "setsid"):
            system.require_tool(tool)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_state(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def _save_state(self, state: dict[str, Any]) -> None:
        system.atomic_write(self.state_path, json.dumps(state, indent=2) + "\n")

    def _nft_table_exists(self) -> bool:
        proc = system.run(["nft", "list", "table", NFT_FAMILY, NFT_TABLE], check=False)
        return proc.returncode == 0

    def _lab_netns(self) -> list[str]:
        return [n for n in system.netns_names() if n.startswith(NAME_PREFIX)]

    def _lab_links(self) -> list[str]:
        return [n for n in system.links() if n.startswith(NAME_PREFIX)]

    def _anything_present(self) -> bool:
        return bool(
            self._lab_netns()
            or self._lab_links()
            or self._nft_table_exists()
            or self.state_path.exists()
            or self.inventory_path.exists()
        )

    def _host_issues(
        self, netns: str, link: str, root_links: dict[str, dict[str, Any]]
    ) -> list[str]:
        issues = []
        if not system.netns_exists(netns):
            issues.append(f"netns {netns} missing")
        info = root_links.get(link)
        if info is None:
            issues.append(f"link {link} missing")
        elif "LOWER_UP" not in info.get("flags", []):
            issues.append(f"link {link} down")
        return issues

    def problems(self) -> list[str]:
        """What is missing or broken, in words; empty when the lab is up."""
        problems: list[str] = []
        state = self._read_state()
        if state is None:
            problems.append(f"no state file {self.state_path}")
        if not self.inventory_path.exists():
            problems.append(f"no inventory {self.inventory_path}")
        root_links = system.links()
        bridge = root_links.get(BRIDGE)
        if bridge is None or "UP" not in bridge.get("flags", []):
            problems.append(f"bridge {BRIDGE} missing or down")
        for pod in PODS:
            problems += self._host_issues(pod.netns, pod.veth, root_links)
            if (root_links.get(pod.veth) or {}).get("master", BRIDGE) != BRIDGE:
                problems.append(f"{pod.veth} not on {BRIDGE}")
        problems += self._host_issues(self.external.netns, self.external.link, root_links)
        if not self._nft_table_exists():
            problems.append(f"nft table {NFT_FAMILY} {NFT_TABLE} missing")
        if state is not None:
            expected = [EXTERNAL_KEY] + [p.ref for p in PODS if p.http_port]
            pids: dict[str, int] = state.get("pids", {})
            for key in expected:
                pid = pids.get(key)
                if pid is None or not system.process_alive(pid, WEBSERVER_MODULE):
                    problems.append(f"web server of {key} not running")
            problems += self._dns_problems(state)
        return problems

    def _dns_running(self, state: dict[str, Any]) -> bool:
        """True if DNS is on and its server runs; also True while DNS is (rightly) off."""
        info = state.get("dns") or {}
        if "off" in info:
            return True
        pid = info.get("pid")
        return isinstance(pid, int) and system.process_alive(pid, self._dnsmasq_marker)

    def _dns_problems(self, state: dict[str, Any]) -> list[str]:
        info = state.get("dns")
        if not isinstance(info, dict):
            return ["no cluster DNS state"]
        if "off" in info:
            # Installed since: a rebuild turns DNS on.
            return ["cluster DNS is off but dnsmasq is installed now"] if self.dnsmasq else []
        problems = []
        if not self._dns_running(state):
            problems.append(f"dns server of {DNS_POD} not running")
        missing = [p.netns for p in PODS if not (ETC_NETNS / p.netns / "resolv.conf").exists()]
        if missing:
            problems.append(f"no {ETC_NETNS}/<netns>/resolv.conf for {', '.join(missing)}")
        return problems

    # ................................................................ build

    def _build(self, state: dict[str, Any]) -> None:
        self._check_route_conflicts()
        services = list(SERVICES) if self._enable_bridge_netfilter(state) else []
        dns_off = None if self.dnsmasq else f"dnsmasq not installed ({dns.INSTALL_HINT})"
        if dns_off:
            services = [s for s in services if s.ref != DNS_SERVICE]
            state["dns"] = {"off": dns_off}
        state["services"] = [s.ref for s in services]
        # The guard goes in first: forwarding is never on without it.
        system.run(["nft", "-f", "-"], input=self._nft_ruleset(services))
        self._build_bridge(state)
        for pod in PODS:
            self._build_pod(pod)
        self._build_external(state)
        self._make_certificate()
        self._start_servers(state)
        if not dns_off:
            self._start_dns(state, services)
        self._save_state(state)
        not_ready = {DNS_POD: f"cluster DNS is off: {dns_off}"} if dns_off else None
        system.atomic_write(
            self.inventory_path,
            inventory.dumps(inventory.build(PODS, services, self.node_name, not_ready)),
        )

    def _enable_bridge_netfilter(self, state: dict[str, Any]) -> bool:
        """Make bridged pod traffic pass the IP hooks, as kube-proxy requires; False if unable.

        Pods share one bridge, so the reply from a Service's backend pod goes
        straight back over the bridge. Only with ``br_netfilter`` does that
        reply meet conntrack and get its address translated back; without it
        the client sees a reply from the wrong address. Where the module is
        not loaded the lab runs without Services rather than load it: loading
        changes how every bridge on the machine filters (Docker's included).
        """
        key = "net.bridge.bridge-nf-call-iptables"
        value = system.read_sysctl(key)
        if value is None:
            return False
        if value != "1":
            self._set_sysctl(state, key, "1")
        return True

    def _check_route_conflicts(self) -> None:
        """Refuse to shadow a real network that uses one of the lab's ranges.

        A route at least as specific as a lab range on a non-lab interface
        means this machine really talks to those addresses (a VPN, a real
        cluster); taking them over would break that and confuse the lab.
        """
        ext = self.external
        lab_nets = [
            ipaddress.ip_network(f"{GATEWAY4}/{POD_PREFIXLEN}", strict=False),
            ipaddress.ip_network(f"{GATEWAY6}/{POD_PREFIXLEN6}", strict=False),
            ipaddress.ip_network(f"{ext.node_addr}/{ext.prefixlen}", strict=False),
            *(ipaddress.ip_network(n) for n in ext.routed_nets),
            *(ipaddress.ip_network(f"{s.cluster_ip}/32") for s in SERVICES),
        ]
        routes = system.ip_json(["-4", "route", "show"]) + system.ip_json(["-6", "route", "show"])
        for route in routes:
            dst, dev = str(route.get("dst", "default")), str(route.get("dev", ""))
            if dst == "default" or dev.startswith(NAME_PREFIX):
                continue
            try:
                net = ipaddress.ip_network(dst, strict=False)
            except ValueError:
                continue
            for lab_net in lab_nets:
                if (
                    net.version == lab_net.version
                    and net.overlaps(lab_net)
                    and net.prefixlen >= lab_net.prefixlen
                ):
                    raise UserError(
                        f"{dst} is already routed via {dev or '?'}; the lab needs {lab_net}"
                    )

    def _nft_ruleset(self, services: Sequence[LabService]) -> str:
        """The guard (always) and the Services' DNAT, as one atomic nft transaction.

        Service DNAT happens on the node as kube-proxy does it. A pod that
        reaches its own Service would get a packet from its own address, which
        it drops as martian; like kube-proxy, the hairpin rule masquerades
        exactly that case (source and destination the same endpoint) and no
        other, so backends see the real client address.
        """
        dnat = "".join(
            f"        ip daddr {s.cluster_ip} {proto.lower()} dport {s.port} "
            f"dnat ip to {self.pod(s.target).ipv4}:{s.target_port}\n"
            for s in services
            for proto in s.protocols
        )
        hairpin = "".join(
            f"        ip saddr {ep} ip daddr {ep} {proto.lower()} dport {s.target_port}"
            " ct status dnat masquerade\n"
            for s in services
            for proto in s.protocols
            for ep in [self.pod(s.target).ipv4]
        )
        prefix = f'"{NAME_PREFIX}*"'
        return (
            f"table {NFT_FAMILY} {NFT_TABLE} {{\n"
            "    chain guard {\n"
            "        type filter hook forward priority filter - 10; policy accept;\n"
            f"        iifname {prefix} oifname != {prefix} counter drop"
            ' comment "lab traffic never leaves the machine"\n'
            f"        iifname != {prefix} oifname {prefix} counter drop"
            ' comment "outside traffic never enters the lab"\n'
            "    }\n"
            "    chain services {\n"
            "        type nat hook prerouting priority dstnat; policy accept;\n"
            f"        iifname != {prefix} return\n"
            f"{dnat}"
            "    }\n"
            "    chain services_from_node {\n"
            "        type nat hook output priority -100; policy accept;\n"
            f"{dnat}"
            "    }\n"
            "    chain hairpin {\n"
            "        type nat hook postrouting priority srcnat; policy accept;\n"
            f"{hairpin}"
            "    }\n"
            "}\n"
        )

    def _set_sysctl(self, state: dict[str, Any], key: str, value: str) -> None:
        """Set a root-netns sysctl, remembering the old value for ``down``."""
        saved: dict[str, str | None] = state["sysctls"]
        if key not in saved:
            saved[key] = system.read_sysctl(key)
            self._save_state(state)
        system.write_sysctl(key, value)

    def _build_bridge(self, state: dict[str, Any]) -> None:
        ip = system.run
        ip(["ip", "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge",
            "stp_state", "0", "forward_delay", "0"])  # fmt: skip
        ip(["ip", "addr", "add", f"{GATEWAY4}/{POD_PREFIXLEN}", "dev", BRIDGE])
        ip(["ip", "-6", "addr", "add", f"{GATEWAY6}/{POD_PREFIXLEN6}", "dev", BRIDGE, "nodad"])
        ip(["ip", "link", "set", BRIDGE, "up"])
        # Per-interface forwarding: the global ip_forward stays as it was.
        self._set_sysctl(state, f"net.ipv4.conf.{BRIDGE}.forwarding", "1")
        # Pods on one bridge reach each other directly; ICMP redirects are noise.
        self._set_sysctl(state, f"net.ipv4.conf.{BRIDGE}.send_redirects", "0")

    def _build_pod(self, pod: LabPod) -> None:
        ip = system.run
        ns = pod.netns
        ip(["ip", "netns", "add", ns])
        ip(["ip", "link", "add", pod.veth, "type", "veth",
            "peer", "name", pod.ifname, "address", pod.mac, "netns", ns])  # fmt: skip
        ip(["ip", "link", "set", pod.veth, "master", BRIDGE, "up"])
        # As the bridge CNI's hairpinMode: a pod reaching its own Service gets
        # the packet back through the port it came in on.
        ip(["ip", "link", "set", pod.veth, "type", "bridge_slave", "hairpin", "on"])
        ip(["ip", "-n", ns, "link", "set", "lo", "up"])
        ip(["ip", "-n", ns, "addr", "add", f"{pod.ipv4}/{POD_PREFIXLEN}", "dev", pod.ifname])
        ip(["ip", "-n", ns, "-6", "addr", "add", f"{pod.ipv6}/{POD_PREFIXLEN6}",
            "dev", pod.ifname, "nodad"])  # fmt: skip
        ip(["ip", "-n", ns, "link", "set", pod.ifname, "up"])
        ip(["ip", "-n", ns, "route", "add", "default", "via", GATEWAY4])
        ip(["ip", "-n", ns, "-6", "route", "add", "default", "via", GATEWAY6])

    def _build_external(self, state: dict[str, Any]) -> None:
        ip = system.run
        ext = self.external
        ns = ext.netns
        ip(["ip", "netns", "add", ns])
        ip(["ip", "link", "add", ext.link, "type", "veth", "peer", "name", "eth0", "netns", ns])
        ip(["ip", "addr", "add", f"{ext.node_addr}/{ext.prefixlen}", "dev", ext.link])
        ip(["ip", "link", "set", ext.link, "up"])
        ip(["ip", "-n", ns, "link", "set", "lo", "up"])
        ip(["ip", "-n", ns, "addr", "add", f"{ext.web}/32", "dev", "lo"])
        ip(["ip", "-n", ns, "addr", "add", f"{ext.addr}/{ext.prefixlen}", "dev", "eth0"])
        ip(["ip", "-n", ns, "link", "set", "eth0", "up"])
        ip(["ip", "-n", ns, "route", "add", POD_CIDR, "via", ext.node_addr])
        ip(["ip", "-n", ns, "route", "add", "unreachable", ext.unreachable_net])
        ip(["ip", "-n", ns, "route", "add", "blackhole", ext.blackhole_net])
        # Inside the external netns (ours alone, gone at down, so nothing to save):
        # the kernel answers for an `unreachable` route only on a forwarding
        # interface, and without rate limits so every test gets its ICMP at once.
        system.write_sysctl("net.ipv4.conf.eth0.forwarding", "1", netns=ns)
        system.write_sysctl("net.ipv4.icmp_ratelimit", "0", netns=ns)
        self._set_sysctl(state, f"net.ipv4.conf.{ext.link}.forwarding", "1")
        for net in ext.routed_nets:
            ip(["ip", "route", "add", net, "via", ext.addr, "dev", ext.link])

    def _make_certificate(self) -> None:
        """A fresh self-signed certificate for the external site (clients use ``curl -k``)."""
        ext = self.external
        system.run([
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(self.key_path), "-out", str(self.cert_path), "-days", "30",
            "-subj", f"/CN={ext.web}", "-addext", f"subjectAltName=IP:{ext.web}",
        ])  # fmt: skip
        self.key_path.chmod(0o600)

    def _start_servers(self, state: dict[str, Any]) -> None:
        ext = self.external
        pending = [
            self._spawn_server(
                EXTERNAL_KEY,
                ext.netns,
                [
                    "--name", "external",
                    "--http", f"{ext.web}:{ext.http_port}",
                    "--https", f"{ext.web}:{ext.https_port}",
                    "--cert", str(self.cert_path),
                    "--key", str(self.key_path),
                ],
            )
        ]  # fmt: skip
        for pod in PODS:
            if pod.http_port:
                pending.append(
                    self._spawn_server(
                        pod.ref, pod.netns, ["--name", pod.ref, "--http", str(pod.http_port)]
                    )
                )
        try:
            for key, fd, log in pending:
                state["pids"][key] = self._await_ready(key, fd, log)
                self._save_state(state)
        finally:
            for _, fd, _ in pending:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _start_dns(self, state: dict[str, Any], services: Sequence[LabService]) -> None:
        """Start dnsmasq in the DNS pod and point every pod's ``resolv.conf`` at it.

        dnsmasq daemonizes itself, and its first process exits only once the
        daemon listens (or with the reason it cannot): ready when ``run`` returns.
        Pods use the kube-dns Service when it runs, the DNS pod's own address
        when the lab has no Services.
        """
        assert self.dnsmasq is not None
        pod = self.pod(DNS_POD)
        port = pod.dns_port or 53
        pid_path = self.state_dir / "dnsmasq.pid"
        system.atomic_write(self.dns_hosts_path, dns.hosts_file(PODS, services))
        system.atomic_write(
            self.dns_conf_path,
            dns.dnsmasq_conf(str(self.dns_hosts_path), str(pid_path),
                             str(self.state_dir / "dnsmasq.log"), port),
        )  # fmt: skip
        pid_path.unlink(missing_ok=True)
        system.run(["ip", "netns", "exec", pod.netns, self.dnsmasq, self._dnsmasq_marker])
        try:
            pid = int(pid_path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            why = f"no pid in {pid_path}"
            raise UserError(f"dns server of {DNS_POD} did not start: {why}") from None
        nameserver = next((s.cluster_ip for s in services if s.ref == DNS_SERVICE), pod.ipv4)
        state["dns"] = {"server": "dnsmasq", "pid": pid, "nameserver": nameserver}
        self._save_state(state)
        for each in PODS:
            system.atomic_write(ETC_NETNS / each.netns / "resolv.conf",
                                dns.resolv_conf(each, nameserver))  # fmt: skip

    def _spawn_server(self, key: str, netns: str, args: list[str]) -> tuple[str, int, Path]:
        """Start a web server detached (``setsid -f``) and return a pipe it reports on.

        Detached, the server is nobody's child: no zombie in a long test
        session, and it survives the ``podsight lab up`` that started it.
        """
        log = self.state_dir / f"server-{key.replace('/', '-')}.log"
        read_fd, write_fd = os.pipe()
        try:
            with open(log, "ab") as out:
                proc = subprocess.Popen(
                    ["setsid", "-f", "ip", "netns", "exec", netns,
                     system.python(), "-m", WEBSERVER_MODULE, *args,
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

    def _await_ready(self, key: str, fd: int, log: Path, timeout: float = 15.0) -> int:
        data = system.read_line(fd, timeout)
        line = data.decode(errors="replace").strip()
        if line.startswith("ready "):
            return int(line.split()[1])
        try:
            lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        except FileNotFoundError:
            lines = []
        why = lines[-1].strip() if lines else "no output"
        raise UserError(f"web server of {key} did not start: {why}")

    # ............................................................. teardown

    def _teardown(self, state: dict[str, Any] | None) -> None:
        """Remove the lab by name; every step tolerates the object being gone already."""
        state = state or {}
        # Identity must stop seeing pods before they start disappearing.
        with contextlib.suppress(FileNotFoundError):
            self.inventory_path.unlink()
        self._stop_processes(state)
        if self._nft_table_exists():
            system.run(["nft", "delete", "table", NFT_FAMILY, NFT_TABLE], check=False)
        # Deleting one end of a veth deletes its peer, in whichever netns it is.
        for name in self._lab_links():
            system.run(["ip", "link", "del", name], check=False)
        for name in self._lab_netns():
            system.run(["ip", "netns", "del", name], check=False)
        self._restore_sysctls(state)
        self._remove_resolv_confs()
        for path in (self.state_path, self.cert_path, self.key_path, *self._dns_files):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for log in self.state_dir.glob("server-*.log"):
            log.unlink(missing_ok=True)
        leftovers = self._lab_links() + self._lab_netns()
        if leftovers:
            raise UserError(f"could not remove {', '.join(leftovers)}")

    def _stop_processes(self, state: dict[str, Any]) -> None:
        """Stop the lab's servers and anything else still running in a lab netns.

        A process left in a deleted netns would keep that netns (and its veth)
        alive, invisible to ``ip netns``; killing by netns catches servers whose
        pids were never recorded as well as leftovers of ``lab exec``, and the
        scan for stray helpers catches those whose netns lost its name.
        """
        pids: set[int] = set()
        for pid in (state.get("pids") or {}).values():
            if isinstance(pid, int) and system.process_alive(pid, WEBSERVER_MODULE):
                pids.add(pid)
        for ns in self._lab_netns():
            pids.update(system.netns_pids(ns))
        dns_pid = (state.get("dns") or {}).get("pid")
        if isinstance(dns_pid, int) and system.process_alive(dns_pid, self._dnsmasq_marker):
            pids.add(dns_pid)
        pids.update(system.stray_processes(HELPER_MODULES, args=[self._dnsmasq_marker]))
        pids.discard(os.getpid())
        if not pids:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                _reap_children(pids)
                pids = {p for p in pids if system.process_alive(p, "")}
                if not pids:
                    return
                time.sleep(0.02)

    def _remove_resolv_confs(self) -> None:
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

    def _restore_sysctls(self, state: dict[str, Any]) -> None:
        saved: dict[str, str | None] = state.get("sysctls") or {}
        for key, old in saved.items():
            # Keys of lab interfaces vanished with them; only restore what is left.
            if old is not None and system.read_sysctl(key) not in (None, old):
                system.write_sysctl(key, old)


def _reap_children(pids: set[int]) -> None:
    """Collect zombies among our own children (e.g. ``lab.popen`` leftovers)."""
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def _state_word(
    issues: list[str], netns: str, link: str, root_links: dict[str, dict[str, Any]]
) -> str:
    if not issues:
        return "Running"
    if not system.netns_exists(netns) and link not in root_links:
        return "Absent"
    return "Degraded: " + "; ".join(issues)
