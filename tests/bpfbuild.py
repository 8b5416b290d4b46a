"""Compile BPF C for tests, with the flags the Makefile uses for the shipped objects.

No root needed: clang only. Test fixtures (tests/bpf/*.bpf.c) are compiled
into a temporary directory by each session, not committed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def include_dir() -> str:
    """/usr/include/<triple>, where Debian keeps asm/ (the Makefile's -I)."""
    machine = subprocess.run(["gcc", "-dumpmachine"], capture_output=True, text=True).stdout
    return f"/usr/include/{machine.strip() or 'x86_64-linux-gnu'}"


def compile_bpf(source: Path, out: Path) -> Path:
    """clang -g -O2 -target bpf, as `make bpf` does; raises with clang's message on failure."""
    proc = subprocess.run(
        ["clang", "-g", "-O2", "-target", "bpf", "-Wall", "-Werror", f"-I{include_dir()}",
         "-c", str(source), "-o", str(out)],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise AssertionError(f"clang failed on {source}:\n{proc.stderr}")
    return out

