"""The run loop itself, driven by a small gadget that lives only in this test.

The gadget is real: tests/bpf/recursion.bpf.c on the syscall and
bpf_trace_printk tracepoints, where every getpgid() of this process is one
event and makes one program run the kernel must skip (it nests). So the
pipeline's promises can be checked against the kernel's own counts: every
event written or counted, skipped runs read from the programs' info and
reported in the summary and the SQLite capture table, output files opened
only after the gadget started, and a stop at any step ending with the
summary. It also shows what a gadget is: a class with a dozen small methods.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import sqlite3
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bpfbuild import compile_bpf

from podsight.ebpf import BpfObject
from podsight.ebpf.system import preflight
from podsight.errors import EnvironmentProblem
from podsight.identity import Resolver
from podsight.pipeline import (
    Batch,
    Loss,
    OutputOptions,
    Run,
    RunContext,
    Selection,
    Tally,
)
from podsight.runtime import StopFlag
from podsight.schema import Schema, Sides, number
from podsight.selectors import PodSelector
from podsight.spec import GadgetSpec
from podsight.timefmt import Clock

pytestmark = pytest.mark.root

HERE = Path(__file__).resolve().parent
SYS_getpgid = 121  # x86_64
libc = ctypes.CDLL(None, use_errno=True)
SPEC = GadgetSpec(name="printk", command=("printk",), help="", description="",
                  factory="test_pipeline:PrintkGadget")


@dataclass(slots=True)
class Tick:
    ts_ns: int
    n: int


SCHEMA: Schema[Tick] = Schema(
    fields=[number("n", "N", 6, lambda r: r.n, "the run's number", default=True)],
    sides=Sides(time="ts_ns", subjects=()),
)


class PrintkGadget:
    """One record per run of ``printk_on_getpgid`` since the last collect."""

    schema = SCHEMA

    def __init__(self, ctx: RunContext, path: Path, started: threading.Event,
                 fail: bool = False) -> None:
        self.path = path
        self.started = started
        self.fail = fail
        self.obj: BpfObject | None = None
        self.seen = 0
        self.closed = False

    def start(self, selection: Selection) -> str:
        if self.fail:
            raise EnvironmentProblem("this gadget cannot start here")
        preflight()
        self.obj = BpfObject(self.path)
        self.obj.load()
        self.obj.map("tgid").update(struct.pack("<I", 0), struct.pack("<I", os.getpid()))
        self.obj.attach_all()
        self.started.set()
        return "counting getpgid calls"

    def runs(self) -> int:
        assert self.obj is not None
        return int(self.obj.map("runs").percpu_u64_sums()[0])

    def follow(self, selection: Selection) -> None:
        pass

    def wait(self, timeout: float) -> None:
        threading.Event().wait(timeout)

    def collect(self, *, final: bool) -> Batch[Tick]:
        now = self.runs()
        batch = [Tick(0, n) for n in range(self.seen + 1, now + 1)]
        self.seen = now
        return Batch(records=batch)

    def decode(self, raw: np.ndarray) -> list[Tick]:
        return []

    def templates(self, admit: Any) -> None:
        return None

    def detach(self) -> None:
        if self.obj is not None:
            for link in self.obj.links:
                link.close()

    def pending(self) -> list[Tick]:
        return []

    def tally(self, elapsed: float) -> Tally:
        assert self.obj is not None
        return Tally(losses={"never": Loss(0, "never lost")},
                     skipped_runs=self.obj.run_stats().recursion_misses)

    def close(self) -> None:
        self.closed = True
        if self.obj is not None:
            self.obj.close()


@pytest.fixture(scope="module")
def recursion(tmp_path_factory) -> Path:
    return compile_bpf(HERE / "bpf/recursion.bpf.c",
                       tmp_path_factory.mktemp("bpf") / "recursion.bpf.o")


@pytest.fixture(scope="module")
def resolver() -> Resolver:
    return Resolver()


def run(resolver: Resolver, factory: Any, stop: StopFlag, db: Path | None,
        mode: str = "json") -> tuple[Run[Tick], str, str]:
    ctx = RunContext(spec=SPEC, values={}, resolver=resolver, selector=PodSelector(),
                     clock=Clock())
    out, err = io.StringIO(), io.StringIO()
    r: Run[Tick] = Run(ctx, factory, OutputOptions(mode=mode, sqlite=str(db) if db else None),
                       frozenset(), [], stop=stop, out=out, err=err)
    r.execute()
    return r, out.getvalue(), err.getvalue()


def test_every_event_is_written_and_skipped_runs_are_reported(recursion, resolver, tmp_path):
    started = threading.Event()
    stop = StopFlag()
    gadgets: list[PrintkGadget] = []

    def factory(ctx: RunContext) -> PrintkGadget:
        gadgets.append(PrintkGadget(ctx, recursion, started))
        return gadgets[-1]

    def calls() -> None:
        assert started.wait(30)
        for _ in range(50):
            libc.syscall(SYS_getpgid, ctypes.c_long(0))
        stop.set()  # the syscalls are done: stop; the last ones are in the final collect

    worker = threading.Thread(target=calls)
    worker.start()
    _, out, err = run(resolver, factory, stop, tmp_path / "p.db")
    worker.join()
    (g,) = gadgets
    assert g.closed and g.seen == 50  # counted after detach: nothing can move any more
    assert [json.loads(line)["n"] for line in out.splitlines()] == list(range(1, 51))
    summary = err.strip().splitlines()[-1]
    assert summary.startswith("podsight: 50 events, 0 lost; 50 program runs skipped"), err
    with sqlite3.connect(tmp_path / "p.db") as db:
        capture = dict(db.execute("SELECT key, value FROM capture"))
        assert db.execute("SELECT count(*) FROM printk").fetchone() == (50,)
    assert (capture["records"], capture["skipped_runs"], capture["lost_never"]) == (
        "50", "50", "0")
    assert capture["gadget"] == "printk" and capture["ended"]


def test_a_gadget_that_cannot_start_leaves_no_file(recursion, resolver, tmp_path):
    stop = StopFlag()
    gadgets: list[PrintkGadget] = []

    def factory(ctx: RunContext) -> PrintkGadget:
        gadgets.append(PrintkGadget(ctx, recursion, threading.Event(), fail=True))
        return gadgets[-1]

    with pytest.raises(EnvironmentProblem, match="cannot start here"):
        run(resolver, factory, stop, tmp_path / "never.db")
    assert gadgets[0].closed
    assert not (tmp_path / "never.db").exists()


@pytest.mark.parametrize("when", ["before the gadget", "after it started"])
def test_a_stop_during_startup_still_ends_with_the_summary(recursion, resolver, tmp_path, when):
    stop = StopFlag()
    gadgets: list[PrintkGadget] = []

    def factory(ctx: RunContext) -> PrintkGadget:
        if when == "before the gadget":
            stop.set()  # as a Ctrl-C that came while identity was being built
        gadgets.append(PrintkGadget(ctx, recursion, threading.Event()))
        return gadgets[-1]

    if when == "after it started":
        original = PrintkGadget.start

        def start_then_stop(self: PrintkGadget, selection: Selection) -> str:
            what = original(self, selection)
            stop.set()
            return what
        PrintkGadget.start = start_then_stop  # type: ignore[method-assign]
    try:
        _, out, err = run(resolver, factory, stop, tmp_path / "s.db")
    finally:
        if when == "after it started":
            PrintkGadget.start = original  # type: ignore[method-assign]
    assert err.strip().splitlines()[-1].startswith("podsight: 0 events, 0 lost"), err
    assert out == "" and gadgets[0].closed
    assert not (tmp_path / "s.db").exists()
