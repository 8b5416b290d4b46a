"""The errors the binding raises, as classes callers can test for (cilium/ebpf's sentinels).

Why classes and not errno checks at every call site: the caller of
``TcHook(...)`` wants to know *that the interface went away* (a pod was
deleted while podsight attached to its veth), not which of ENODEV, ENXIO or
ENOENT this kernel and this attach mode chose to say it with. The binding
decides once, here and in the call that failed, and the caller writes
``except InterfaceGone``.

Every class is a :class:`~podsight.errors.UserError`, so the CLI boundary
prints any of them as one line; every message names the operation and the
object (``cannot attach flows_ingress to ifindex 7 (veth1) egress: No such
device``). The kernel's errno, where there was one, is kept in ``errno``.

Hierarchy::

    UserError
     └─ BpfError                       root of the binding's errors
         ├─ LibbpfError (+ OSError)    a libbpf call failed; errno and function kept
         ├─ NotSupported (+ EnvironmentProblem)     the kernel lacks the feature
         ├─ PermissionDenied (+ EnvironmentProblem) not root / no CAP_BPF
         ├─ BadObject (+ EnvironmentProblem)        .bpf.o truncated, not BPF, or stale
         ├─ InterfaceGone              the interface vanished (attach or detach)
         ├─ Closed                     an operation on a closed object
         └─ InvalidArgument (+ ValueError)          a caller passed a bad value
"""

from __future__ import annotations

import os

from podsight.errors import EnvironmentProblem, UserError

#: What every BadObject message ends with: the one thing a user can do about it.
REBUILD_HINT = "reinstall podsight, or rebuild the objects from a source tree with 'make bpf'"

#: The kernel's ENOTSUPP (include/linux/errno.h; not in uapi, so libc has no text for it).
_ENOTSUPP = 524
#: libbpf's own error codes (libbpf.h enum libbpf_errno) start here; strerror() has no text.
_LIBBPF_ERRNO_BASE = 4000


def describe_errno(err: int) -> str:
    """Text for a (positive) errno, libbpf's own codes (4000-4099) included."""
    if _LIBBPF_ERRNO_BASE <= err < _LIBBPF_ERRNO_BASE + 100:
        from podsight.ebpf._libbpf import libbpf_strerror

        return libbpf_strerror(err)
    if err == _ENOTSUPP:
        return "Operation not supported by this kernel"
    return os.strerror(err)


class BpfError(UserError):
    """Root of every error raised by :mod:`podsight.ebpf`.

    ``errno`` is the kernel's (or libbpf's) error number when one caused it,
    else ``None``.
    """

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class LibbpfError(BpfError, OSError):
    """A libbpf call failed and no more specific class applies; errno and function kept.

    Still an :class:`OSError` (``exc.errno``, ``exc.strerror``), as it was
    before the binding had its own error classes.
    """

    def __init__(self, func: str, err: int, detail: str = "", *, op: str = "") -> None:
        text = describe_errno(err)
        msg = f"cannot {op}: {text}" if op else f"{func}: {text}"
        if detail:
            msg += f" ({detail})"
        OSError.__init__(self, err, msg)
        self.func = func
        self.message = msg

    def __str__(self) -> str:
        # OSError would print "[Errno 19] ...": the CLI wants the sentence alone.
        return self.message


class NotSupported(BpfError, EnvironmentProblem):
    """The running kernel lacks what was asked for: an attach type, a helper, a hook."""


class PermissionDenied(BpfError, EnvironmentProblem):
    """The kernel refused for lack of privilege (EPERM, or EACCES without CAP_BPF)."""


class BadObject(BpfError, EnvironmentProblem):
    """A .bpf.o that cannot be used as it is: missing, truncated, not a BPF ELF, or stale.

    Stale means it does not match the Python code that loads it: a map or
    program it lacks, a ``.rodata`` or record of another size, a C struct
    whose BTF layout differs from the numpy dtype that reads it.
    """


class InterfaceGone(BpfError):
    """The network interface (by ifindex) no longer exists: a pod and its veth went away."""


class Closed(BpfError):
    """An operation on an object (BpfObject, and its programs and maps) after close()."""


class InvalidArgument(BpfError, ValueError):
    """A caller passed a value the binding cannot use (a bad direction, a dtype of wrong size).

    Usually a bug in the caller; still one line at the CLI, and still a
    ValueError for code that checked for that before.
    """
