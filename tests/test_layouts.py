"""Every layout shared by a .bpf.c and Python agrees with the compiled object's BTF.

Each gadget module declares ``LAYOUTS``: (object file, C type, numpy dtype). For every
gadget object (discovered, not listed here) each declared dtype is checked against the C
type in the object's BTF by podsight.ebpf.layout.check_dtype. A struct clang left out of
the object's BTF (a ring record used only as a local variable) is read from the same source
compiled with that type referenced (bpfbuild.compile_with_types); `make bpf-check` holds the
shipped object to that source. What the gadgets write into .rodata is built from these
dtypes and read back here.

No root needed, and none is used (test_noroot.py runs these as nobody).
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import numpy as np
import pytest
from bpfbuild import compile_with_types

import podsight.gadgets
from podsight.ebpf import BadObject
from podsight.ebpf import _libbpf as L
from podsight.ebpf.layout import Btf, c_layout, check_dtype, compare

HERE = Path(__file__).resolve().parent
GADGETS = Path(podsight.gadgets.__file__).resolve().parent
OBJECTS = sorted(GADGETS.glob("*/*.bpf.o"))
RECORD = np.dtype([("seq", "<u8"), ("square", "<u8"), ("tgid", "<u4"), ("_pad", "<u4")])


def declared() -> list[tuple[str, Path, str, np.dtype]]:
    """(module, object path, C type, dtype) of every LAYOUTS entry of every gadget module."""
    out = []
    for info in pkgutil.walk_packages(podsight.gadgets.__path__, "podsight.gadgets."):
        module = importlib.import_module(info.name)
        for obj, c_name, dtype in getattr(module, "LAYOUTS", ()):
            out.append((info.name, Path(module.__file__).parent / obj, c_name, np.dtype(dtype)))
    return out


LAYOUTS = declared()


def test_every_gadget_object_declares_its_layouts():
    assert OBJECTS, f"no gadget objects under {GADGETS}"
    covered = {path for _, path, _, _ in LAYOUTS}
    assert set(OBJECTS) <= covered, f"objects without LAYOUTS: {set(OBJECTS) - covered}"
    assert covered <= set(OBJECTS), f"LAYOUTS name missing objects: {covered - set(OBJECTS)}"
    for path in OBJECTS:
        assert any(c == "cfg" for _, p, c, _ in LAYOUTS if p == path), f"{path.name}: cfg?"


@pytest.fixture(scope="session")
def from_source(tmp_path_factory):
    """object path -> a companion built from its .bpf.c with the types its BTF lacks."""
    built: dict[Path, Path] = {}

    def get(obj: Path) -> Path:
        if obj not in built:
            with Btf(obj) as btf:
                missing = sorted({c for _, p, c, _ in LAYOUTS if p == obj and not btf.has(c)})
            source = obj.with_suffix(".c")
            assert source.is_file(), f"{obj.name} lacks types {missing} and its source is gone"
            out = tmp_path_factory.mktemp("layouts") / obj.name
            built[obj] = compile_with_types(source, missing, out)
        return built[obj]

    return get


@pytest.mark.parametrize(
    ("path", "c_name", "dtype"),
    [(path, c_name, dtype) for _, path, c_name, dtype in LAYOUTS],
    ids=[f"{path.name}:{c_name}" for _, path, c_name, _ in LAYOUTS],
)
def test_layout_agrees_with_the_objects_btf(path, c_name, dtype, from_source):
    with Btf(path) as btf:
        where = path if btf.has(c_name) else from_source(path)
    assert check_dtype(where, c_name, dtype) == []


def test_the_rodata_packers_write_what_their_dtypes_read():
    """What the gadgets write into .rodata and LPM keys, decoded with the dtypes the BTF
    check covers."""
    from podsight.gadgets.flows import flows
    from podsight.gadgets.tcpconnect import tcpconnect
    from podsight.net.rules import Rule, lpm_entries

    tc = tcpconnect.TcpConnectConfig(pid=4242, dport=8080, failed_only=True,
                                     min_latency_ns=7_000_000, ring_bytes=1 << 20)
    (cfg,) = np.frombuffer(tc.rodata(), tcpconnect.CFG_DTYPE)
    assert (int(cfg["min_latency_ns"]), int(cfg["pid"]), int(cfg["wakeup_bytes"]),
            int(cfg["dport"]), int(cfg["filter_netns"]), int(cfg["failed_only"])) == (
        7_000_000, 4242, 1 << 18, 8080, 0, 1)

    rules = (
        Rule(port=(1, 2), sport=(3, 4), dport=(5, 6), tcp_flags=0x12, direction=2,
             protocol=0, cidrs=("10.0.0.0/8",), icmp_type=3, icmp_code=None),
        Rule(peers=("10.1.0.0/16",), icmp_code=9),
    )
    fc = flows.FlowsConfig(rtt=True, dns=True, rules=rules, ring_bytes=1 << 16, purge_reason=77)
    (cfg,) = np.frombuffer(fc.rodata(), flows.CFG_DTYPE)
    assert [int(cfg[k]) for k in ("nrules", "wakeup_bytes", "any_cidr", "any_peer", "rtt",
                                  "drops", "dns", "purge_reason")] == [
        2, 1 << 14, 1, 1, 1, 0, 1, 77]
    first, second = cfg["rules"][0], cfg["rules"][1]
    assert [int(first[k]) for k in flows.RULE_DTYPE.names if not k.startswith("_")] == [
        1, 2, 3, 4, 5, 6, 0x12, 2, 0, 1, 0, 1, 3, 0, 0]
    assert (int(second["has_peer"]), int(second["has_icmp_code"]), int(second["icmp_code"])) \
        == (1, 1, 9)
    assert not cfg["rules"][2:].tobytes().strip(b"\0")

    (key,) = np.frombuffer(next(iter(lpm_entries(rules, "cidrs"))), flows.LPM_KEY_DTYPE)
    assert int(key["prefixlen"]) == 96 + 8 and bytes(key["addr"])[12:] == bytes([10, 0, 0, 0])


def test_the_bindings_prog_info_prefix_agrees_with_the_kernels_btf():
    """The ctypes struct bpf_prog_info of the binding, against the running kernel's own BTF."""
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("this kernel has no BTF")
    assert check_dtype("/sys/kernel/btf/vmlinux", "struct bpf_prog_info",
                       np.dtype(L.BpfProgInfo), prefix=True) == []


# -- the checker catches what it must -------------------------------------------------------


@pytest.fixture(scope="module")
def testprog(tmp_path_factory) -> Path:
    """tests/bpf/testprog.bpf.c with struct record (its ring record) emitted into BTF."""
    out = tmp_path_factory.mktemp("layouts") / "testprog.bpf.o"
    return compile_with_types(HERE / "bpf/testprog.bpf.c", ["struct record"], out)


def shifted(**moves: tuple[str, int]) -> np.dtype:
    """RECORD with fields renamed, resized or moved: name=(format, offset); None drops it."""
    names, formats, offsets = [], [], []
    for name in RECORD.names:
        fmt, off = moves.get(name, (RECORD.fields[name][0].str, RECORD.fields[name][1]))
        if fmt is not None:
            names.append(name)
            formats.append(fmt)
            offsets.append(off)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": RECORD.itemsize})


def test_the_right_dtype_agrees(testprog):
    assert check_dtype(testprog, "struct record", RECORD) == []
    layout = c_layout(testprog, "struct record")
    assert [(m.name, m.offset, m.size) for m in layout.members] == [
        ("seq", 0, 8), ("square", 8, 8), ("tgid", 16, 4), ("_pad", 20, 4)]
    assert layout.size == 24 and layout.member("tgid").type.name == "__u32"


def test_a_global_variables_anonymous_struct_is_found_in_its_section(testprog):
    cfg = np.dtype([("tgid", "<u4"), ("_pad", "<u4")])
    assert check_dtype(testprog, "cfg", cfg) == []
    with Btf(testprog) as btf:
        assert btf.section_of("cfg") == ".rodata"
        assert btf.layout("cfg").kind == "struct"
    assert check_dtype(testprog, "cfg", np.dtype([("tgid", "<u4")])) == [
        "cfg: 4 bytes in the dtype, 8 in C cfg"]


def test_a_field_added_to_the_dtype_only_is_caught(testprog):
    extra = np.dtype([*((n, RECORD.fields[n][0]) for n in RECORD.names), ("flags", "<u8")])
    assert check_dtype(testprog, "struct record", extra) == [
        "struct record: 32 bytes in the dtype, 24 in C struct record",
        "flags: in the dtype at offset 24 (8 bytes), not a member of C struct record",
    ]


def test_a_field_missing_from_the_dtype_is_caught(testprog):
    assert check_dtype(testprog, "struct record", shifted(tgid=(None, 0))) == [
        "tgid: in C at offset 16 (4 bytes), missing from the dtype"]


def test_a_shifted_resized_or_resigned_field_is_caught(testprog):
    assert check_dtype(testprog, "struct record", shifted(tgid=("<u4", 20), _pad=("<u4", 16))) \
        == ["tgid: offset 20 in the dtype, 16 in C", "_pad: offset 16 in the dtype, 20 in C"]
    assert check_dtype(testprog, "struct record", shifted(square=("<u4", 8))) == [
        "square: 4 bytes in the dtype, 8 in C (__u64)"]
    assert check_dtype(testprog, "struct record", shifted(tgid=("<i4", 16))) == [
        "tgid: <i4 in the dtype, unsigned __u32 in C"]


def test_padding_may_not_hide_a_member(testprog):
    # `_pad` may be left out (RECORD minus _pad) but a `_x` over a real member is a mistake.
    assert check_dtype(testprog, "struct record", shifted(_pad=(None, 0))) == []
    hidden = np.dtype({"names": ["seq", "_x", "tgid"], "formats": ["<u8", "V8", "<u4"],
                       "offsets": [0, 8, 16], "itemsize": 24})
    assert check_dtype(testprog, "struct record", hidden) == [
        "square: in C at offset 8 (8 bytes), missing from the dtype",
        "_x: dtype padding at bytes 8..16 overlaps C member square",
    ]


def test_a_field_added_to_the_c_struct_only_is_caught(tmp_path):
    source = (HERE / "bpf/testprog.bpf.c").read_text()
    grown = source.replace("struct record {\n\t__u64 seq;\n\t__u64 square;\n",
                           "struct record {\n\t__u64 seq;\n\t__u64 square;\n\t__u64 extra;\n")
    assert grown != source
    (tmp_path / "grown.bpf.c").write_text(grown)
    obj = compile_with_types(tmp_path / "grown.bpf.c", ["struct record"], tmp_path / "grown.o")
    assert check_dtype(obj, "struct record", RECORD) == [
        "struct record: 24 bytes in the dtype, 32 in C struct record",
        "extra: in C at offset 16 (8 bytes), missing from the dtype",
        "tgid: offset 16 in the dtype, 24 in C",
        "_pad: offset 20 in the dtype, 28 in C",
    ]


def with_changes(dtype: np.dtype, **changes: tuple[object, int]) -> np.dtype:
    """``dtype`` with some fields given another (format, offset); same size."""
    names = list(dtype.names)
    formats = [changes.get(n, (dtype.fields[n][0], 0))[0] for n in names]
    offsets = [changes[n][1] if n in changes else dtype.fields[n][1] for n in names]
    return np.dtype({"names": names, "formats": formats, "offsets": offsets,
                     "itemsize": dtype.itemsize})


def test_nested_structs_and_arrays_are_checked_inside():
    """flows' cfg nests struct rule[8]: a wrong field inside a rule is found by its path."""
    from podsight.gadgets.flows import flows

    at = flows.CFG_DTYPE.fields["rules"][1]
    swapped = with_changes(flows.RULE_DTYPE, sport_lo=("<u2", 6), sport_hi=("<u2", 4))
    bad_cfg = with_changes(flows.CFG_DTYPE, rules=((swapped, (flows.MAX_RULES,)), at))
    assert check_dtype(GADGETS / "flows/flows.bpf.o", "cfg", bad_cfg) == [
        "rules[].sport_lo: offset 6 in the dtype, 4 in C",
        "rules[].sport_hi: offset 4 in the dtype, 6 in C",
    ]
    few = with_changes(flows.CFG_DTYPE, rules=((flows.RULE_DTYPE, (4,)), at))
    assert check_dtype(GADGETS / "flows/flows.bpf.o", "cfg", few) == [
        "rules: 96 bytes in the dtype, 192 in C (struct rule[8])"]
    as_bytes = with_changes(flows.CFG_DTYPE, rules=("V192", at))  # opaque bytes: size only
    assert check_dtype(GADGETS / "flows/flows.bpf.o", "cfg", as_bytes) == []


def test_unknown_types_and_unreadable_files(testprog, tmp_path):
    assert check_dtype(testprog, "struct nope", RECORD) == [
        "struct nope: not in the BTF of testprog.bpf.o"]
    with Btf(testprog) as btf, pytest.raises(BadObject, match="has no struct nope in its BTF"):
        btf.layout("struct nope")
    half = tmp_path / "half.bpf.o"
    half.write_bytes(testprog.read_bytes()[:1000])
    with pytest.raises(BadObject, match=r"cannot read the BTF of .*make bpf"):
        check_dtype(half, "struct record", RECORD)


def test_compare_rules_on_hand_made_layouts():
    """Bitfields and prefixes, on the kernel's own struct bpf_prog_info."""
    if not Path("/sys/kernel/btf/vmlinux").exists():
        pytest.skip("this kernel has no BTF")
    info = c_layout("/sys/kernel/btf/vmlinux", "struct bpf_prog_info")
    gpl = info.member("gpl_compatible")
    assert (gpl.bits, gpl.bit_offset, gpl.offset) == (1, 84 * 8, 84)
    head = np.dtype([("type", "<u4"), ("id", "<u4")])
    assert compare(info, head, prefix=True) == []
    assert compare(info, np.dtype([("type", "<u4"), ("idd", "<u4")]), prefix=True) == [
        "id: in C at offset 4 (4 bytes), missing from the dtype",
        "idd: in the dtype at offset 4 (4 bytes), not a member of C struct bpf_prog_info"]
    binding = np.dtype(L.BpfProgInfo)
    assert compare(info, with_changes(binding, gpl_compatible=("u1", 84)), prefix=True) == []
    assert compare(info, with_changes(binding, gpl_compatible=("u1", 85)), prefix=True) == [
        "gpl_compatible: bitfield at bit 672 (1 bits) in C, the dtype has bytes 85..86"]
    assert compare(info, binding) == [
        "struct bpf_prog_info: 224 bytes in the dtype, 232 in C struct bpf_prog_info",
        "attach_btf_obj_id: in C at offset 220 (4 bytes), missing from the dtype",
        "attach_btf_id: in C at offset 224 (4 bytes), missing from the dtype",
    ]  # without prefix=True, the kernel's newer fields are required
