"""tc clsact attachment (bpf_tc_* in libbpf): a program on an interface's ingress or egress.

:class:`TcHook` owns the attachment and, if it created it, the clsact qdisc:
closing it detaches the filter and removes a qdisc podsight added, and
leaves a qdisc someone else made alone.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import socket

from podsight.ebpf import _libbpf as L
from podsight.ebpf.objects import Program
from podsight.errors import UserError

DIRECTIONS = {"ingress": L.BPF_TC_INGRESS, "egress": L.BPF_TC_EGRESS}


class TcHook:
    """A BPF program attached with tc (clsact, direct-action) to one interface and direction."""

    def __init__(self, program: Program, interface: str | int, direction: str, priority: int = 1):
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be ingress or egress, not {direction!r}")
        if isinstance(interface, int):
            ifindex = interface
        else:
            try:
                ifindex = socket.if_nametoindex(interface)
            except OSError:
                raise UserError(f"no such interface: {interface}") from None
        self.interface = interface
        self.direction = direction
        self._hook = L.BpfTcHook(
            sz=ctypes.sizeof(L.BpfTcHook), ifindex=ifindex, attach_point=DIRECTIONS[direction]
        )
        rc = L.lib().bpf_tc_hook_create(ctypes.byref(self._hook))
        if rc < 0 and -rc != errno_mod.EEXIST:
            L.check("bpf_tc_hook_create", rc)
        self._owns_qdisc = rc == 0
        self._opts = L.BpfTcOpts(
            sz=ctypes.sizeof(L.BpfTcOpts), prog_fd=program.fd, priority=priority
        )
        try:
            rc = L.lib().bpf_tc_attach(ctypes.byref(self._hook), ctypes.byref(self._opts))
            L.check("bpf_tc_attach", rc)
        except Exception:
            self._destroy_qdisc()
            raise
        self._attached = True

    @property
    def handle(self) -> int:
        return int(self._opts.handle)

    def _destroy_qdisc(self) -> None:
        if self._owns_qdisc:
            # Destroying the hook with both directions removes the clsact qdisc.
            hook = L.BpfTcHook(
                sz=ctypes.sizeof(L.BpfTcHook),
                ifindex=self._hook.ifindex,
                attach_point=L.BPF_TC_INGRESS | L.BPF_TC_EGRESS,
            )
            L.lib().bpf_tc_hook_destroy(ctypes.byref(hook))
            self._owns_qdisc = False

    def close(self) -> None:
        if not getattr(self, "_attached", False):
            return
        opts = L.BpfTcOpts(
            sz=ctypes.sizeof(L.BpfTcOpts), handle=self._opts.handle, priority=self._opts.priority
        )
        rc = L.lib().bpf_tc_detach(ctypes.byref(self._hook), ctypes.byref(opts))
        self._attached = False
        # The interface may be gone already (a pod was deleted): nothing to undo then.
        if rc < 0 and -rc not in (errno_mod.ENOENT, errno_mod.ENODEV, errno_mod.EINVAL):
            L.check("bpf_tc_detach", rc)
        self._destroy_qdisc()

    def __enter__(self) -> TcHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
