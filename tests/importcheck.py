"""What a podsight command imports, read from ``python -X importtime`` in a subprocess.

``podsight --help`` and ``podsight lab ...`` must not import numpy or the
eBPF binding (``podsight.ebpf``): they need neither, the lab runs where
libbpf may be missing, and numpy alone costs a noticeable part of a second
on every invocation. Two ways in:

- :func:`podsight_imports` runs the real entry point (``podsight.cli.main``),
  so it sees whatever cli/main.py and every command it registers import;
- :func:`lab_side_imports` runs ``lab`` through cli/lab.py alone, so it sees
  what the lab side imports by itself.
"""

from __future__ import annotations

import subprocess
import sys

from podsight.lab.system import child_env

HEAVY = ("numpy", "podsight.ebpf")

# ``podsight lab ...`` with no other command group registered.
LAB_ONLY = r"""
import argparse, sys
from podsight.cli import lab
from podsight.errors import UserError
parser = argparse.ArgumentParser(prog="podsight")
lab.register(parser.add_subparsers(dest="command"))
args = parser.parse_args(["lab", *sys.argv[1:]])
try:
    code = args.func(args)
except UserError as exc:
    sys.stderr.write(f"podsight: error: {exc}\n")
    code = exc.exit_code
sys.exit(code)
"""


class HeavyImports(AssertionError):
    """A command imported numpy or podsight.ebpf."""


def _run(argv: list[str]) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    proc = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True,
                          text=True, timeout=120, env=child_env())  # fmt: skip
    modules, rest = [], []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:"):
            if "imported package" not in line:
                modules.append(line.rsplit("|", 1)[1].strip())
        else:
            rest.append(line)
    proc.stderr = "".join(f"{line}\n" for line in rest)  # what the command itself printed
    return proc, modules


def podsight_imports(*args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``podsight ARGS`` through the real entry point, and every module it imported."""
    return _run(["-m", "podsight.cli.main", *args])


def lab_side_imports(*args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """``podsight lab ARGS`` through cli/lab.py alone, and every module it imported."""
    return _run(["-c", LAB_ONLY, *args])


def assert_light(modules: list[str]) -> None:
    found = [m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    if found:
        roots = sorted({m for m in found if m in HEAVY})
        raise HeavyImports(f"imported {', '.join(roots) or found[0]} ({len(found)} modules)")

