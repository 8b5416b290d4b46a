"""``podsight packets`` as the pipeline runs it: interfaces followed, blocks handed over.

Which interfaces: each selected pod's ``eth0``, attached from inside the
pod's network namespace (so the direction is the pod's: ingress on its eth0
is what it receives), or host interfaces with ``--host`` / ``--interfaces``.
Pods that start matching the selectors during the capture are added; a pod
that goes away (its namespace deleted: the tcx link then points at no
interface) ends its interface, whose statistics are written, and the capture
goes on. Every interface is one :class:`~podsight.pipeline.CaptureInterface`,
numbered in the order it appeared: that number is its pcapng interface id.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from podsight.errors import PodsightError, UserError
from podsight.gadgets.packets.capture import Capture
from podsight.gadgets.packets.filter import DLT_EN10MB, DLT_RAW, LINKTYPE_RAW, compile_filter
from podsight.gadgets.packets.records import PacketRecord, decode
from podsight.gadgets.packets.schema import schema
from podsight.net.interfaces import choose, host_interfaces
from podsight.net.netns import call_in_netns, netns_names
from podsight.outputs.json import TemplateSpec
from podsight.pipeline import (
    Batch,
    CaptureInterface,
    Frames,
    Loss,
    RunContext,
    Selection,
    Tally,
)
from podsight.schema import Schema

ARPHRD_NONE = 0xFFFE  # a raw IP device (tun, wireguard): no link-layer header


def expression(values: dict[str, Any] | Any) -> str:
    """The tcpdump expression: the user's, and the shorthand flags, joined with ``and``."""
    parts = []
    words = values.get("expression")
    user = " ".join(words) if isinstance(words, list) else (words or "")
    if user.strip():
        parts.append(f"({user.strip()})")
    if values.get("protocol"):
        parts.append(values["protocol"])
    port = values.get("port")
    if port:
        lo, sep, hi = str(port).partition("-")
        if not (lo.isdigit() and (not sep or hi.isdigit())
                and 1 <= int(lo) <= int(hi or lo) <= 65535):
            raise UserError(f"invalid --port {port!r}: use 80 or 80-90 (ports 1-65535)")
        parts.append(f"portrange {lo}-{hi}" if sep else f"port {lo}")
    for flag, key in (("host", "peer_ip"), ("net", "peer_cidr")):
        nets = values.get(key) or ()
        if nets:
            words_ = [f"{flag} {n.network_address}" if n.prefixlen == n.max_prefixlen
                      else f"net {n}" for n in nets]
            parts.append("(" + " or ".join(words_) + ")")
    if len(parts) == 1 and user.strip():
        return user.strip()
    return " and ".join(parts)


class PacketsGadget:
    """Packets from tc programs on the selected interfaces, as ready pcapng blocks."""

    def __init__(self, ctx: RunContext) -> None:
        v = ctx.values
        self.ctx = ctx
        self.snaplen: int = v["snaplen"]
        self.buffer_size: int | None = v.get("buffer_size")
        self.expression = expression(v)
        self.include: list[str] | None = v.get("interfaces")
        self.exclude: list[str] | None = v.get("exclude_interfaces")
        self.schema: Schema[PacketRecord] = schema(ctx.clock)
        self.capture_interfaces: list[CaptureInterface] = []
        self._programs: dict[int, dict[str, Any]] = {}  # linktype -> direction -> cBPF
        # Compile once now: a bad expression is bad input, before anything is loaded.
        self._filters(1)
        self._capture: Capture | None = None
        self._by_key: dict[tuple[int, int], int] = {}  # (netns, ifindex) -> interface id
        self._last_selection: Selection | None = None
        self._next_follow = 0.0
        self._next_counts = 0.0
        self._warned_none = False
        self._started_ns = 0

    # -- filters -------------------------------------------------------------------------

    def _filters(self, linktype: int) -> dict[str, Any]:
        if linktype not in self._programs:
            if not self.expression:
                self._programs[linktype] = {"ingress": None, "egress": None}
            else:
                dlt = DLT_RAW if linktype == LINKTYPE_RAW else DLT_EN10MB
                code = compile_filter(self.expression, self.snaplen, dlt)
                self._programs[linktype] = {"ingress": code, "egress": code}
        return self._programs[linktype]

    @property
    def capture(self) -> Capture:
        if self._capture is None:
            raise RuntimeError("packets is not started")
        return self._capture

    # -- lifetime --------------------------------------------------------------------------

    def start(self, selection: Selection) -> str:
        from podsight.ebpf.system import preflight

        preflight(net_admin=True)
        self._capture = Capture(self.snaplen, self.buffer_size)
        self._started_ns = time.time_ns()
        self.follow(selection)
        n = len(self.capture.attachments)
        what = f" matching {self.expression!r}" if self.expression else ""
        return (f"capturing packets{what} on {n} interface{'s' if n != 1 else ''}, "
                f"snaplen {self.snaplen}")

    def detach(self) -> None:
        if self._capture is not None:
            self._capture.detach_all()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.close()
            self._capture = None

    # -- interfaces --------------------------------------------------------------------------

    def _wanted(self, selection: Selection) -> dict[tuple[int, int], tuple[str, str, int]]:
        """(netns or 0 for the host's, ifindex) -> (name, description, linktype) to capture."""
        res = self.ctx.resolver
        node = res.node_name
        out: dict[tuple[int, int], tuple[str, str, int]] = {}
        if selection.host or self.include:
            for ifindex, name in choose(host_interfaces(), self.include, self.exclude).items():
                out[(0, ifindex)] = (f"n/{node}/{name}", f"k8s.node={node};interface={name}",
                                     _linktype(name))
            if not self.ctx.selector.selects_pods and selection.netns is None:
                return out
        if selection.netns is None:
            from podsight.selectors import PodSelector

            inodes = res.selected_netns(PodSelector())
        else:
            inodes = set(selection.netns)
        names = netns_names()
        pods = {p.netns: p for p in res.pods() if p.netns}
        for inode in sorted(inodes - {0, selection.host_netns}):
            eth0 = _eth0_in(inode)
            if eth0 is None:
                continue
            pod = pods.get(inode) or res.local_pod(inode)
            if pod is not None:
                containers = ",".join(pod.containers)
                name = f"p/{pod.namespace}/{pod.name}"
                desc = (f"k8s.node={pod.node or node};k8s.namespace={pod.namespace};"
                        f"k8s.podName={pod.name};k8s.containerName={containers}")
            else:
                label = names.get(inode, str(inode))
                name = f"netns/{label}/eth0"
                desc = f"k8s.node={node};netns={label};interface=eth0"
            out[(inode, eth0)] = (name, desc, 1)
        return out

    def follow(self, selection: Selection) -> None:
        """Attach to what is selected now; end what is not (or is gone).

        At most once a second unless the selection changed: listing interfaces
        enters every selected namespace.
        """
        now = time.monotonic()
        if selection == self._last_selection and now < self._next_follow:
            return
        self._last_selection = selection
        self._next_follow = now + 1.0
        cap = self.capture
        wanted = self._wanted(selection)
        for key, iface_id in list(self._by_key.items()):
            att = cap.attachments.get(iface_id)
            if key not in wanted or att is None or not att.alive:
                self._end(key, iface_id)
        for key, (name, desc, linktype) in wanted.items():
            if key in self._by_key:
                continue
            iface_id = len(self.capture_interfaces)
            netns, ifindex = key
            try:
                cap.attach(iface_id, ifindex, netns or None, self._filters(linktype))
            except (PodsightError, OSError):
                continue  # it went away between listing and attaching
            self.capture_interfaces.append(CaptureInterface(
                id=iface_id, name=name, description=desc, snaplen=self.snaplen,
                filter=self.expression, linktype=linktype, start_ns=time.time_ns()))
            self._by_key[key] = iface_id
        if not cap.attachments and not self._warned_none:
            self._warned_none = True
            self.ctx.warn("no interface to capture yet (check the pod flags, --interfaces and "
                          "--exclude-interfaces); waiting for one to appear")

    def _end(self, key: tuple[int, int], iface_id: int) -> None:
        """The interface is over: detach, take its last counts, mark it closed."""
        self.capture.detach(iface_id)
        del self._by_key[key]
        iface = self.capture_interfaces[iface_id]
        self._update_counts([iface_id])
        iface.closed = True
        iface.end_ns = time.time_ns()

    # -- blocks ---------------------------------------------------------------------------------

    def wait(self, timeout: float) -> None:
        self.capture.wait(timeout)

    def collect(self, *, final: bool) -> Batch[Any]:
        frames = self.capture.frames()
        now = time.monotonic()
        if final or now >= self._next_counts:
            self._next_counts = now + 0.5
            self._update_counts([i.id for i in self.capture_interfaces if not i.closed])
        return Batch(frames=frames)

    def _update_counts(self, ids: list[int]) -> None:
        for iface_id, c in self.capture.counts(ids).items():
            iface = self.capture_interfaces[iface_id]
            iface.received = int(c["matched"])
            iface.dropped = int(c["lost_ring"] + c["lost_other"])
            iface.written = int(c["written"])
            iface.bytes = int(c["bytes"])

    def status(self) -> str:
        """The live line: totals, then per interface."""
        ifs = self.capture_interfaces
        packets = sum(i.written for i in ifs)
        size = sum(i.bytes for i in ifs)
        drops = sum(i.dropped for i in ifs)
        per = ", ".join(f"{i.name} {i.written}" + (f" ({i.dropped} dropped)" if i.dropped else "")
                        + (" [gone]" if i.closed else "") for i in ifs[:6])
        more = f", +{len(ifs) - 6} more" if len(ifs) > 6 else ""
        return (f"{packets} packets, {_human(size)}, {drops} dropped by the kernel"
                + (f" | {per}{more}" if per else ""))

    def decode(self, raw: np.ndarray) -> list[Any]:
        return []

    def decode_frames(self, frames: Frames, which: np.ndarray) -> list[PacketRecord]:
        """Records for blocks ``which`` of ``frames``, for the live view (which samples)."""
        return decode(frames, which, self.capture_interfaces, self.ctx.clock.offset_ns)

    @staticmethod
    def preselected(record: PacketRecord) -> bool:
        """Every packet is of a selected pod: only selected pods' interfaces are captured."""
        return True

    def templates(self, admit: Callable[[np.ndarray], Any]) -> TemplateSpec[Any] | None:
        return None

    def pending(self) -> list[Any]:
        return []

    def tally(self, elapsed: float) -> Tally:
        ifs = self.capture_interfaces
        self._update_counts([i.id for i in ifs if not i.closed])
        now = time.time_ns()
        for iface in ifs:
            if not iface.end_ns:
                iface.end_ns = now
        if self._capture is not None:
            c = self._capture.counts([i.id for i in ifs])
            ring = sum(int(v["lost_ring"]) for v in c.values())
            other = sum(int(v["lost_other"]) for v in c.values())
        else:
            ring = other = 0
        received = sum(i.received for i in ifs)
        return Tally(
            losses={"lost_ring": Loss(ring, "kernel buffer full (a larger --buffer-size "
                                            "helps)"),
                    "lost_unreadable": Loss(other, "packet unreadable")},
            before=[f"{received} received by filter on {len(ifs)} interface"
                    f"{'s' if len(ifs) != 1 else ''} in {elapsed:.1f}s"],
            counters={"received": received, "lost_ring": ring, "lost_unreadable": other,
                      "written_by_kernel": sum(i.written for i in ifs),
                      "bytes": sum(i.bytes for i in ifs)},
        )


def _eth0_in(inode: int) -> int | None:
    """The ifindex of ``eth0`` inside network namespace ``inode`` (None if none / gone)."""
    try:
        return call_in_netns(inode, lambda: socket.if_nametoindex("eth0"))
    except OSError:
        return None


def _linktype(name: str) -> int:
    try:
        kind = int(Path(f"/sys/class/net/{name}/type").read_text())
    except (OSError, ValueError):
        return 1
    return LINKTYPE_RAW if kind == ARPHRD_NONE else 1


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n}B"
