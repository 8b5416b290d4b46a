"""What a whole-packet capture costs in memory: its kernel buffers are allocated whole when
the object loads and charged to the capture's memory cgroup, so their default must fit a
podsight agent (the DaemonSet's limit) on a node of any size, and a capture whose kernel
buffers do not fit its cgroup must say so in one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from packetsrun import tshark

from podsight.gadgets.packets import capture
from podsight.outputs import directio

ROOT = Path(__file__).resolve().parent.parent
DAEMONSET = ROOT / "src/podsight/cluster/manifests/daemonset.yaml"
PODSIGHT = [sys.executable, "-m", "podsight.cli.main"]
MIB = 1 << 20


def _agent_limit() -> int:
    """The podsight agent container's memory limit in the DaemonSet, in bytes."""
    for doc in yaml.safe_load_all(DAEMONSET.read_text()):
        if doc and doc.get("kind") == "DaemonSet":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                limit = c.get("resources", {}).get("limits", {}).get("memory")
                if limit:
                    m = re.fullmatch(r"(\d+)([MG])i", limit)
                    assert m, limit
                    return int(m[1]) << (20 if m[2] == "M" else 30)
    raise AssertionError("no memory limit in the DaemonSet")


def _whole_packet_bytes(ncpu: int) -> int:
    elems = capture.stream_elems(None, ncpu)
    streams = ncpu * elems * capture.STREAM_ELEM
    return streams + capture.index_bytes(ncpu, elems) + directio.PARTS * directio.PART


@pytest.mark.parametrize("ncpu", [1, 2, 4, 8, 16, 32, 64, 96])
def test_default_whole_packet_buffers_fit_half_an_agent_on_any_node(ncpu):
    """Streams, index and staging by default, on a node of ``ncpu`` CPUs: at most half the
    agent's limit (the rest is Python, the other gadgets, the records in flight). At 32M
    per CPU with no budget, 16 CPUs already needed 512M + 64M + 32M."""
    assert _whole_packet_bytes(ncpu) <= _agent_limit() // 2
    # and no CPU is starved: at least one element, 32M where the budget allows it
    elems = capture.stream_elems(None, ncpu)
    assert elems >= 1
    if ncpu <= capture.STREAM_BUDGET // capture.STREAM_PER_CPU_DEFAULT:
        assert elems * capture.STREAM_ELEM == capture.STREAM_PER_CPU_DEFAULT


def test_buffer_size_is_per_cpu_and_bounded():
    assert capture.stream_elems(96 * MIB, 64) * capture.STREAM_ELEM == 96 * MIB
    assert capture.stream_elems(4096, 2) == 1  # one element at least
    assert capture.stream_elems(1 << 30, 2) == capture.MAX_ELEMS


@pytest.fixture
def memcg() -> Iterator[Path]:
    """A cgroup v1 memory group of our own (as this machine mounts it), removed after."""
    base = Path("/sys/fs/cgroup/memory")
    if not (base / "memory.limit_in_bytes").exists():
        pytest.skip("no cgroup v1 memory controller here")
    group = base / f"podsight-test-{os.getpid()}"
    group.mkdir()
    try:
        yield group
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:  # its last task is still exiting
                time.sleep(0.1)


def _capture_in(group: Path, limit: int, out: Path) -> subprocess.CompletedProcess[str]:
    (group / "memory.limit_in_bytes").write_text(str(limit))
    join = f"echo $$ > {group}/cgroup.procs && exec \"$@\""
    return subprocess.run(["sh", "-c", join, "sh", *PODSIGHT, "packets", "--host", "-i", "lo",
                           "-s", "262144", "--max-time", "1", "-w", str(out), "--no-tui"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=120, check=False)


def test_whole_packets_run_in_half_an_agents_memory(memcg, tmp_path):
    """The default whole-packet capture, in a memory cgroup limited to half the agent's
    limit: it loads, captures and leaves a valid file."""
    out = tmp_path / "lo.pcapng"
    done = _capture_in(memcg, _agent_limit() // 2, out)
    assert done.returncode == 0, done.stderr
    assert "packets captured" in done.stderr
    tshark(out)  # reads the file (raises if it cannot)


def test_buffers_that_do_not_fit_the_cgroup_get_one_line(memcg, tmp_path):
    """A limit below the kernel buffers: the kernel refuses the maps (ENOMEM), and the
    user reads which buffers and what to do, in one line, exit 2."""
    out = tmp_path / "lo.pcapng"
    done = _capture_in(memcg, 40 * MIB, out)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert re.search(r"kernel buffers of this capture \(\d+ MiB\) do not fit", lines[0])
    assert "--buffer-size" in lines[0]
