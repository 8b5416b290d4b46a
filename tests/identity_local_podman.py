"""Test helper: a private podman API service, for testing the Docker Engine API client for real.

``podman system service`` serves Docker's Engine API (the compat endpoints) on a unix
socket, so the same client code that talks to dockerd is tested against a real
daemon running real containers. Every podman path podman lets us choose is under a
temporary directory; what it writes elsewhere regardless (containers/image's blob
info cache under /var/lib/containers, CNI's lock under /etc/cni/net.d) is removed
after if it was not there before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from identity_local_containerd import IMAGE_REF

# What podman 4.3 writes outside our directory whatever its flags say: removed after,
# only if it was not there before. (/run/runc: conmon's exit command, `podman container
# cleanup`, is not given --runtime-flag, so its runc uses the default root.)
OUTSIDE = (Path("/var/lib/containers"), Path("/etc/cni/net.d/cni.lock"), Path("/run/runc"))
RUNC_ROOT = Path("/run/runc")

# Podman asks runc for RLIMIT_NOFILE/NPROC of 1048576; a root without CAP_SYS_RESOURCE
# (as in this sandbox, whose hard limits are lower) cannot grant that.
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096")


class PrivatePodman:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="podsight-test-podman-"))
        self.socket = str(self.dir / "podman.sock")
        self.base = [
            "podman",
            "--root", str(self.dir / "root"),
            "--runroot", str(self.dir / "runroot"),
            "--tmpdir", str(self.dir / "tmp"),
            "--volumepath", str(self.dir / "volumes"),
            "--network-config-dir", str(self.dir / "net"),
            "--storage-driver", "overlay",
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
            "--runtime", "runc",
            "--runtime-flag", f"root={self.dir / 'runc'}",
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "service.log"
        self._existed = {path: path.exists() for path in OUTSIDE}
        self.container_ids: list[str] = []

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.base, *args], capture_output=True, text=True,
                              check=check, timeout=120)

    def start(self, timeout: float = 30.0) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [*self.base, "system", "service", "--time=0", f"unix://{self.socket}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"podman service exited: {self.log.read_text()[-2000:]}")
            if self._ping():
                return
            time.sleep(0.1)
        raise RuntimeError(f"podman service did not answer: {self.log.read_text()[-2000:]}")

    def _ping(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(self.socket)
                sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
                return sock.recv(4096).startswith(b"HTTP/1.")
        except OSError:
            return False

    def load(self, tarball: Path) -> None:
        self.podman("load", "-i", str(tarball))

    def run(self, name: str, *, labels: dict[str, str] | None = None, netns: str = "",
            cgroup_parent: str = "") -> tuple[str, int]:
        """``podman run -d`` a busybox sleeper; returns (id, pid) as podman inspect says."""
        argv = ["run", "-d", "--name", name, *ULIMITS]
        for key, value in (labels or {}).items():
            argv += ["--label", f"{key}={value}"]
        argv += ["--network", f"ns:{netns}" if netns else "none"]
        if cgroup_parent:
            argv += ["--cgroup-parent", cgroup_parent]
        container_id = self.podman(*argv, IMAGE_REF, "sleep", "3600").stdout.strip()
        self.container_ids.append(container_id)
        pid = int(self.podman("inspect", "--format", "{{.State.Pid}}", container_id).stdout)
        return container_id, pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.podman("rm", "--all", "--force", "--time", "0", check=False)
            self.podman("rmi", "--all", "--force", check=False)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        # conmon runs `podman container cleanup` when a container exits: let those finish.
        deadline = time.monotonic() + 10
        while self._our_processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in self._our_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for container_id in self.container_ids:  # runc state of our containers only
            shutil.rmtree(RUNC_ROOT / container_id, ignore_errors=True)
        prefix = str(self.dir) + "/"
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f if line.split()[4].startswith(prefix)]
        for point in reversed(points):
            subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        for path, existed in self._existed.items():
            if existed or not path.exists():
                continue
            if path == RUNC_ROOT:
                with contextlib.suppress(OSError):
                    path.rmdir()  # only if empty: anything else in it is not ours
            elif path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _our_processes(self) -> list[int]:
        """conmon and podman processes started for our directory (they can outlive the service)."""
        found = []
        needle = str(self.dir).encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if needle in f.read():
                        found.append(int(entry))
            except OSError:
                continue
        return found
