"""Faults a long capture meets: a disk that fills, an interface that vanishes and comes back.

A full disk ends the run with its summary and one error line (exit 1), and
leaves every file valid: JSON lines cut back to whole lines, SQLite whole
transactions. An interface that goes away mid-run is detached and the run
goes on; one that (re)appears matching ``--interfaces`` is attached.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tracing import refused_connects

pytestmark = pytest.mark.root

PODSIGHT = [sys.executable, "-m", "podsight.cli.main"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: full after a few thousand records, tens of batches."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def connect_storm() -> Iterator[None]:
    with refused_connects(0.0005):  # a few thousand a second: many small batches, not one huge
        yield


def test_json_to_a_full_disk(small_disk, connect_storm):
    out = small_disk / "out.json"
    with out.open("w") as f:
        p = subprocess.run([*PODSIGHT, "trace", "tcpconnect", "-o", "json", "--timeout", "60"],
                           stdout=f, stderr=subprocess.PIPE, text=True, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1, p.stderr
    assert lines[-1] == "podsight: error: writing output: No space left on device", p.stderr
    assert lines[-2].startswith("podsight: ") and "events not written" in lines[-2]
    text = out.read_text()
    assert text.endswith("\n") and len(text) > 1_000_000
    for line in text.splitlines():
        json.loads(line)


def test_sqlite_on_a_full_disk(small_disk, connect_storm):
    db = small_disk / "out.db"
    p = subprocess.run([*PODSIGHT, "trace", "tcpconnect", "-o", "json", "--sqlite", str(db),
                        "--timeout", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       text=True, timeout=120)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1, p.stderr
    assert lines[-1].startswith(f"podsight: error: writing {db}: database or disk is full"), \
        p.stderr
    assert "not written" in lines[-2]
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT count(*) FROM tcpconnect").fetchone()[0] > 100


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


class VethPeer:
    """A veth ``pslft0`` on the host whose peer sits in netns ``psl-fault`` at 10.251.0.2."""

    def __init__(self) -> None:
        self.up()

    def up(self) -> None:
        ip("netns", "add", "psl-fault")
        ip("link", "add", "pslft0", "type", "veth", "peer", "name", "eth0", "netns", "psl-fault")
        ip("addr", "add", "10.251.0.1/30", "dev", "pslft0")
        ip("link", "set", "pslft0", "up")
        ip("-n", "psl-fault", "addr", "add", "10.251.0.2/30", "dev", "eth0")
        ip("-n", "psl-fault", "link", "set", "eth0", "up")

    def down(self) -> None:
        subprocess.run(["ip", "netns", "del", "psl-fault"], check=False)  # takes the veth along
        subprocess.run(["ip", "link", "del", "pslft0"], check=False, capture_output=True)

    def ping(self, count: int) -> None:
        subprocess.run(["ping", "-q", "-c", str(count), "-i", "0.01", "-W", "1", "10.251.0.2"],
                       check=True, capture_output=True)


@pytest.fixture
def veth() -> Iterator[VethPeer]:
    v = VethPeer()
    try:
        yield v
    finally:
        v.down()


class Lines:
    """A process's stdout lines, read by a thread, so a test can wait on them with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._proc = proc
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line)

    def count(self, text: str) -> int:
        return sum(text in line for line in list(self.lines))


def test_an_interface_that_vanishes_and_returns_is_followed(veth):
    proc = subprocess.Popen([*PODSIGHT, "flows", "--interfaces", "pslft*", "--interval", "0.2",
                             "-o", "json", "--protocol", "icmp"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        assert "capturing flows on 1 interface" in proc.stderr.readline()
        out = Lines(proc)
        deadline = time.monotonic() + 20
        while not out.count('"name":"pslft0"') and time.monotonic() < deadline:
            veth.ping(2)
        seen = out.count('"name":"pslft0"')
        assert seen, "the interface's flows were never reported"
        veth.down()  # the interface vanishes under the capture
        veth.up()  # a new one with the same name (another ifindex) appears: followed
        deadline = time.monotonic() + 20
        while out.count('"name":"pslft0"') == seen and time.monotonic() < deadline:
            veth.ping(2)
            assert proc.poll() is None, "the run must go on"
        assert out.count('"name":"pslft0"') > seen, "the new interface was never observed"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        assert proc.stderr is not None
        err = proc.stderr.read()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("podsight: ")
