"""The binding's errors: classes callers can test for, each a one-line message naming the
operation and the object. Provoked for real: a veth deleted before attaching to its ifindex,
truncated and foreign object files, use after close, a hook no kernel has.

Tests not marked ``root`` pass as an unprivileged user (test_noroot.py runs them as nobody)."""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from bpfbuild import compile_bpf

import podsight.gadgets
from podsight.ebpf import (
    BadObject,
    BpfError,
    BpfObject,
    Closed,
    InterfaceGone,
    InvalidArgument,
    LibbpfError,
    NotSupported,
    PermissionDenied,
    TcHook,
)
from podsight.ebpf.layout import Btf
from podsight.ebpf.system import preflight
from podsight.errors import EnvironmentProblem, UserError

HERE = Path(__file__).resolve().parent
FLOWS_OBJECT = Path(podsight.gadgets.__file__).parent / "flows" / "flows.bpf.o"
CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture(scope="module")
def testprog(tmp_path_factory) -> Path:
    return compile_bpf(HERE / "bpf/testprog.bpf.c",
                       tmp_path_factory.mktemp("bpf") / "testprog.bpf.o")


def one_line(exc: BaseException) -> str:
    """What the CLI prints: the message, which must be one line."""
    text = str(exc)
    assert "\n" not in text and text, repr(text)
    return text


# -- stale, truncated and foreign objects (no root: opening an object is user space) ----------


@pytest.mark.parametrize("keep", [0, 64, 0.5])
def test_truncated_object_says_reinstall(tmp_path, keep):
    data = FLOWS_OBJECT.read_bytes()
    cut = tmp_path / "flows.bpf.o"
    cut.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(BadObject) as err:
        BpfObject(cut)
    text = one_line(err.value)
    assert str(cut) in text and "reinstall podsight" in text and "make bpf" in text
    assert isinstance(err.value, EnvironmentProblem)
    with pytest.raises(BadObject, match="reinstall podsight"):
        Btf(cut)


@pytest.mark.parametrize("content", ["elf", "text"])
def test_a_file_that_is_not_a_bpf_object_says_reinstall(tmp_path, content):
    fake = tmp_path / "tcpconnect.bpf.o"
    if content == "elf":
        shutil.copy("/bin/true", fake)  # an ELF, for this machine, not for BPF
    else:
        fake.write_text("version https://git-lfs.github.com/spec/v1\n")  # an LFS pointer
    with pytest.raises(BadObject) as err:
        BpfObject(fake)
    assert "not a BPF object" in one_line(err.value) and "make bpf" in str(err.value)


def test_an_object_that_does_not_match_the_code_is_bad(testprog):
    with BpfObject(testprog) as obj:
        with pytest.raises(BadObject, match=r"^testprog.bpf.o has no map 'events': .*make bpf"):
            obj.map("events")
        with pytest.raises(BadObject, match="has no program 'flows_ingress'"):
            obj.program("flows_ingress")
        with pytest.raises(BadObject) as err:
            obj.map(".rodata").set_initial_value(struct.pack("<I", 1))
        assert "holds 8 bytes but podsight packs 4" in one_line(err.value)
        with pytest.raises(BadObject, match="4-byte keys but podsight passed 8"):
            obj.map("table").update(struct.pack("<Q", 1), struct.pack("<Q", 1))


def test_missing_object_is_bad_and_an_environment_problem(tmp_path):
    with pytest.raises(BadObject, match="is missing: reinstall podsight") as err:
        BpfObject(tmp_path / "nope.bpf.o")
    assert isinstance(err.value, EnvironmentProblem)


# -- closed objects, bad arguments -----------------------------------------------------------


def test_use_after_close_is_closed_not_a_crash(testprog):
    obj = BpfObject(testprog)
    prog = obj.program("on_getpgid")
    ring = obj.map("ring")
    obj.close()
    # libbpf freed both: touching their pointers now would crash the process.
    with pytest.raises(Closed, match=r"program on_getpgid of testprog\.bpf\.o is closed"):
        _ = prog.fd
    with pytest.raises(Closed, match=r"map ring of testprog\.bpf\.o is closed"):
        _ = ring.max_entries
    with pytest.raises(Closed, match=r"eBPF object testprog\.bpf\.o is closed"):
        obj.map("ring")
    with pytest.raises(Closed):
        prog.info()
    obj.close()  # twice is fine


def test_program_not_loaded_and_bad_arguments(testprog):
    with BpfObject(testprog) as obj:
        prog = obj.program("count_packets")
        with pytest.raises(BpfError, match=r"count_packets of testprog\.bpf\.o is not loaded"):
            _ = prog.fd
        with pytest.raises(InvalidArgument, match="ingress or egress, not 'sideways'") as err:
            TcHook(prog, "lo", "sideways")
        assert isinstance(err.value, ValueError)


def test_every_class_is_a_one_line_user_error():
    err = LibbpfError("bpf_link_create", 19, op="attach x to ifindex 7 egress")
    assert str(err) == "cannot attach x to ifindex 7 egress: No such device"
    assert err.errno == 19 and err.func == "bpf_link_create"
    assert isinstance(err, OSError) and isinstance(err, BpfError) and isinstance(err, UserError)
    assert str(LibbpfError("bpf_object__open_file", 4001)) == (
        "bpf_object__open_file: BPF object format invalid")  # libbpf's own errno, libbpf's own text
    for cls in (NotSupported, PermissionDenied, BadObject, InterfaceGone, Closed,
                InvalidArgument):
        assert issubclass(cls, BpfError) and issubclass(cls, UserError)
        assert cls("x", errno=5).errno == 5


def test_loading_without_privilege_is_permission_denied(testprog):
    if os.geteuid() == 0:
        pytest.skip("root may load: test_noroot.py runs this as nobody")
    with BpfObject(testprog) as obj, pytest.raises(PermissionDenied) as err:
        obj.load()
    assert "run podsight as root" in one_line(err.value)


# -- the kernel says no --------------------------------------------------------------------


@pytest.mark.root
@root_only
def test_a_hook_the_kernel_lacks_is_not_supported(testprog):
    preflight(tracefs=True)
    with BpfObject(testprog) as obj:
        obj.load()
        with pytest.raises(NotSupported) as err:
            obj.program("no_such_hook").attach()
        text = one_line(err.value)
        assert text.startswith("cannot attach no_such_hook of testprog.bpf.o to "
                               "tracepoint/podsight_test/no_such_event: ")
        assert obj.links == []


@contextmanager
def inside_netns(name: str) -> Iterator[None]:
    """Run this thread in network namespace ``name``, and come back (setns on the thread)."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
    finally:
        os.close(own)
        os.close(target)


@pytest.fixture
def vanished_veth() -> Iterator[tuple[str, int]]:
    """(netns, ifindex) of a veth made in a throwaway netns and deleted again."""
    ns = f"psl-gone-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "pslgone0", "type", "veth", "peer", "name",
                        "pslgone1"], check=True)
        shown = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "pslgone0"],
                               capture_output=True, text=True, check=True).stdout
        ifindex = int(json.loads(shown)[0]["ifindex"])
        subprocess.run(["ip", "-n", ns, "link", "del", "pslgone0"], check=True)
        yield ns, ifindex
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.mark.root
@root_only
@pytest.mark.parametrize("mode", ["auto", "tcx", "clsact"])
def test_attaching_to_a_vanished_interface_is_interface_gone(testprog, vanished_veth, mode):
    """A pod deleted while flows attaches to its veth: a class the caller skips on."""
    ns, ifindex = vanished_veth
    preflight(net_admin=True)
    with BpfObject(testprog) as obj:
        obj.load()
        prog = obj.program("count_packets")
        with inside_netns(ns), pytest.raises(InterfaceGone) as err:
            TcHook(prog, ifindex, "egress", mode=mode)
    text = one_line(err.value)
    assert text.startswith(f"cannot attach count_packets to ifindex {ifindex} egress (")
    assert text.endswith("the interface is gone"), text
    assert err.value.errno is not None
    assert isinstance(err.value, UserError)  # flows_run's `except UserError` skips the interface


@pytest.mark.root
@root_only
def test_attaching_to_an_unknown_interface_name_is_interface_gone(testprog):
    preflight(net_admin=True)
    with BpfObject(testprog) as obj:
        obj.load()
        with pytest.raises(InterfaceGone, match="to psl-nosuch ingress: no such interface"):
            TcHook(obj.program("count_packets"), "psl-nosuch", "ingress")
