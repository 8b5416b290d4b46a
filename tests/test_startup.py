"""Startup, in the order a user meets it: checks first, then files; selectors that match
nothing yet are said, not silently traced.

A run that cannot start (no root, a dead API server) says why in one line
and leaves no output file behind, so the next run is not refused with
"exists". The kernel checks come before anything that needs the kernel
(``--drops`` reads drop reasons from BTF only after the preflight).
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

PODSIGHT = [sys.executable, "-m", "podsight.cli.main"]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]


def podsight(*argv: str, as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    if as_nobody:
        src = str(Path(__file__).resolve().parent.parent / "src")
        env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "PYTHONPATH": os.pathsep.join(
            [src, sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])}
        cmd = [*NOBODY, "/usr/bin/python3", "-m", "podsight.cli.main", *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd="/")
    return subprocess.run([*PODSIGHT, *argv], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("gadget", [["flows", "--drops"], ["trace", "tcpconnect"]],
                         ids=["flows --drops", "trace"])
def test_no_root_is_one_line_and_no_file(gadget):
    where = Path(tempfile.mkdtemp(prefix="podsight-test-", dir="/tmp"))
    where.chmod(0o777)  # nobody may create the file: only the missing root stops the run
    db = where / "out.db"
    p = podsight(*gadget, "--sqlite", str(db), as_nobody=True)
    assert p.returncode == 1, p.stderr
    assert p.stderr.splitlines() == [
        "podsight: error: podsight needs root (or CAP_BPF and CAP_PERFMON) to load eBPF "
        "programs: run it with sudo"] or "CAP_NET_ADMIN" in p.stderr, p.stderr
    assert not db.exists()
    where.rmdir()


def test_a_dead_api_server_is_one_line_and_no_file(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("""apiVersion: v1
kind: Config
clusters: [{name: dead, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: dead, user: u}}]
current-context: c
""")
    db = tmp_path / "out.db"
    p = podsight("trace", "tcpconnect", "--kubeconfig", str(kubeconfig), "--sqlite", str(db))
    lines = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(lines) == 1 and lines[0].startswith("podsight: error:"), \
        p.stderr
    assert "127.0.0.1:1" in lines[0] or "refused" in lines[0].lower(), lines[0]
    assert not db.exists()


@pytest.mark.parametrize("argv", [["trace", "tcpconnect", "-p", "nosuchpod"],
                                  ["flows", "-n", "nosuchns"]], ids=["trace -p", "flows -n"])
def test_a_selector_that_matches_nothing_yet_is_said(argv, lab):
    p = podsight(*argv, "--timeout", "1", "-o", "json")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 0, p.stderr
    flag = " ".join(argv[-2:])
    assert f"podsight: warning: no pod matches {flag} yet; its traffic is captured as soon " \
           "as one does" in lines, p.stderr
    assert lines[-1].startswith("podsight: 0 "), p.stderr
