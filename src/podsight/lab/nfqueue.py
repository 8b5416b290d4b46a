"""A minimal nfnetlink_queue client over a raw netlink socket.

Just enough of the protocol to hold packets and release them later: bind a
queue, ask for metadata only (we never look at payloads), read packet ids and
answer with batch verdicts. Written against ``linux/netfilter/nfnetlink_queue.h``
so the lab needs no libnetfilter_queue and no C compiler.

Wire format, for the reader checking offsets::

    nlmsghdr   u32 len, u16 type, u16 flags, u32 seq, u32 pid   (host order)
    nfgenmsg   u8 family, u8 version, be16 res_id (= queue number)
    nlattr     u16 len, u16 type, payload, padded to 4 bytes
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import Iterator

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3

NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2

NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQA_CFG_F_FAIL_OPEN = 1

NFQNL_CFG_CMD_BIND = 1
NFQNL_CFG_CMD_UNBIND = 2
NFQNL_COPY_META = 1

NF_DROP = 0
NF_ACCEPT = 1

NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4

_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")


def _attr(kind: int, payload: bytes) -> bytes:
    raw = _NLATTR.pack(_NLATTR.size + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _message(msg: int, queue: int, attrs: bytes, *, seq: int, flags: int) -> bytes:
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack(">H", queue) + attrs
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags | NLM_F_REQUEST, seq, 0) + body


def iter_messages(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(type, payload after nlmsghdr) for every netlink message in one datagram."""
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        yield kind, data[offset + _NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3


def packet_id(payload: bytes) -> int | None:
    """The packet id from an NFQNL_MSG_PACKET payload (nfgenmsg, then attributes)."""
    offset = 4  # nfgenmsg
    while offset + _NLATTR.size <= len(payload):
        length, kind = _NLATTR.unpack_from(payload, offset)
        if length < _NLATTR.size:
            return None
        if kind & 0x3FFF == NFQA_PACKET_HDR:
            (pid,) = struct.unpack_from(">I", payload, offset + _NLATTR.size)
            return int(pid)
        offset += (length + 3) & ~3
    return None


class QueueSocket:
    """One bound nfqueue. The kernel holds each queued packet until we give a verdict."""

    def __init__(self, queue_num: int, *, maxlen: int = 4096) -> None:
        self.queue_num = queue_num
        self._seq = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
            self.sock.bind((0, 0))
            self._config(_attr(NFQA_CFG_CMD, struct.pack(">BxH", NFQNL_CFG_CMD_BIND, 0)))
            self._config(
                _attr(NFQA_CFG_PARAMS, struct.pack(">IB", 0, NFQNL_COPY_META))
                + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack(">I", maxlen))
                # Fail open: if the queue ever fills, pass packets rather than drop them.
                + _attr(NFQA_CFG_MASK, struct.pack(">I", NFQA_CFG_F_FAIL_OPEN))
                + _attr(NFQA_CFG_FLAGS, struct.pack(">I", NFQA_CFG_F_FAIL_OPEN))
            )
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _config(self, attrs: bytes) -> None:
        """Send a config message and wait for its ack, so errors surface here."""
        seq = self._next_seq()
        self.sock.send(
            _message(NFQNL_MSG_CONFIG, self.queue_num, attrs, seq=seq, flags=NLM_F_ACK)
        )
        while True:
            data = self.sock.recv(65536)
            for kind, payload in iter_messages(data):
                if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    # Only while unbinding: let stragglers through rather than drop them.
                    pid = packet_id(payload)
                    if pid is not None:
                        self.verdict(pid)
                elif kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload, 0)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return

    def receive(self, *, max_datagrams: int = 256) -> list[int]:
        """Ids of queued packets: one blocking read, then whatever else is already waiting.

        Draining in one call keeps a busy queue to one wakeup per batch rather
        than one per packet. Transient errors (ENOBUFS) end the batch early.
        """
        ids: list[int] = []
        for i in range(max_datagrams):
            try:
                data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT if i else 0)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.ENOBUFS, errno.EINTR):
                    break
                raise
            for kind, payload in iter_messages(data):
                if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    pid = packet_id(payload)
                    if pid is not None:
                        ids.append(pid)
        return ids

    def verdict_upto(self, packet_id: int, verdict: int = NF_ACCEPT) -> None:
        """Give ``verdict`` to every queued packet with id <= ``packet_id``, in queue order."""
        attrs = _attr(NFQA_VERDICT_HDR, struct.pack(">II", verdict, packet_id))
        self.sock.send(
            _message(NFQNL_MSG_VERDICT_BATCH, self.queue_num, attrs, seq=self._next_seq(), flags=0)
        )

    def verdict(self, packet_id: int, verdict: int = NF_ACCEPT) -> None:
        attrs = _attr(NFQA_VERDICT_HDR, struct.pack(">II", verdict, packet_id))
        self.sock.send(
            _message(NFQNL_MSG_VERDICT, self.queue_num, attrs, seq=self._next_seq(), flags=0)
        )

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._config(_attr(NFQA_CFG_CMD, struct.pack(">BxH", NFQNL_CFG_CMD_UNBIND, 0)))
        self.sock.close()

    def __enter__(self) -> QueueSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
