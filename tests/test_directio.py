"""Capture files written around the page cache (``O_DIRECT``): the bytes are the ones
appended, in order, after any mix of small and large appends; a filesystem that refuses
``O_DIRECT`` gets plain writes; a failed write cuts the file back to the end of
an append; a slow disk does not stop the capture until three writes wait for it. Real
files on the test's filesystem (no root), or on a loop device that the kernel's blkio
throttle makes slow (root); tshark as the oracle."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from podsight.outputs import directio, pcapng
from podsight.outputs.pcapng import PcapngOutput

SHM = Path("/dev/shm")


def _new(path: Path) -> directio.DirectFile:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    out = directio.open_direct(fd, str(path))
    if out is None:
        os.close(fd)
        pytest.skip(f"{path.parent} does not take O_DIRECT")
    return out


def test_appends_of_every_size_land_in_order(tmp_path):
    rng = np.random.default_rng(7)
    src = rng.integers(0, 256, 24 << 20, dtype=np.uint8)
    path = tmp_path / "d.bin"
    f = _new(path)
    want = bytearray()
    # Lengths around the page and the staging buffer's edges: one byte, a page exactly, a
    # page and one, many small blocks, a batch larger than a part of the buffer.
    for step in range(36):
        if step % 4 == 0:
            size = [1, 4096, 4097, 3][step // 4 % 4]
            data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            assert f.append(data) == size
            want += data
        else:
            n = [1, 900, 13000][step % 3]
            offs = rng.integers(0, len(src) - 1600, n)
            lens = rng.integers(1, 1600, n)
            iov = np.empty((n, 2), dtype=np.uint64)
            iov[:, 0] = src.ctypes.data + offs.astype(np.uint64)
            iov[:, 1] = lens
            assert f.append_iov(iov) == int(lens.sum())
            for o, n_ in zip(offs.tolist(), lens.tolist(), strict=True):
                want += src[o:o + n_].tobytes()
        assert f.size == len(want)
        if step % 5 == 0:
            f.flush()
            assert path.stat().st_size == len(want)
    f.close()
    assert path.read_bytes() == bytes(want)


def test_a_quiet_capture_file_ends_on_each_append(tmp_path):
    """Appends that fill no page: no page write is in flight, so each one is in the file at
    once (a reader of the growing file sees whole blocks)."""
    path = tmp_path / "q.bin"
    f = _new(path)
    want = b""
    for i in range(30):  # 3075 bytes in all
        data = bytes([i]) * (1 + i * 7)
        f.append(data)
        want += data
        assert path.read_bytes() == want
    f.close()
    assert path.read_bytes() == want


def _frames(n: int, payload: int):  # type: ignore[no-untyped-def]
    from podsight.pipeline import Frames

    frame = bytes(14 + 20 + 8) + b"p" * payload  # tshark counts frames, whatever they hold
    blocks = [pcapng.enhanced_packet(0, 1_700_000_000_000_000_000 + i, frame, len(frame),
                                     pcapng.INBOUND) for i in range(n)]
    buf = np.frombuffer(b"".join(blocks), dtype=np.uint8).copy()
    lengths = np.array([len(b) for b in blocks], dtype=np.int64)
    return Frames(buf, (np.cumsum(lengths) - lengths).astype(np.int64), lengths)


def _interfaces():  # type: ignore[no-untyped-def]
    from podsight.pipeline import CaptureInterface

    return [CaptureInterface(id=0, name="p/shop/pod0", description="k8s.node=vm",
                             snaplen=262144, filter="", received=5, dropped=1,
                             start_ns=1_700_000_000_000_000_000)]


def _write(path: Path, direct: bool, **kw: int) -> None:
    out = PcapngOutput(str(path), direct=direct, **kw)  # type: ignore[arg-type]
    ifaces = _interfaces()
    for n, payload in ((1, 10), (3000, 1400), (7, 60), (24000, 1450), (2, 1)):
        assert out.write_frames(_frames(n, payload), ifaces) == n
    ifaces[0].end_ns = 1_700_000_001_000_000_000
    out.close(ifaces)


def _tshark_count(path: Path) -> int:
    done = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.len"],
                          capture_output=True, text=True, check=True)
    return len(done.stdout.splitlines())


def test_a_direct_capture_file_is_the_page_cache_one_byte_for_byte(tmp_path):
    _new(tmp_path / "probe").close()  # skips where the filesystem refuses O_DIRECT
    _write(tmp_path / "plain.pcapng", direct=False)
    _write(tmp_path / "direct.pcapng", direct=True)
    plain = (tmp_path / "plain.pcapng").read_bytes()
    direct = (tmp_path / "direct.pcapng").read_bytes()
    assert len(direct) > directio.PARTS * directio.STAGE  # crossed every part of the buffer
    # The statistics block's timestamps are the same (end_ns given): the files are equal.
    assert direct == plain
    assert _tshark_count(tmp_path / "direct.pcapng") == 1 + 3000 + 7 + 24000 + 2
    assert oct((tmp_path / "direct.pcapng").stat().st_mode & 0o777) == "0o600"


def test_direct_ring_files_are_each_valid(tmp_path):
    _new(tmp_path / "probe").close()
    (tmp_path / "probe").unlink()
    _write(tmp_path / "r.pcapng", direct=True, ring=3, ring_size=5 << 20)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 3
    for path in files:
        assert _tshark_count(path) > 0


@pytest.mark.skipif(not SHM.is_dir(), reason="no /dev/shm")
def test_tmpfs_capture_file_is_valid(tmp_path):
    """tmpfs took no O_DIRECT before Linux 6.6 (then the plain path is used); either way the
    file is whole."""
    path = SHM / f"podsight-test-{os.getpid()}.pcapng"
    try:
        _write(path, direct=True)
        assert _tshark_count(path) == 1 + 3000 + 7 + 24000 + 2
    finally:
        path.unlink(missing_ok=True)


@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    """A ramfs mount: a filesystem that refuses ``O_DIRECT`` (no direct I/O at all)."""
    mnt = tmp_path / "ramfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(mnt)], check=True,
                   capture_output=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False, capture_output=True)


def test_a_filesystem_that_refuses_o_direct_gets_the_page_cache_file(tmp_path, ramfs):
    """ramfs refuses ``O_DIRECT`` at open: the capture writes through the page cache
    instead, and the file is the same, byte for byte, as a page-cache one elsewhere."""
    with pytest.raises(OSError):
        os.close(os.open(ramfs / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
    fd = os.open(ramfs / "p", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        assert directio.open_direct(fd, str(ramfs / "p")) is None
        os.write(fd, b"still writable")  # the descriptor was left as it was
    finally:
        os.close(fd)
    assert (ramfs / "p").read_bytes() == b"still writable"
    _write(tmp_path / "plain.pcapng", direct=False)
    _write(ramfs / "direct.pcapng", direct=True)
    assert (ramfs / "direct.pcapng").read_bytes() == (tmp_path / "plain.pcapng").read_bytes()
    assert _tshark_count(ramfs / "direct.pcapng") == 1 + 3000 + 7 + 24000 + 2


CHILD = textwrap.dedent("""
    import os, resource, signal, sys
    from podsight.outputs import directio
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    f = directio.open_direct(fd, sys.argv[1])
    if f is None:
        print("no-direct"); sys.exit(0)
    ok = 0
    try:
        for i in range(100000):
            f.append(bytes([i % 251]) * 10000)
            ok = f.size
    except OSError as exc:
        print("failed", exc.errno, ok, f.size)
    f.close()
""")


def test_a_failed_write_cuts_the_file_back_to_an_append_end(tmp_path):
    """RLIMIT_FSIZE makes the kernel refuse writes past a size (EFBIG), as a full disk
    would: the file must end where an append ended, with the bytes appended."""
    path = tmp_path / "full.bin"
    limit = (directio.PARTS + 1) * directio.STAGE + 12345  # above the staging memfd's size
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), str(limit)],
                          capture_output=True, text=True, check=True, env=env)
    words = done.stdout.split()
    if words == ["no-direct"]:
        pytest.skip("no O_DIRECT here")
    assert words[0] == "failed", done.stdout + done.stderr
    size = path.stat().st_size
    assert size == int(words[3]) and size % 10000 == 0 and 0 < size <= limit
    data = path.read_bytes()
    for i in range(size // 10000):
        assert data[i * 10000:(i + 1) * 10000] == bytes([i % 251]) * 10000


@pytest.fixture
def slow_disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(mount point, blkio cgroup): ext4 on a loop device whose writes the kernel throttles
    to 8 MiB/s for the tasks of the cgroup (cgroup v1 blkio, as this machine mounts it)."""
    blkio = Path("/sys/fs/cgroup/blkio")
    if not (blkio / "blkio.throttle.write_bps_device").exists():
        pytest.skip("no cgroup v1 blkio throttle here")
    image, mnt = tmp_path / "disk.img", tmp_path / "mnt"
    with image.open("wb") as f:
        f.truncate(128 << 20)
    mnt.mkdir()
    group = blkio / f"podsight-test-{os.getpid()}"
    loop = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True,
                          text=True, check=True).stdout.strip()
    mounted = False
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", loop], check=True, capture_output=True)
        subprocess.run(["mount", loop, str(mnt)], check=True, capture_output=True)
        mounted = True
        rdev = os.stat(loop).st_rdev
        group.mkdir()
        (group / "blkio.throttle.write_bps_device").write_text(
            f"{os.major(rdev)}:{os.minor(rdev)} {8 << 20}\n")
        yield mnt, group
    finally:
        with contextlib.suppress(OSError):
            group.rmdir()
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", loop], check=False, capture_output=True)


SLOW = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from podsight.outputs import directio
    Path(sys.argv[2], "cgroup.procs").write_text(str(os.getpid()))
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    f = directio.open_direct(fd, sys.argv[1])
    if f is None:
        print("no-direct"); sys.exit(0)
    for i in range(3):
        f.append(bytes([i + 1]) * directio.STAGE)
    print("in-flight", f.writes_in_flight)
    f.append(b"end")
    f.close()
""")


def test_a_slow_disk_holds_three_writes_before_the_capture_waits(slow_disk):
    """On a disk that takes a second per part, three parts' appends return while their
    writes still wait (the reader goes on gathering the kernel's blocks: 24 MiB of slack,
    where two parts lost packets on this VM's disk stalls), and the file is whole after."""
    mnt, group = slow_disk
    path = mnt / "slow.bin"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", SLOW, str(path), str(group)],
                          capture_output=True, text=True, check=True, env=env)
    if done.stdout.split() == ["no-direct"]:
        pytest.skip("no O_DIRECT on the loop device's ext4")
    assert done.stdout.split() == ["in-flight", "3"], done.stdout + done.stderr
    stage = directio.STAGE
    data = path.read_bytes()
    assert len(data) == 3 * stage + 3
    for i in range(3):
        assert data[i * stage:(i + 1) * stage] == bytes([i + 1]) * stage
    assert data[-3:] == b"end"
