"""The LocalIdentity facade: lookups for host processes, background refresh, runtime warnings.

The container paths are covered with real cgroups (test_identity_local_cgroups.py) and
real runtimes (test_identity_local_runtimes.py); this file covers what is left."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from podsight.identity.local import (
    DockerClient,
    LocalIdentity,
    RuntimeListing,
    RuntimeState,
)


def test_host_process_has_no_container() -> None:
    with LocalIdentity(runtimes=[]) as identity:
        me = identity.process(os.getpid())
        assert me is not None and me.pid == os.getpid()
        assert identity.container_for_pid(os.getpid()) is None
        if identity.cgroups.available:
            assert me.cgroup_id and identity.cgroup_path(me.cgroup_id) == me.cgroup_path
            assert identity.container_for_cgroup(me.cgroup_id) is None
        assert identity.container_for_cgroup(2**62 + 7) is None
        assert identity.process(2**22 + 1) is None  # above pid_max: no such process
        assert identity.containers() == []


def test_without_cgroup2_processes_still_resolve() -> None:
    """On a cgroup v1 only host there is no v2 id; pids and their v1 paths still work."""
    with LocalIdentity(cgroup_root=None, runtimes=[]) as identity:
        me = identity.process(os.getpid())
        assert me is not None and me.cgroup_id == 0
        assert identity.cgroup_path(1) is None
        assert identity.container_for_pid(os.getpid()) is None


@pytest.mark.root
def test_netns_names() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    name = "podsight-test-" + secrets.token_hex(3)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        names = LocalIdentity.netns_names()
        assert names[name] == os.stat(f"/var/run/netns/{name}").st_ino
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_background_refresh_warns_once_per_change(tmp_path: Path) -> None:
    """A dead runtime is polled every interval but told once (one line on the notices the
    command loop prints), and never stops the loop."""
    path = str(tmp_path / "dead.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.close()
    identity = LocalIdentity(runtimes=[DockerClient(path, timeout=0.5)])
    identity.start(interval=0.02)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if identity.cgroups.scans >= 6 and identity.listings:
                break
            time.sleep(0.01)
        [listing] = identity.listings
        assert listing.state is RuntimeState.UNREACHABLE
        assert identity.cgroups.scans >= 6  # refreshed several times ...
    finally:
        identity.close()
    warnings = identity.notices.take()
    assert len(warnings) == 1 and path in warnings[0]  # ... warned once
    assert warnings[0].startswith("podsight: warning: ") and "\n" not in warnings[0]
    scans = identity.cgroups.scans
    time.sleep(0.1)
    assert identity.cgroups.scans == scans  # close() stopped the thread


class FlakyRuntime:
    """A runtime client whose listing raises what the test says (the real clients turn their
    own failures into warnings; this is the bug in a client a poll must survive)."""

    runtime = "flaky"
    endpoint = "test"

    def __init__(self) -> None:
        self.error: Exception | None = RuntimeError("socket  closed\nmid-read")
        self.calls = 0

    def list_containers(self) -> RuntimeListing:
        error = self.error  # decided before the count moves: the test changes it after
        self.calls += 1
        if error is not None:
            raise error
        return RuntimeListing(self.runtime, self.endpoint, RuntimeState.OK, ())

    def close(self) -> None:
        pass


def test_failed_polls_are_one_line_notices_once_per_cause(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The resolver's runtime poller: a poll that raises is one line on the notices (its
    message, flattened), told once however often it repeats, again for another cause and
    after a recovery; never a traceback, unless PODSIGHT_DEBUG=1."""
    from podsight.identity import Resolver
    from podsight.identity.lab import LabInventory

    def polls(n: int) -> None:
        """Wait for n more polls to be over (the one after them has begun)."""
        target = runtime.calls + n + 1
        deadline = time.monotonic() + 10
        while runtime.calls < target:
            assert time.monotonic() < deadline, "the poller stopped polling"
            time.sleep(0.01)

    runtime = FlakyRuntime()
    local = LocalIdentity(runtimes=[runtime])
    with Resolver(lab=LabInventory(tmp_path / "none.json"), node_name="n1", local=local,
                  local_interval=0.01) as r:
        polls(2)  # (at most one poll a second: the poller's minimum gap)
        assert r.take_notices() == [
            "podsight: warning: container runtime poll failed: socket closed mid-read"]
        runtime.error = OSError("another cause")
        polls(2)
        assert r.take_notices() == [
            "podsight: warning: container runtime poll failed: another cause"]
        runtime.error = None
        polls(1)
        assert r.take_notices() == ["podsight: container runtime poll works again"]
        runtime.error = RuntimeError("socket  closed\nmid-read")
        polls(1)
        assert r.take_notices() == [
            "podsight: warning: container runtime poll failed: socket closed mid-read"]
        assert "Traceback" not in capfd.readouterr().err and not caplog.records
        monkeypatch.setenv("PODSIGHT_DEBUG", "1")
        deadline = time.monotonic() + 10
        while not any(rec.exc_info for rec in caplog.records):  # the traceback, for developers
            assert time.monotonic() < deadline, "no traceback logged with PODSIGHT_DEBUG=1"
            time.sleep(0.01)
    local.close()
