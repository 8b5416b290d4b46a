"""Fixtures shared by the whole test suite.

Keep each fixture small and documented: a test file should be readable
without opening this one.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from podsight.lab import Lab


def _lock_path() -> Path:
    return Path(os.environ.get("PODSIGHT_TEST_LOCK", "/run/podsight-tests.lock"))


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The netns lab, built once per test session and always torn down at its end.

    Session-scoped because building it takes about half a second and every
    end-to-end test wants it. It is torn down even when a test (or ``up``
    itself) fails, so a red run never leaves namespaces, veths or the nft
    guard behind. A lab that was already up before the session is taken down
    too: tests must start from, and leave, a known machine.
    """
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (CAP_NET_ADMIN): run root tests as root, or "
                    "-m 'not root'")
    for tool in ("ip", "nft", "openssl", "dnsmasq"):
        # A missing tool would hide features the README promises: fail, do not skip.
        assert shutil.which(tool) is not None, f"the lab needs {tool}: run 'make setup-test'"
    # One test session at a time owns the lab (its names and addresses are fixed):
    # a second concurrent session waits here instead of tearing down the first's lab.
    with _lock_path().open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        instance = Lab()
        try:
            instance.up()
            yield instance
        finally:
            instance.down()


# Programs podsight and its tests load; a BPF link to any of them after the run is a leak.
OUR_PROGRAMS = {
    "inet_sock_set_state", "tcp_retransmit_skb", "inet_sk_error_report",  # tcpconnect
    "on_getpgid", "count_packets", "no_such_hook",  # tests/bpf/testprog.bpf.c
    "printk_on_getpgid", "nests", "never_nests",  # tests/bpf/recursion.bpf.c
    "flows_rtt", "flows_drops",  # flows (its tc programs are filters, not links)
    "packets_in", "packets_eg",  # packets: the per-interface entry programs (tcx links)
    "tcplife_state", "tcplife_open", "tcplife_seed",  # tcplife
}
TC_PROGRAMS = ("flows_ingress", "flows_egress", "count_packets")


#: Fixtures that need root: the lab, the real apiserver (its cache lives in root's home),
#: cgroup and container sandboxes, a throttled loop device, a ramfs mount, a memory cgroup.
ROOT_FIXTURES = {"lab", "kube", "kube_etcd_watch", "core", "namespace", "sandbox", "podman",
                 "containerd", "node", "agent_image", "slow_disk", "ramfs", "memcg"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use a root fixture need root: mark them, so ``-m 'not root'`` (which
    must pass as any user, see test_noroot.py) leaves them out."""
    for item in items:
        if ROOT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.root)


def _link_holders(kind: str = "link_id") -> dict[int, set[int]]:
    """BPF link (or prog, with kind="prog_id") id -> pids holding an fd to it (fdinfo)."""
    holders: dict[int, set[int]] = {}
    for pid_dir in Path("/proc").glob("[0-9]*"):
        try:
            for info in (pid_dir / "fdinfo").iterdir():
                for line in info.read_text().splitlines():
                    if line.startswith(f"{kind}:"):
                        holders.setdefault(int(line.split()[1]), set()).add(int(pid_dir.name))
        except OSError:
            continue
    return holders


def _ours(pid: int) -> bool:
    """Is ``pid`` this test process or one of its descendants?"""
    me = os.getpid()
    while pid > 1:
        if pid == me:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


def tc_filters_of_ours(names: list[str] | None = None) -> list[str]:
    """podsight's clsact tc filters on these interfaces (default: all), as "dev way: prog".

    A tc filter holds its program itself; it is ours unless a live process that is
    not ours (a benchmark, a user's podsight) still holds the program too.
    """
    import subprocess

    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout

    if names is None:
        names = [line.split(":")[1].strip().split("@")[0]
                 for line in run("ip", "-o", "link").splitlines()]
    prog_holders = _link_holders("prog_id")
    filters = []
    for name in names:
        for way in ("ingress", "egress"):
            for line in run("tc", "filter", "show", "dev", name, way).splitlines():
                m = re.search(r" id (\d+) name (\w+)", line)
                if not m or m[2] not in TC_PROGRAMS:
                    continue
                others = prog_holders.get(int(m[1]), set())
                if not others or any(_ours(pid) for pid in others):
                    filters.append(f"{name} {way}: {m[2]}")
    return filters


def _leftovers() -> dict[str, list[str]]:
    """Kernel and network state a podsight run must not leave behind.

    BPF links count only when this test session (or a child of it) still
    holds them: other podsight runs on the machine are not ours to judge.
    """
    import json
    import subprocess

    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout

    progs = {p["id"]: p.get("name", "") for p in json.loads(run("bpftool", "-j", "prog") or "[]")}
    holders = _link_holders()
    links = [f"link {link['id']} -> {progs.get(link.get('prog_id'), '?')}"
             for link in json.loads(run("bpftool", "-j", "link") or "[]")
             if progs.get(link.get("prog_id")) in OUR_PROGRAMS
             and any(_ours(pid) for pid in holders.get(link["id"], ()))]
    netns = [line.split()[0] for line in run("ip", "netns", "list").splitlines()
             if line.startswith("psl")]
    names = [line.split(":")[1].strip().split("@")[0]
             for line in run("ip", "-o", "link").splitlines()]
    ifaces = [name for name in names if name.startswith("psl")]
    tables = [line for line in run("nft", "list", "tables").splitlines() if "podsight" in line]
    filters = tc_filters_of_ours(names)
    return {"bpf links": links, "netns": netns, "interfaces": ifaces, "nft tables": tables,
            "tc filters": filters}


@pytest.fixture(scope="session", autouse=True)
def no_leftovers() -> Iterator[None]:
    """After the whole session (and after the lab is torn down): nothing of ours remains."""
    yield
    if os.geteuid() != 0:
        return
    # Without bpftool the check would pass by seeing nothing: that hid leaks once.
    assert shutil.which("bpftool") is not None, "bpftool is missing: run 'make setup-test'"
    with _lock_path().open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lab_is_ours = True
        except BlockingIOError:  # another test session has the lab now: not our state
            lab_is_ours = False
        left = {kind: items for kind, items in _leftovers().items()
                if items and (lab_is_ours or kind in ("bpf links", "tc filters"))}
    assert not left, f"the test session left state behind: {left}"
