"""tc attachment: a program on an interface's ingress or egress.

Two kernel mechanisms, tried in this order:

- **tcx** (Linux >= 6.6): a BPF link (``BPF_LINK_CREATE`` with
  ``BPF_TCX_INGRESS``/``EGRESS``). The kernel detaches it when the last fd
  closes, so a podsight killed with SIGKILL leaves nothing on the interface,
  and there is no qdisc to share. Our programs return ``TC_ACT_UNSPEC``
  (``TCX_NEXT``): the packet goes on to the next tcx program and then to any
  clsact filter (Cilium's, say), untouched in verdict.
- **clsact** (netlink ``bpf_tc_*`` in libbpf), where tcx is missing. The
  filter outlives the process if it is killed, and the clsact qdisc is
  shared: removing it removes every filter under it, including those of
  another podsight run (or of Cilium) attached after ours. So a qdisc this
  process created is removed only by the last close that finds no filter
  left on either direction, checked with a netlink dump; a qdisc someone
  else made is always left alone.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import socket
import struct

from podsight.ebpf import _libbpf as L
from podsight.ebpf.errors import BpfError, InterfaceGone, InvalidArgument, NotSupported
from podsight.ebpf.progs import HasFd

DIRECTIONS = {"ingress": L.BPF_TC_INGRESS, "egress": L.BPF_TC_EGRESS}
#: enum bpf_attach_type (linux/bpf.h): BPF_TCX_INGRESS, BPF_TCX_EGRESS.
_TCX_ATTACH = {"ingress": 46, "egress": 47}
MODES = ("auto", "tcx", "clsact")

# rtnetlink constants (linux/rtnetlink.h, linux/netlink.h, linux/pkt_sched.h).
_RTM_NEWTFILTER = 44
_RTM_GETTFILTER = 46
_NLM_F_REQUEST = 0x1
_NLM_F_DUMP = 0x300
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_CLSACT_PARENTS = (0xFFFFFFF2, 0xFFFFFFF3)  # TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_{INGRESS,EGRESS})

#: ifindexes whose clsact qdisc this process created and has not removed yet.
_created_qdiscs: set[int] = set()


def filters_on(ifindex: int) -> int:
    """How many tc filter messages the kernel dumps under ifindex's clsact qdisc.

    Zero means nothing (of anyone) is attached on ingress or egress. Any
    error (the interface went away) also reads as zero.
    """
    count = 0
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        for seq, parent in enumerate(_CLSACT_PARENTS, start=1):
            tcmsg = struct.pack("=BxxxiIII", socket.AF_UNSPEC, ifindex, 0, parent, 0)
            header = struct.pack("=IHHII", 16 + len(tcmsg), _RTM_GETTFILTER,
                                 _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0)
            nl.send(header + tcmsg)
            done = False
            while not done:
                data = nl.recv(65536)
                off = 0
                while off + 16 <= len(data):
                    length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
                    if kind in (_NLMSG_DONE, _NLMSG_ERROR):
                        done = True
                        break
                    if kind == _RTM_NEWTFILTER:
                        count += 1
                    off += (length + 3) & ~3
                    if length < 16:
                        done = True
                        break
    return count


def _ifname(ifindex: int) -> str | None:
    """The interface's name now, or None when no interface has that index (any more)."""
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return None


class TcHook:
    """A BPF program attached to one interface and direction, with tcx or clsact.

    ``program`` is any loaded program: an object's :class:`Program` or a
    :class:`~podsight.ebpf.progs.RawProgram`.

    ``mode`` is ``auto`` (tcx, else clsact), ``tcx`` or ``clsact``; after
    attaching, :attr:`mode` says which one was used.

    Errors: :class:`InterfaceGone` when the interface does not exist (a pod's
    veth deleted between listing and attaching: callers skip it and go on),
    :class:`NotSupported` when ``mode="tcx"`` and the kernel has no tcx, and
    otherwise the errno's class; every message names program, interface and
    direction.
    """

    def __init__(self, program: HasFd, interface: str | int, direction: str,
                 priority: int = 1, mode: str = "auto"):
        if direction not in DIRECTIONS:
            raise InvalidArgument(f"direction must be ingress or egress, not {direction!r}")
        if mode not in MODES:
            raise InvalidArgument(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        # Any loaded program will do for the kernel (it needs the fd); messages want a name.
        self.program_name = str(getattr(program, "name", "") or f"program fd {program.fd}")
        if isinstance(interface, int):
            ifindex = interface
            name = _ifname(ifindex)
        else:
            try:
                ifindex = socket.if_nametoindex(interface)
            except OSError:
                raise InterfaceGone(f"cannot attach {self.program_name} to {interface} "
                                    f"{direction}: no such interface") from None
            name = interface
        self.interface = interface
        self.direction = direction
        #: "ifindex 7 (veth1)": how messages name the interface, even once it is gone.
        self.label = f"ifindex {ifindex} ({name})" if name else f"ifindex {ifindex}"
        self._attached = False
        self._link_fd = -1
        self._hook = L.BpfTcHook(
            sz=ctypes.sizeof(L.BpfTcHook), ifindex=ifindex, attach_point=DIRECTIONS[direction]
        )
        self._opts = L.BpfTcOpts(
            sz=ctypes.sizeof(L.BpfTcOpts), prog_fd=program.fd, priority=priority
        )
        if mode in ("auto", "tcx"):
            fd = L.lib().bpf_link_create(program.fd, ifindex, _TCX_ATTACH[direction], None)
            if fd >= 0:
                self._link_fd = fd
                self._attached = True
                self.mode = "tcx"
                return
            # An older kernel does not know the attach type: EINVAL.
            if mode == "tcx" or -fd not in (errno_mod.EINVAL, errno_mod.EOPNOTSUPP):
                raise self._error("bpf_link_create(tcx)", -fd, "tcx")
        self.mode = "clsact"
        rc = L.lib().bpf_tc_hook_create(ctypes.byref(self._hook))
        if rc < 0 and -rc != errno_mod.EEXIST:
            raise self._error("bpf_tc_hook_create", -rc, "clsact")
        if rc == 0:
            _created_qdiscs.add(ifindex)
        try:
            rc = L.lib().bpf_tc_attach(ctypes.byref(self._hook), ctypes.byref(self._opts))
            if rc < 0:
                raise self._error("bpf_tc_attach", -rc, "clsact")
        except Exception:
            self._destroy_qdisc()
            raise
        self._attached = True

    def _error(self, func: str, err: int, how: str, verb: str = "attach") -> BpfError:
        """The error for ``func`` failing with ``err``, checked against the interface's fate.

        Whatever the errno (ENODEV from tcx, EINVAL or ENOENT from netlink),
        an interface that is not there any more is the cause.
        """
        where = "to" if verb == "attach" else "from"
        op = f"{verb} {self.program_name} {where} {self.label} {self.direction} ({how})"
        if _ifname(int(self._hook.ifindex)) is None:
            return InterfaceGone(f"cannot {op}: {os.strerror(err)}: the interface is gone",
                                 errno=err)
        if how == "tcx" and verb == "attach" and err in (errno_mod.EINVAL, errno_mod.EOPNOTSUPP):
            return NotSupported(f"cannot {op}: {os.strerror(err)}: this kernel has no tcx "
                                "(Linux >= 6.6); use mode clsact", errno=err)
        return L.error(func, err, op)

    @property
    def alive(self) -> bool:
        """Is the program still attached to its interface?

        A tcx link whose interface went away (a pod's namespace was deleted, and
        its eth0 with it) stays open but points at ifindex 0: the capture of that
        interface is over. A clsact filter goes with its interface.
        """
        if not self._attached:
            return False
        if self._link_fd >= 0:
            info = ctypes.create_string_buffer(64)
            size = ctypes.c_uint32(64)
            if L.lib().bpf_obj_get_info_by_fd(self._link_fd, info, ctypes.byref(size)) < 0:
                return False
            # struct bpf_link_info: type, id, prog_id, (pad), then tcx {ifindex, attach_type}
            return bool(struct.unpack_from("<I", info.raw, 16)[0] != 0)
        return _ifname(int(self._hook.ifindex)) is not None

    @property
    def handle(self) -> int:
        """The clsact filter's handle (0 for a tcx link)."""
        return int(self._opts.handle)

    def _destroy_qdisc(self) -> None:
        ifindex = int(self._hook.ifindex)
        if ifindex in _created_qdiscs and filters_on(ifindex) == 0:
            # Destroying the hook with both directions removes the clsact qdisc.
            hook = L.BpfTcHook(
                sz=ctypes.sizeof(L.BpfTcHook),
                ifindex=ifindex,
                attach_point=L.BPF_TC_INGRESS | L.BPF_TC_EGRESS,
            )
            L.lib().bpf_tc_hook_destroy(ctypes.byref(hook))
            _created_qdiscs.discard(ifindex)

    def close(self) -> None:
        if not self._attached:
            return
        self._attached = False
        if self._link_fd >= 0:
            # Closing the link's only fd detaches it (and a vanished interface took it already).
            os.close(self._link_fd)
            self._link_fd = -1
            return
        opts = L.BpfTcOpts(
            sz=ctypes.sizeof(L.BpfTcOpts), handle=self._opts.handle, priority=self._opts.priority
        )
        rc = L.lib().bpf_tc_detach(ctypes.byref(self._hook), ctypes.byref(opts))
        # The interface may be gone already (a pod was deleted): nothing to undo then.
        if rc < 0 and -rc not in (errno_mod.ENOENT, errno_mod.ENODEV, errno_mod.EINVAL):
            error = self._error("bpf_tc_detach", -rc, "clsact", verb="detach")
            if not isinstance(error, InterfaceGone):
                raise error
        self._destroy_qdisc()

    def __enter__(self) -> TcHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
