"""The lab's cluster DNS: what kube-dns looks like to pods, served by ``dnsmasq``.

The pod ``kube-system/coredns`` runs ``dnsmasq`` (Debian ``dnsmasq-base``) on
UDP and TCP port 53, behind the Service ``kube-system/kube-dns`` at
10.96.0.53, and every lab pod's ``resolv.conf`` points there with the search
list and ``ndots:5`` kubelet writes. It answers from one hosts file and never
forwards: no DHCP, no upstream, no ``/etc/hosts``.

Names served (all under ``cluster.local``, TTL 5 s, answers with the AA bit)::

    <service>.<namespace>.svc.cluster.local   A     ClusterIP of each running Service
    <pod>.<namespace>.pod.cluster.local       A     pod IPv4 (lab-only: by pod name)
                                              AAAA  pod IPv6
    <a-b-c-d>.<namespace>.pod.cluster.local   A     pod IPv4 (the Kubernetes form)
    <x-y--z>.<namespace>.pod.cluster.local    AAAA  pod IPv6 (the Kubernetes form)
    reverse (PTR) of those addresses          the first name of its line

Every other name, under any domain, gets NXDOMAIN (``local=/#/``); nothing
is ever REFUSED or forwarded. ``dnsmasq`` answers NOERROR with no records for
a type a known name lacks (AAAA of a Service), as CoreDNS does; unlike
CoreDNS its NXDOMAIN carries no AA bit and no SOA. (dnsmasq's real
authoritative mode would add both, but it REFUSES every name outside its
zones, and pods must see NXDOMAIN for those.)

:mod:`podsight.lab.dnsquery` is a standard-library DNS client to ask it with.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence

from podsight.lab.topology import CLUSTER_DOMAIN, LabPod, LabService

#: Overrides where ``dnsmasq`` is looked for; a path that does not exist turns DNS off.
DNSMASQ_ENV = "PODSIGHT_LAB_DNSMASQ"
INSTALL_HINT = "apt-get install -y dnsmasq-base"
TTL = 5  # seconds, as CoreDNS's kubernetes plugin answers
#: What kubelet writes for a ClusterFirst pod (besides the search list).
OPTIONS = "ndots:5"


def find_dnsmasq() -> str | None:
    """The dnsmasq binary, or None when it is not installed (the lab then runs without DNS)."""
    override = os.environ.get(DNSMASQ_ENV)
    if override is not None:
        return override if os.access(override, os.X_OK) else None
    # sbin is not on every PATH (sudo keeps it; a user's shell may not).
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which("dnsmasq", path=path)


# ------------------------------------------------------------------ the zone


def service_name(service: LabService) -> str:
    return f"{service.name}.{service.namespace}.svc.{CLUSTER_DOMAIN}"


def pod_name(pod: LabPod) -> str:
    return f"{pod.name}.{pod.namespace}.pod.{CLUSTER_DOMAIN}"


def pod_ip_name(pod: LabPod, addr: str) -> str:
    """``10-244-0-2.default.pod.cluster.local``, the name Kubernetes gives a pod IP."""
    dashed = addr.replace(".", "-").replace(":", "-")
    return f"{dashed}.{pod.namespace}.pod.{CLUSTER_DOMAIN}"


def records(pods: Sequence[LabPod], services: Sequence[LabService]) -> list[tuple[str, list[str]]]:
    """(address, names) pairs, Services first; a PTR answers with the first name."""
    rows = [(s.cluster_ip, [service_name(s)]) for s in services]
    for pod in pods:
        for addr in (pod.ipv4, pod.ipv6):
            rows.append((addr, [pod_name(pod), pod_ip_name(pod, addr)]))
    return rows


def hosts_file(pods: Sequence[LabPod], services: Sequence[LabService]) -> str:
    lines = ["# podsight lab cluster DNS: written by `podsight lab up`, removed by `down`"]
    lines += [f"{addr}\t{' '.join(names)}" for addr, names in records(pods, services)]
    return "\n".join(lines) + "\n"


def dnsmasq_conf(hosts: str, pid_file: str, log_file: str, port: int) -> str:
    """Authoritative for the hosts file, NXDOMAIN for everything else, nothing else at all."""
    return "\n".join([
        "# podsight lab cluster DNS: written by `podsight lab up`, removed by `down`",
        f"port={port}",
        "no-resolv",  # no upstream from /etc/resolv.conf...
        "no-poll",
        "no-hosts",  # ...nor names from /etc/hosts
        f"addn-hosts={hosts}",
        "local=/#/",  # every name is local: unknown ones get NXDOMAIN, never REFUSED
        f"local-ttl={TTL}",
        f"pid-file={pid_file}",
        f"log-facility={log_file}",
        "",
    ])  # fmt: skip


def resolv_conf(pod: LabPod, nameserver: str) -> str:
    """What kubelet writes into a ClusterFirst pod."""
    search = f"{pod.namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}"
    return f"search {search}\nnameserver {nameserver}\noptions {OPTIONS}\n"
