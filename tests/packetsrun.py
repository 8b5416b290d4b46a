"""Test helpers for `podsight packets`: run it as a user would, read its files with tshark."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from background import Background

SUMMARY = re.compile(r"podsight: (\d+) packets captured, (\d+) received by filter on (\d+) "
                     r"interfaces? in [\d.]+s, (\d+) lost")


@dataclass
class PacketsResult:
    stdout: str
    stderr: str
    returncode: int
    summary: dict[str, int] = field(default_factory=dict)


class PacketsRun(Background):
    """`podsight packets ARGS` in the background, stopped with SIGINT like Ctrl-C."""

    def __init__(self, *args: str) -> None:
        super().__init__(["packets", *args], ready="capturing packets", name="packets",
                         start_timeout=30.0, stop_timeout=30.0)
        self.result: PacketsResult | None = None

    def __enter__(self) -> PacketsRun:
        self.start()
        return self

    def stop(self, sig: int = signal.SIGINT) -> PacketsResult:
        if self.result is not None:
            return self.result
        out, err, rc = self.finish(sig)
        self.result = PacketsResult(out, err, rc, summary(err))
        return self.result

    def wait(self, timeout: float = 60) -> PacketsResult:
        """Wait for a run that ends by itself (a limit, a trigger)."""
        assert self.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        return self.stop()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def summary(stderr: str) -> dict[str, int]:
    m = SUMMARY.search(stderr)
    if not m:
        return {}
    return {"captured": int(m[1]), "received": int(m[2]), "interfaces": int(m[3]),
            "lost": int(m[4])}


def tshark(path: Path | str, *args: str, stdin: bytes | None = None) -> str:
    """tshark's output; it must read the file without complaint."""
    proc = subprocess.run(["tshark", "-r", str(path), *args], capture_output=True,
                          input=stdin, check=False, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"appears to have been cut short" not in proc.stderr, proc.stderr
    return proc.stdout.decode()


def fields(path: Path | str, *names: str, display: str = "") -> list[list[str]]:
    args = ["-T", "fields", *(a for n in names for a in ("-e", n))]
    if display:
        args += ["-Y", display]
    return [line.split("\t") for line in tshark(path, *args).splitlines()]


def frames(path: Path | str) -> list[dict[str, Any]]:
    return [p["_source"]["layers"] for p in json.loads(tshark(path, "-T", "json") or "[]")]


def blocks(path: Path | str) -> list[tuple[int, bytes]]:
    """Every pcapng block as (type, body), checking each block's framing on the way."""
    data = Path(path).read_bytes()
    out = []
    off = 0
    while off < len(data):
        kind, length = struct.unpack_from("<II", data, off)
        assert length >= 12 and length % 4 == 0 and off + length <= len(data), (off, length)
        assert struct.unpack_from("<I", data, off + length - 4)[0] == length, off
        out.append((kind, data[off + 8: off + length - 4]))
        off += length
    return out


def statistics(path: Path | str) -> dict[int, dict[str, int]]:
    """Interface id -> {received, dropped} from the file's Interface Statistics Blocks."""
    out: dict[int, dict[str, int]] = {}
    for kind, body in blocks(path):
        if kind != 5:
            continue
        iface = struct.unpack_from("<I", body)[0]
        opts: dict[int, int] = {}
        o = 12
        while o + 4 <= len(body):
            code, length = struct.unpack_from("<HH", body, o)
            if code == 0:
                break
            if length == 8:
                opts[code] = struct.unpack_from("<Q", body, o + 4)[0]
            o += 4 + length + (-length % 4)
        assert iface not in out, f"two statistics blocks for interface {iface}"
        out[iface] = {"received": opts.get(4, -1), "dropped": opts.get(5, -1)}
    return out
