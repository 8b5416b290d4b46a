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


def compile_with_types(source: Path, types: list[str], out: Path) -> Path:
    """Compile ``source`` plus one unused pointer per C type, so that each type is in its BTF.

    clang writes a struct into an object's BTF only when a global, a map or a
    function signature uses it; a ring buffer record used only as a local
    variable is left out. This companion object is the same source with each
    named type referenced once (the cilium/ebpf ``bpf2go -type`` trick), so its
    BTF carries exactly the layouts the shipped object was compiled with (``make
    bpf-check`` holds the shipped object to its source).
    """
    wrapper = out.with_suffix(".c")
    lines = [f'#include "{source.resolve()}"']
    lines += [f"{c_name} *__podsight_layout_{i} __attribute__((unused));"
              for i, c_name in enumerate(types)]
    wrapper.write_text("\n".join(lines) + "\n")
    return compile_bpf(wrapper, out)
