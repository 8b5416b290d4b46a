"""Where agents are: :class:`NodeEndpoint` (the seam with discovery), and which addresses
an agent may listen on.

Discovery (agent pods found through the API server and reached through its pod
port-forward, or ``--agent-addr``) only produces a list of :class:`NodeEndpoint`; the
client needs nothing else.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from podsight.errors import UserError

DEFAULT_PORT = 7750


@dataclass(frozen=True)
class NodeEndpoint:
    """One agent: the node it runs on (as the user knows it) and how to reach it."""

    node: str
    host: str
    port: int

    @property
    def target(self) -> str:
        """The gRPC target (``127.0.0.1:7750``, ``[::1]:7750``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def split_host_port(value: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) to its parts; bad input is one line."""
    host, sep, port_text = value.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UserError(f"{flag} {value!r}: use HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}")
    return host, int(port_text)


def parse_agent_addr(value: str) -> NodeEndpoint:
    """``--agent-addr HOST:PORT``: the node is named after the address until the agent
    tells its name."""
    host, port = split_host_port(value, "--agent-addr")
    if any(c.isspace() for c in host):
        raise UserError(f"--agent-addr {value!r}: the host has spaces")
    return NodeEndpoint(node=f"{host}:{port}", host=host, port=port)


def check_listen(value: str, flag: str = "--listen") -> tuple[str, int]:
    """An address an agent may listen on: loopback, or the pod's own IP (``$POD_IP``, set
    from the downward API ``status.podIP``). Anything else (``0.0.0.0``, a node address the
    pod was not given) would expose the agent beyond what its port-forward and its pod
    network need."""
    host, port = split_host_port(value, flag)
    if host == "localhost":
        host = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise UserError(f"{flag} {value!r}: {host!r} is not an IP address") from None
    if addr.is_loopback:
        return host, port
    pod_ip = os.environ.get("POD_IP", "").strip()
    if pod_ip and _same(pod_ip, addr):
        return host, port
    where = f"the pod IP ($POD_IP={pod_ip})" if pod_ip else "the pod IP (set $POD_IP)"
    raise UserError(f"{flag} {value!r}: an agent listens only on loopback or {where}")


def _same(text: str, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(text) == addr
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
