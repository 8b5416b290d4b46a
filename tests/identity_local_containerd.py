"""Test helpers: a private containerd, and a container image built here from busybox.

No registry is reachable, so the image is an OCI image layout written by hand: one
layer holding Debian's static busybox, imported with ``ctr image import``. The
daemon runs with its own root, state, sockets and runc root under a temporary
directory; the only things it puts outside are the shim's socket under
/run/containerd/s (removed by the shim when it exits) and, on a machine without
containerd, the empty /run/containerd directories, which are removed after.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = "/usr/bin/busybox"  # Debian's busybox-static: no shared libraries to bring
IMAGE_REF = "podsight.test/busybox:1"
SYSTEM_STATE = Path("/run/containerd")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tar(entries: list[tuple[str, bytes | str | None, int]]) -> bytes:
    """A tar of (name, content, mode): bytes is a file, str a symlink target, None a dir."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, 0
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def build_busybox_image(dest: Path, ref: str = IMAGE_REF) -> Path:
    """Write an OCI image layout tarball whose only layer is busybox; returns its path."""
    busybox = Path(BUSYBOX).read_bytes()
    dirs = [(d, None, 0o755) for d in ("bin", "dev", "etc", "proc", "sys", "run")]
    layer = _tar([
        *dirs,
        ("tmp", None, 0o1777),
        ("bin/busybox", busybox, 0o755),
        *((f"bin/{tool}", "busybox", 0o777) for tool in ("sh", "sleep", "cat", "ip")),
    ])
    config = json.dumps({
        "architecture": "amd64" if os.uname().machine == "x86_64" else "arm64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sleep", "3600"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": _digest(config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": _digest(layer), "size": len(layer)}],
    }).encode()
    index = json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": _digest(manifest), "size": len(manifest),
                       "annotations": {"org.opencontainers.image.ref.name": ref}}],
    }).encode()
    blobs = [(f"blobs/sha256/{_digest(b)[7:]}", b, 0o644) for b in (layer, config, manifest)]
    path = dest / "busybox-oci.tar"
    path.write_bytes(_tar([
        ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644),
        ("index.json", index, 0o644),
        ("blobs", None, 0o755),
        ("blobs/sha256", None, 0o755),
        *blobs,
    ]))
    return path


@dataclass
class Task:
    container_id: str
    pid: int


class PrivateContainerd:
    """containerd started for one test session, sharing nothing with the machine's."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="podsight-test-containerd-"))
        self.socket = str(self.dir / "containerd.sock")
        self.namespace = "podsight-test-" + secrets.token_hex(3)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "containerd.log"
        self._system_state_existed = SYSTEM_STATE.exists()
        self.containers: list[str] = []

    def start(self, timeout: float = 20.0) -> None:
        config = self.dir / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.dir}/root"\n'
            f'state = "{self.dir}/state"\n'
            # No CRI: it would want CNI and a pause image; the gRPC API is what we test.
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{self.socket}"\n'
            f'[ttrpc]\n  address = "{self.socket}.ttrpc"\n'
            f'[debug]\n  address = "{self.dir}/debug.sock"\n'
        )
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                ["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited: {self.log.read_text()[-2000:]}")
            if os.path.exists(self.socket) and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"containerd did not answer: {self.log.read_text()[-2000:]}")

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "--address", self.socket, "--namespace", self.namespace, *args],
            capture_output=True, text=True, check=check, timeout=timeout,
        )

    def import_image(self, tarball: Path) -> None:
        self.ctr("image", "import", str(tarball))

    def run(self, container_id: str, *, labels: dict[str, str] | None = None,
            netns: str = "", cgroup: str = "", args: tuple[str, ...] = ()) -> Task:
        """``ctr run -d`` a busybox container; returns its task as ``ctr task ls`` shows it."""
        argv = ["run", "-d", "--null-io", "--runc-root", str(self.dir / "runc"),
                "--fifo-dir", str(self.dir / "fifo")]
        for key, value in (labels or {}).items():
            argv += ["--label", f"{key}={value}"]
        if netns:
            argv += ["--with-ns", f"network:{netns}"]
        if cgroup:
            argv += ["--cgroup", cgroup]
        self.containers.append(container_id)
        self.ctr(*argv, IMAGE_REF, container_id, *args)
        return Task(container_id, self.task_pids()[container_id])

    def task_pids(self) -> dict[str, int]:
        """container id -> pid from ``ctr task ls``: the oracle the client is checked against."""
        out = self.ctr("task", "ls").stdout.splitlines()[1:]
        return {line.split()[0]: int(line.split()[1]) for line in out if line.strip()}

    def remove(self, container_id: str) -> None:
        if container_id in self.task_pids():
            self.ctr("task", "kill", "--signal", "SIGKILL", container_id, check=False)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if self.ctr("task", "delete", container_id, check=False).returncode == 0:
                    break
                time.sleep(0.1)
        self.ctr("container", "delete", container_id, check=False)

    def stop(self) -> None:
        """Remove every container, stop the daemon and its shims, unmount, delete the dir."""
        if self.proc is not None and self.proc.poll() is None:
            for container_id in self.containers:
                self.remove(container_id)
            self.ctr("image", "rm", IMAGE_REF, check=False)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._kill_our_shims()
        self._unmount_below(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)
        if not self._system_state_existed:
            for leftover in ("s", "fifo", f"runc/{self.namespace}", "runc", ""):
                with contextlib.suppress(OSError):  # only if empty: never anyone else's
                    (SYSTEM_STATE / leftover).rmdir()

    def _kill_our_shims(self) -> None:
        """Shims outlive containerd by design; ours are the ones given our socket address."""
        for pid in our_shim_pids(self.socket):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    @staticmethod
    def _unmount_below(directory: Path) -> None:
        prefix = str(directory) + "/"
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f if line.split()[4].startswith(prefix)]
        for point in reversed(points):
            subprocess.run(["umount", "-l", point], check=False)


def our_shim_pids(socket: str) -> list[int]:
    """Pids of containerd-shim processes started for the daemon at ``socket``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and b"containerd-shim" in argv[0] and socket.encode() in argv:
            found.append(int(entry))
    return found


@contextlib.contextmanager
def running_containerd(*, need_cgroup2: bool = False) -> Iterator[PrivateContainerd]:
    """A private containerd with the busybox image imported; stopped and removed after,
    with its cgroups in every hierarchy. Skips (pytest) when the tools are missing."""
    import pytest
    from identity_local_sys import cgroup_mounts, remove_cgroup_tree

    from podsight.identity.local.cgroups import cgroup2_root

    if os.geteuid() != 0:
        pytest.skip("running containers needs root")
    missing = [tool for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2")
               if shutil.which(tool) is None]
    if missing or not os.path.exists("/usr/bin/busybox"):
        pytest.skip(f"needs Debian's containerd, runc and busybox-static (missing: {missing})")
    if need_cgroup2 and cgroup2_root() is None:
        pytest.skip("needs a cgroup2 hierarchy (events carry cgroup v2 ids)")
    daemon = PrivateContainerd()
    try:
        daemon.start()
        daemon.import_image(build_busybox_image(daemon.dir))
        yield daemon
    finally:
        daemon.stop()
        # containerd's cgroups (/<namespace>/<id> by default) in every hierarchy
        for mount in cgroup_mounts():
            remove_cgroup_tree(mount, daemon.namespace)
        assert not our_shim_pids(daemon.socket)
        assert not daemon.dir.exists()
