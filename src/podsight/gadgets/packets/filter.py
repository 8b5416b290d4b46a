"""tcpdump expressions, compiled by libpcap and run in the kernel as eBPF.

libpcap compiles the expression to classic BPF (what tcpdump attaches to its
socket); :func:`convert` translates that to eBPF for a tc program, the way
the kernel's own ``bpf_convert_filter`` does for socket filters, with one
difference: packet loads are ``bpf_skb_load_bytes`` calls whose failure
means "no match", never ``LD_ABS``/``LD_IND``, whose out-of-bounds case is
an implicit ``exit`` with r0 = 0 (``TC_ACT_OK``/``TCX_PASS``: the end of the
tcx chain, which would skip every program after ours).

:func:`entry_program` wraps the converted filter in the per-interface,
per-direction program that tc runs: on a match it leaves the interface id
and direction in the ``meta`` map and tail-calls the capture program; in any
case the packet goes on untouched (``TC_ACT_UNSPEC``).

Why ctypes over Debian's libpcap (``libpcap.so.0.8``, the library tcpdump
itself uses) and not a binding from PyPI: three functions are needed
(``pcap_open_dead``, ``pcap_compile``, ``pcap_geterr``), the error messages
are libpcap's own, and the compiled code is what tcpdump would run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
import threading
from collections.abc import Sequence
from functools import cache
from typing import Any

from podsight.errors import EnvironmentProblem, UserError

DLT_EN10MB, DLT_RAW = 1, 12
LINKTYPE_RAW = 101  # pcapng's number for DLT_RAW
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF

CBpf = tuple[int, int, int, int]  # (code, jt, jf, k) as libpcap emits it


class _BpfInsn(ctypes.Structure):  # struct bpf_insn (pcap/bpf.h)
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class _BpfProgram(ctypes.Structure):  # struct bpf_program
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


_lock = threading.Lock()


@cache
def libpcap() -> Any:
    """Debian's libpcap (package libpcap0.8), with the prototypes podsight calls."""
    name = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        raise EnvironmentProblem("libpcap is missing (apt-get install libpcap0.8): it compiles "
                            "the filter expression") from None
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_uint32]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    lib.bpf_filter.restype = ctypes.c_uint
    lib.bpf_filter.argtypes = [ctypes.POINTER(_BpfInsn), ctypes.c_char_p, ctypes.c_uint,
                               ctypes.c_uint]
    return lib


def compile_filter(expression: str, snaplen: int = 262144, dlt: int = DLT_EN10MB
                   ) -> list[CBpf]:
    """libpcap's classic BPF for ``expression``; a bad one is a :class:`UserError` carrying
    libpcap's own message."""
    lib = libpcap()
    with _lock:
        handle = lib.pcap_open_dead(dlt, snaplen)
        if not handle:
            raise EnvironmentProblem("pcap_open_dead failed")
        try:
            prog = _BpfProgram()
            if lib.pcap_compile(handle, ctypes.byref(prog), expression.encode(), 1,
                                PCAP_NETMASK_UNKNOWN) < 0:
                message = lib.pcap_geterr(handle).decode(errors="replace")
                raise UserError(f"invalid filter expression {expression!r}: {message}")
            try:
                return [(i.code, i.jt, i.jf, i.k) for i in prog.bf_insns[:prog.bf_len]]
            finally:
                lib.pcap_freecode(ctypes.byref(prog))
        finally:
            lib.pcap_close(handle)


def rejects_all(cbpf: Sequence[CBpf]) -> bool:
    """libpcap proved that no packet can match (``tcp and udp``): one ``ret #0``."""
    return len(cbpf) == 1 and cbpf[0][0] == 0x06 and cbpf[0][3] == 0


def libpcap_matches(cbpf: Sequence[CBpf], packet: bytes) -> bool:
    """libpcap's own interpreter (``bpf_filter``): the oracle the converter is tested against."""
    code = (_BpfInsn * len(cbpf))(*[_BpfInsn(*i) for i in cbpf])
    return bool(libpcap().bpf_filter(code, packet, len(packet), len(packet)))


# -- classic BPF -> eBPF -------------------------------------------------------------------------

# eBPF opcode parts (linux/bpf_common.h, linux/bpf.h).
LD, LDX, ST, STX, ALU, JMP, JMP32, ALU64 = 0, 1, 2, 3, 4, 5, 6, 7
W, H, B, DW = 0x00, 0x08, 0x10, 0x18
MEM = 0x60
K, X = 0x00, 0x08
A_ADD, A_AND, A_LSH, A_NEG, A_MOV, A_END = 0x00, 0x50, 0x60, 0x80, 0xB0, 0xD0
J_JA, J_JEQ, J_JNE, J_CALL, J_EXIT = 0x00, 0x10, 0x50, 0x80, 0x90
R0, R1, R2, R3, R4, R6, R7, R9, R10 = 0, 1, 2, 3, 4, 6, 7, 9, 10
RA, RX, RCTX, RSAVE = R0, R7, R6, R9  # as bpf_convert_filter: A=r0, X=r7, ctx=r6
FN_MAP_LOOKUP, FN_TAIL_CALL, FN_SKB_LOAD_BYTES = 1, 12, 26
BPF_PSEUDO_MAP_FD = 1
SKF_AD_OFF = 0xFFFFF000
# struct __sk_buff offsets (uapi linux/bpf.h).
SKB_LEN, SKB_PKT_TYPE, SKB_MARK, SKB_QUEUE, SKB_PROTOCOL = 0, 4, 8, 12, 16
SKB_VLAN_PRESENT, SKB_VLAN_TCI, SKB_IFINDEX, SKB_HASH = 20, 24, 40, 44
PACKET_OUTGOING = 4
BUF = -72  # the load buffer on the stack; M[0..15] live at r10-64 .. r10-4


class Unsupported(UserError):
    """The compiled filter uses an instruction the converter does not translate."""


Insn = tuple[int, int, int, int, int]  # code, dst, src, off, imm
# An item: an instruction, a jump to a label ("j", insn, target), or a label ("l", name).
Item = Any


def _i(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> Insn:
    return (code, dst, src, off, imm)


def _mov32(dst: int, imm: int) -> Insn:
    return _i(ALU | A_MOV | K, dst, 0, 0, imm)


def _mov32r(dst: int, src: int) -> Insn:
    return _i(ALU | A_MOV | X, dst, src)


def _mov64r(dst: int, src: int) -> Insn:
    return _i(ALU64 | A_MOV | X, dst, src)


def _mov64(dst: int, imm: int) -> Insn:
    return _i(ALU64 | A_MOV | K, dst, 0, 0, imm)


def _ldx(size: int, dst: int, src: int, off: int) -> Insn:
    return _i(LDX | size | MEM, dst, src, off)


def _stx(size: int, dst: int, src: int, off: int) -> Insn:
    return _i(STX | size | MEM, dst, src, off)


def _st(size: int, dst: int, off: int, imm: int) -> Insn:
    return _i(ST | size | MEM, dst, 0, off, imm)


def _ld_map_fd(dst: int, fd: int) -> list[Insn]:
    return [_i(LD | DW, dst, BPF_PSEUDO_MAP_FD, 0, fd), _i(0)]


def _mem(k: int) -> int:
    if not 0 <= k < 16:
        raise Unsupported(f"filter uses scratch memory slot {k}")
    return -64 + 4 * k


def _load_bytes(nbytes: int, indexed: bool, k: int, out: list[Item]) -> None:
    """r0 <- ``nbytes`` big-endian packet bytes at k (+X), or a jump to NOMATCH."""
    out.append(_mov64r(R1, RCTX))
    if indexed:
        out.append(_mov32r(R2, RX))
        if k:
            out.append(_i(ALU | A_ADD | K, R2, 0, 0, k))
    else:
        out.append(_mov32(R2, k))
    out.append(_mov64r(R3, R10))
    out.append(_i(ALU64 | A_ADD | K, R3, 0, 0, BUF))
    out.append(_mov64(R4, nbytes))
    out.append(_i(JMP | J_CALL, imm=FN_SKB_LOAD_BYTES))
    out.append(("j", _i(JMP | J_JNE | K, R0), "NOMATCH"))
    out.append(_ldx({4: W, 2: H, 1: B}[nbytes], R0, R10, BUF))
    if nbytes > 1:
        out.append(_i(ALU | A_END | 0x08, R0, 0, 0, nbytes * 8))  # to host order from BE


def _ancillary(k: int, direction: str, out: list[Item]) -> None:
    ad = k - SKF_AD_OFF
    if ad == 4:  # SKF_AD_PKTTYPE: libpcap's 'inbound' / 'outbound'
        out.append(_mov32(RA, PACKET_OUTGOING) if direction == "egress"
                   else _ldx(W, RA, RCTX, SKB_PKT_TYPE))
    elif ad == 8:
        out.append(_ldx(W, RA, RCTX, SKB_IFINDEX))
    elif ad == 0:  # SKF_AD_PROTOCOL, in network order in the skb
        out += [_ldx(W, RA, RCTX, SKB_PROTOCOL), _i(ALU | A_END | 0x08, RA, 0, 0, 16)]
    elif ad in (20, 24, 32, 44, 48):
        offset = {20: SKB_MARK, 24: SKB_QUEUE, 32: SKB_HASH, 44: SKB_VLAN_TCI,
                  48: SKB_VLAN_PRESENT}[ad]
        out.append(_ldx(W, RA, RCTX, offset))
    else:
        raise Unsupported(f"filter uses ancillary load SKF_AD_OFF+{ad}, which podsight "
                          "cannot run in a tc program")


def convert(cbpf: Sequence[CBpf], direction: str = "ingress") -> list[Item]:
    """Classic BPF to eBPF items; jump targets are cBPF indices or MATCH / NOMATCH."""
    out: list[Item] = [_mov64r(RCTX, R1), _mov32(RA, 0), _mov32(RX, 0)]
    if any((c & 7) in (ST, STX) or (c & 0xE7) in (0x60, 0x61) for c, _, _, _ in cbpf):
        out += [_st(DW, R10, -64 + 4 * i, 0) for i in range(0, 16, 2)]
    for idx, (code, jt, jf, k) in enumerate(cbpf):
        out.append(("l", idx))
        cls = code & 7
        if cls in (LD, LDX):
            size, mode = code & 0x18, code & 0xE0
            nbytes = {0x00: 4, 0x08: 2, 0x10: 1}.get(size, 0)
            dst = RA if cls == LD else RX
            if mode == 0x00:  # IMM
                out.append(_mov32(dst, k))
            elif mode == 0x80:  # LEN
                out.append(_ldx(W, dst, RCTX, SKB_LEN))
            elif mode == 0x60:  # MEM
                out.append(_ldx(W, dst, R10, _mem(k)))
            elif cls == LD and mode == 0x20 and nbytes:  # ABS
                if k >= SKF_AD_OFF:
                    _ancillary(k, direction, out)
                else:
                    _load_bytes(nbytes, False, k, out)
            elif cls == LD and mode == 0x40 and nbytes:  # IND
                _load_bytes(nbytes, True, k, out)
            elif cls == LDX and mode == 0xA0 and size == 0x10:  # MSH: X = 4 * ([k] & 0xf)
                out.append(_mov32r(RSAVE, RA))
                _load_bytes(1, False, k, out)
                out += [_i(ALU | A_AND | K, R0, 0, 0, 0xF), _i(ALU | A_LSH | K, R0, 0, 0, 2),
                        _mov32r(RX, R0), _mov32r(RA, RSAVE)]
            else:
                raise Unsupported(f"filter uses load opcode {code:#x}")
        elif cls == ST:
            out.append(_stx(W, R10, RA, _mem(k)))
        elif cls == STX:
            out.append(_stx(W, R10, RX, _mem(k)))
        elif cls == ALU:
            op, src = code & 0xF0, code & 0x08
            if op == A_NEG:
                out.append(_i(ALU | A_NEG, RA))
            elif op in (0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x90, 0xA0):
                if src == X:
                    if op in (0x30, 0x90):  # division by X = 0 rejects, as in classic BPF
                        out.append(("j", _i(JMP32 | J_JEQ | K, RX), "NOMATCH"))
                    out.append(_i(ALU | op | X, RA, RX))
                else:
                    if op in (0x30, 0x90) and k == 0:
                        raise Unsupported("filter divides by zero")
                    out.append(_i(ALU | op | K, RA, 0, 0, k))
            else:
                raise Unsupported(f"filter uses ALU opcode {code:#x}")
        elif cls == JMP:
            op, src = code & 0xF0, code & 0x08
            if op == J_JA:
                out.append(("j", _i(JMP | J_JA), idx + 1 + k))
                continue
            if op not in (0x10, 0x20, 0x30, 0x40):
                raise Unsupported(f"filter uses jump opcode {code:#x}")
            cond = _i(JMP32 | op | X, RA, RX) if src == X else _i(JMP32 | op | K, RA, 0, 0, k)
            out.append(("j", cond, idx + 1 + jt))
            out.append(("j", _i(JMP | J_JA), idx + 1 + jf))
        elif cls == 6:  # RET
            rsrc = code & 0x18
            if rsrc == 0x00:
                out.append(("j", _i(JMP | J_JA), "MATCH" if k else "NOMATCH"))
            elif rsrc == 0x10:  # RET A
                out.append(("j", _i(JMP32 | J_JEQ | K, RA), "NOMATCH"))
                out.append(("j", _i(JMP | J_JA), "MATCH"))
            else:
                raise Unsupported(f"filter uses return opcode {code:#x}")
        else:  # MISC
            if code & 0xF8 == 0x00:
                out.append(_mov32r(RX, RA))  # TAX
            elif code & 0xF8 == 0x80:
                out.append(_mov32r(RA, RX))  # TXA
            else:
                raise Unsupported(f"filter uses opcode {code:#x}")
    out.append(("l", len(cbpf)))
    return out


def assemble(items: Sequence[Item], match: Sequence[Insn], nomatch: Sequence[Insn]) -> bytes:
    """Resolve labels (MATCH and NOMATCH lead to the given tails) and encode."""
    seq: list[Item] = [*items, ("l", "MATCH"), *match, ("l", "NOMATCH"), *nomatch]
    cleaned: list[Item] = []
    for i, it in enumerate(seq):
        if isinstance(it[0], str) and it[0] == "j" and it[1][0] == JMP | J_JA:
            following = set()
            j = i + 1
            while j < len(seq) and isinstance(seq[j][0], str) and seq[j][0] == "l":
                following.add(seq[j][1])
                j += 1
            if it[2] in following:
                continue  # a jump to the next instruction
        cleaned.append(it)
    labels: dict[Any, int] = {}
    pc = 0
    for it in cleaned:
        if isinstance(it[0], str) and it[0] == "l":
            labels[it[1]] = pc
        else:
            pc += 1
    out = bytearray()
    pc = 0
    for it in cleaned:
        if isinstance(it[0], str):
            if it[0] == "l":
                continue
            code, dst, src, _, imm = it[1]
            off = labels[it[2]] - (pc + 1)
            if not -32768 <= off < 32768:
                raise Unsupported("filter too long: a jump does not fit")
            it = (code, dst, src, off, imm)
        code, dst, src, off, imm = it
        imm &= 0xFFFFFFFF
        if imm >= 0x80000000:
            imm -= 1 << 32
        out += struct.pack("<BBhi", code, (dst & 0xF) | ((src & 0xF) << 4), off, imm)
        pc += 1
    return bytes(out)


def test_program(cbpf: Sequence[CBpf], direction: str = "ingress") -> bytes:
    """The converted filter alone: returns 1 on a match, 0 otherwise (for prog_test_run)."""
    return assemble(convert(cbpf, direction), [_mov64(R0, 1), _i(JMP | J_EXIT)],
                    [_mov64(R0, 0), _i(JMP | J_EXIT)])


def entry_program(cbpf: Sequence[CBpf] | None, direction: str, jump_fd: int, meta_fd: int,
                  meta_value: int) -> bytes:
    """The program tc runs on one interface and direction: the filter (None: every packet),
    then on a match ``meta = meta_value`` and a tail call into the capture program."""
    match: list[Item] = [*_ld_map_fd(R1, meta_fd), _st(W, R10, -80, 0), _mov64r(R2, R10),
                         _i(ALU64 | A_ADD | K, R2, 0, 0, -80),
                         _i(JMP | J_CALL, imm=FN_MAP_LOOKUP),
                         ("j", _i(JMP | J_JEQ | K, R0), "NOMATCH"),
                         _st(W, R0, 0, meta_value), _mov64r(R1, RCTX),
                         *_ld_map_fd(R2, jump_fd), _mov64(R3, 0),
                         _i(JMP | J_CALL, imm=FN_TAIL_CALL)]
    nomatch = [_mov64(R0, -1), _i(JMP | J_EXIT)]  # TC_ACT_UNSPEC: the packet goes on
    items = convert(cbpf, direction) if cbpf is not None else [_mov64r(RCTX, R1)]
    return assemble(items, match, nomatch)
