"""Benchmark: what ``podsight trace tcpconnect -o json`` costs a connection storm.

Run as root::

    .venv/bin/python bench/tcpconnect.py [--seconds 10] [--repeat 3] [--json FILE]

The configurations share one run, interleaved in rounds (and rotated inside
each round) so that drift -- CPU frequency, other work on the machine, cache
state -- lands on all of them alike instead of on whichever ran last:

``base``
    ``bench/connstorm`` alone: the highest loopback connect rate the machine
    reaches, the 1.00 every ratio is taken against.
``podsight``
    ``podsight trace tcpconnect -o json > FILE`` during the same storm. We
    check the trace is complete (one line per storm connect, none lost) and
    well formed (every line parses), not only that it is fast.
``ps-kernel`` (``--kernel-only``)
    podsight with ``--failed-only``: its kernel programs track every connect
    but deliver none, so what it costs is the kernel side alone.
``bpftrace``
    the reference: a bpftrace one-liner doing one ``printf`` per SYN_SENT on
    ``sock:inet_sock_set_state``, redirected to a file.
``candidate`` (``--candidate CMD``)
    another podsight command (a patched build), run exactly like ``podsight``:
    an A/B comparison under the same drift.

Rates on a shared 2-core VM swing with whatever else runs, so the CPU each
side spends is reported too (connstorm's and the tracer's, from rusage):
``model`` is the ratio those costs predict for a saturated machine,
base cost / (storm cost + tracer cost), and it moves much less than rates do.
``skipped`` is how often the kernel did not run a tracer's programs at all
(``recursion_misses``: a program never nests in itself on one CPU); no tracer
reports those, so the benchmark does.

A tracer counts as ready when it has reported a probe connect of ours; the
time from its start to that line is its time to first event. Everything goes
to 127.0.0.1 only. Figures are printed, never asserted: this is a
measurement, not a test (see DESIGN.md, "Performance principles").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    BenchError,
    Children,
    cpu_so_far,
    prog_ids,
    run_guarded,
    wait_with_cpu,
)

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CONNSTORM_SRC = BENCH / "connstorm.c"
CONNSTORM = BENCH / "connstorm"

BPFTRACE_PROGRAM = (
    "tracepoint:sock:inet_sock_set_state /args->newstate == 2/ { "
    'printf("%llu %d %s %s %d %s %d\\n", nsecs, pid, comm, ntop(args->saddr), args->sport, '
    "ntop(args->daddr), args->dport); }"
)
SUMMARY = re.compile(rb"podsight: (\d+) events, (\d+) lost, (\d+) pending[^\n]*")
BPFTRACE_LOST = re.compile(rb"^Lost (\d+) events", re.MULTILINE)

READY_TIMEOUT = 30.0  # seconds a tracer may take to report its first probe connect
PROBE_INTERVAL = 0.01  # seconds between probe connects while waiting for readiness
STOP_TIMEOUT = 120.0  # seconds a tracer may take to drain and exit after SIGINT


# -- child processes -----------------------------------------------------------


def other_tracing_programs() -> int | None:
    """BPF tracing programs loaded by someone else (None: bpftool missing).

    Another tracer on the same tracepoints (a test suite running podsight,
    say) taxes every configuration, the base included; worth a warning.
    """
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        return None
    done = subprocess.run([bpftool, "-j", "prog", "show"], capture_output=True, check=False)
    try:
        progs = json.loads(done.stdout or b"[]")
    except ValueError:
        return None
    kinds = ("tracepoint", "tracing", "raw_tracepoint")
    return sum(1 for p in progs if p.get("type") in kinds)



def recursion_misses(ids: set[int]) -> int | None:
    """How often the kernel skipped these programs (None: bpftool missing).

    A tracepoint program is not run when it would nest in itself on one CPU
    (a softirq interrupting it, say); the kernel only counts that, in
    ``recursion_misses``. A tracer that does not report it loses events
    silently, so the benchmark reports it for every tracer.
    """
    bpftool = shutil.which("bpftool")
    if bpftool is None or not ids:
        return None
    done = subprocess.run([bpftool, "-j", "prog", "show"], capture_output=True, check=False)
    try:
        progs = json.loads(done.stdout or b"[]")
    except ValueError:
        return None
    return sum(int(p.get("recursion_misses", 0)) for p in progs if p.get("id") in ids)


# -- load ----------------------------------------------------------------------


def build_connstorm() -> None:
    """Compile connstorm when it is missing or older than its source."""
    if CONNSTORM.exists() and CONNSTORM.stat().st_mtime >= CONNSTORM_SRC.stat().st_mtime:
        return
    if shutil.which("gcc") is None:
        raise BenchError("gcc is needed to build bench/connstorm (apt-get install gcc)")
    cmd = ["gcc", "-O2", "-pthread", "-Wall", "-o", str(CONNSTORM), str(CONNSTORM_SRC)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise BenchError(f"building connstorm failed: {done.stderr.strip()}")


@dataclass
class Storm:
    """What one connstorm run reported, and the CPU it used."""

    connects: int
    errors: int
    rate: float
    port: int
    cpu_s: float

    @property
    def attempts(self) -> int:
        """Connects that reached SYN_SENT: each must give one event."""
        return self.connects + self.errors


def run_storm(children: Children, seconds: float, threads: int) -> Storm:
    argv = [str(CONNSTORM), "-t", str(threads), "-d", str(seconds)]
    proc = children.start(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    out = proc.stdout.read()  # until connstorm exits: it prints one line at the end
    proc.stdout.close()
    cpu = wait_with_cpu(proc, 30)
    if cpu is None or proc.returncode:
        raise BenchError(f"connstorm failed (exit code {proc.returncode}): {out[-300:]!r}")
    r = json.loads(out)
    return Storm(int(r["connects"]), int(r["errors"]), float(r["rate"]), int(r["port"]), cpu)


# -- tracers -------------------------------------------------------------------


@dataclass
class TracerSpec:
    """How to start one tracer and read what it wrote."""

    name: str
    kind: str  # "podsight" or "bpftrace": how to read its summary and lost count
    argv: list[str]
    # line -> destination port, or None if the line is not an event (or not valid)
    dport_of: Callable[[bytes], int | None]
    delivers: bool = True  # False: it is not meant to report the storm's connects


def podsight_dport(line: bytes) -> int | None:
    try:
        return int(json.loads(line)["dport"])
    except (ValueError, KeyError, TypeError):
        return None


def bpftrace_dport(line: bytes) -> int | None:
    fields = line.split()
    if len(fields) != 7 or not fields[-1].isdigit():
        return None  # "Attaching 1 probe...", "Lost N events", ...
    return int(fields[-1])


@dataclass
class TraceResult:
    """One tracer run over one storm, as read from its files."""

    storm: Storm
    ready_s: float
    events: int | None  # lines whose destination is the storm's port
    lines: int
    invalid_lines: int | None  # lines that do not parse (podsight's JSON only)
    lost: int
    skipped: int | None  # kernel recursion misses of the tracer's programs
    cpu_s: float  # tracer CPU from ready to exit: the storm, the drain, the summary
    summary: str


@contextlib.contextmanager
def probe_port() -> Iterator[int]:
    """A port of our own, bound but not listening: a probe connect to it is refused.

    Refused, not accepted, so that the probe passes ``--failed-only`` too and
    nothing queues up behind a listener that never accepts.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def probe_connect(port: int) -> None:
    """One connect to the probe port (refused at once by the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        with contextlib.suppress(OSError):
            s.connect(("127.0.0.1", port))


def wait_ready(spec: TracerSpec, proc: subprocess.Popen[bytes], out: Path, err: Path,
               started: float) -> float:
    """Probe until the tracer writes a line for a probe connect; seconds since ``started``.

    One probe is not enough: made before the programs are attached it is
    never seen, so we probe every PROBE_INTERVAL until one shows up.
    """
    with probe_port() as port, out.open("rb") as f:
        pending = b""
        deadline = started + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"{spec.name} exited with code {proc.returncode} before it was "
                                 f"ready: {err.read_text(errors='replace').strip()[-500:]}")
            probe_connect(port)
            time.sleep(PROBE_INTERVAL)
            chunk = f.read()
            if not chunk:
                continue
            *lines, pending = (pending + chunk).split(b"\n")
            if any(spec.dport_of(line) == port for line in lines):
                return time.monotonic() - started
    raise BenchError(f"{spec.name} reported no probe connect within {READY_TIMEOUT:.0f} s")


def count_lines(spec: TracerSpec, path: Path, port: int) -> tuple[int, int, int]:
    """(events for ``port``, lines, lines that are not events) in what a tracer wrote."""
    events = lines = invalid = 0
    with path.open("rb") as f:
        for line in f:
            lines += 1
            dport = spec.dport_of(line)
            if dport is None:
                invalid += 1
            elif dport == port:
                events += 1
    return events, lines, invalid


def run_traced(children: Children, spec: TracerSpec, workdir: Path, seconds: float,
               threads: int) -> TraceResult:
    """Start a tracer, wait until it is ready, storm, stop it with SIGINT, read its output."""
    out, err = workdir / f"{spec.name}.out", workdir / f"{spec.name}.err"
    try:
        with out.open("wb") as fout, err.open("wb") as ferr:
            started = time.monotonic()
            proc = children.start(spec.argv, stdout=fout, stderr=ferr, stdin=subprocess.DEVNULL)
        ready = wait_ready(spec, proc, out, err, started)
        cpu_at_ready = cpu_so_far(proc.pid)
        ids = prog_ids(proc.pid)
        storm = run_storm(children, seconds, threads)
        skipped = recursion_misses(ids)
        os.killpg(proc.pid, signal.SIGINT)
        cpu = wait_with_cpu(proc, STOP_TIMEOUT)
        if cpu is None:
            raise BenchError(f"{spec.name} did not exit within {STOP_TIMEOUT:.0f} s of SIGINT")
        stderr = err.read_bytes()
        events, lines, invalid = count_lines(spec, out, storm.port)
        summary = ""
        if spec.kind == "podsight":
            m = SUMMARY.search(stderr)
            if m is None:
                raise BenchError(f"{spec.name} printed no summary (exit code {proc.returncode}): "
                                 f"{stderr.decode(errors='replace').strip()[-500:]}")
            summary = m.group(0).decode()
            lost = int(m.group(2))
        else:
            lost = sum(int(n) for n in BPFTRACE_LOST.findall(out.read_bytes() + stderr))
        # bpftrace's lines have no format to check beyond their destination port.
        return TraceResult(
            storm, ready, events if spec.delivers else None, lines,
            invalid if spec.kind == "podsight" else None, lost, skipped, cpu - cpu_at_ready,
            summary,
        )
    finally:
        out.unlink(missing_ok=True)
        err.unlink(missing_ok=True)


# -- the run -------------------------------------------------------------------


@dataclass
class Config:
    """One configuration and its rounds."""

    name: str
    kind: str = "base"  # or the TracerSpec's kind
    delivers: bool = False
    rates: list[float] = field(default_factory=list)
    attempts: int = 0
    storm_us: list[float] = field(default_factory=list)  # connstorm CPU per connect
    tracer_us: list[float] = field(default_factory=list)  # tracer CPU per storm connect
    events: int | None = None
    lost: int | None = None
    skipped: int | None = None
    invalid_lines: int | None = None
    ready_s: list[float] = field(default_factory=list)
    summaries: list[str] = field(default_factory=list)

    def add_storm(self, s: Storm) -> None:
        self.rates.append(s.rate)
        self.attempts += s.attempts
        self.storm_us.append(s.cpu_s / max(s.attempts, 1) * 1e6)

    def add_trace(self, r: TraceResult) -> None:
        self.add_storm(r.storm)
        self.tracer_us.append(r.cpu_s / max(r.storm.attempts, 1) * 1e6)
        if r.events is not None:
            self.events = (self.events or 0) + r.events
        self.lost = (self.lost or 0) + r.lost
        if r.skipped is not None:
            self.skipped = (self.skipped or 0) + r.skipped
        if r.invalid_lines is not None:
            self.invalid_lines = (self.invalid_lines or 0) + r.invalid_lines
        self.ready_s.append(r.ready_s)
        if r.summary:
            self.summaries.append(r.summary)

    @property
    def median_rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def cost_us(self) -> float:
        """CPU per connect, storm and tracer together (medians over rounds)."""
        tracer = statistics.median(self.tracer_us) if self.tracer_us else 0.0
        return statistics.median(self.storm_us) + tracer


def tracer_specs(args: argparse.Namespace) -> list[TracerSpec]:
    def trace_argv(command: str) -> list[str]:
        argv = [*shlex.split(command), "trace", "tcpconnect", "-o", "json"]
        return [*argv, "--ring-size", str(args.ring_size)] if args.ring_size else argv

    podsight = trace_argv(args.podsight)
    specs = [TracerSpec("podsight", "podsight", podsight, podsight_dport)]
    if args.candidate:
        specs.append(TracerSpec("candidate", "podsight", trace_argv(args.candidate),
                                podsight_dport))
    if args.kernel_only:
        # Successful connects are tracked (inflight insert, lookup, delete) and then
        # suppressed before the ring buffer: no events, no user-space work.
        specs.append(TracerSpec("ps-kernel", "podsight", [*podsight, "--failed-only"],
                                podsight_dport, delivers=False))
    if not args.no_bpftrace:
        bpftrace = shutil.which("bpftrace")
        if bpftrace is None:
            print("bench: bpftrace not found; the reference is skipped", file=sys.stderr)
        else:
            specs.append(TracerSpec("bpftrace", "bpftrace", [bpftrace, "-e", BPFTRACE_PROGRAM],
                                    bpftrace_dport))
    return specs


def run(args: argparse.Namespace, children: Children) -> tuple[dict[str, Config], int | None]:
    """All rounds; the configs and the most foreign tracing programs seen between runs."""
    build_connstorm()
    specs = {s.name: s for s in tracer_specs(args)}
    configs = {"base": Config("base")}
    configs.update((s.name, Config(s.name, s.kind, s.delivers)) for s in specs.values())
    order = list(configs)
    foreign: int | None = None
    # A short storm first: the first second of load on an idle VM runs slow.
    run_storm(children, 1.0, args.threads)
    with tempfile.TemporaryDirectory(prefix="podsight-bench-") as tmp:
        for rnd in range(args.repeat):
            shift = rnd % len(order)
            for name in order[shift:] + order[:shift]:
                seen = other_tracing_programs()
                if seen is not None:
                    foreign = max(foreign or 0, seen)
                if name == "base":
                    storm = run_storm(children, args.seconds, args.threads)
                    configs[name].add_storm(storm)
                    line = f"{storm.rate:9.0f} connects/s"
                else:
                    r = run_traced(children, specs[name], Path(tmp), args.seconds, args.threads)
                    configs[name].add_trace(r)
                    line = (f"{r.storm.rate:9.0f} connects/s, {r.events}/{r.storm.attempts} "
                            f"events, lost {r.lost}, skipped {r.skipped}, "
                            f"ready in {r.ready_s:.2f} s, "
                            f"cpu {r.cpu_s:.2f} s")
                    if r.lost and r.summary:
                        line += f"\n    {r.summary}"
                print(f"round {rnd + 1}/{args.repeat} {name:9} {line}", file=sys.stderr,
                      flush=True)
    return configs, foreign


def _cell(value: float | int | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report(configs: dict[str, Config], foreign: int | None,
           args: argparse.Namespace) -> dict[str, Any]:
    base = configs["base"]
    print(f"\ntcpconnect benchmark: {args.repeat} rounds x {args.seconds:g} s, connstorm "
          f"{args.threads} threads on 127.0.0.1; medians over rounds\n")
    head = (f"{'config':<10}{'connects/s':>11}{'min-max':>11}{'ratio':>7}{'paired':>7}"
            f"{'model':>7}  {'events/connects':<25}{'lost':>5}{'skipped':>8}{'storm us':>9}"
            f"{'tracer us':>10}")
    print(head)
    print("-" * len(head))
    results: dict[str, Any] = {"seconds": args.seconds, "repeat": args.repeat,
                               "threads": args.threads, "other_tracing_programs": foreign,
                               "configs": {}}
    for c in configs.values():
        ratio = c.median_rate / base.median_rate
        # The same round's base is the nearest in time: less drift than the medians.
        paired = statistics.median(r / b for r, b in zip(c.rates, base.rates, strict=True))
        model = base.cost_us / c.cost_us
        spread = f"{min(c.rates) / 1000:.0f}k-{max(c.rates) / 1000:.0f}k"
        ev = "-" if c.events is None else (
            f"{c.events}/{c.attempts} ({c.events / max(c.attempts, 1):.4f})")
        tracer_us = statistics.median(c.tracer_us) if c.tracer_us else None
        print(f"{c.name:<10}{c.median_rate:>11,.0f}{spread:>11}{ratio:>7.2f}{paired:>7.2f}"
              f"{model:>7.2f}  {ev:<25}{_cell(c.lost, 'd'):>5}{_cell(c.skipped, 'd'):>8}"
              f"{statistics.median(c.storm_us):>9.2f}{_cell(tracer_us, '.2f'):>10}")
        entry = asdict(c)
        entry.update(median_rate=c.median_rate, ratio=ratio, paired_ratio=paired,
                     model_ratio=model, cost_us=c.cost_us)
        results["configs"][c.name] = entry
    print("\nratio: median rates; paired: median of per-round ratios; model: CPU per connect, "
          "base / (storm + tracer);\nskipped: runs of the tracer's programs the kernel skipped "
          "(the kernel's recursion_misses, via bpftool);\nstorm us, tracer us: CPU microseconds "
          "per storm connect spent by connstorm (kernel side included) and by the tracer")
    print()
    for c in configs.values():
        if c.kind != "podsight" or not c.delivers:
            continue
        valid = c.invalid_lines == 0
        print(f"{c.name} time to first event: median {statistics.median(c.ready_s):.2f} s, "
              f"max {max(c.ready_s):.2f} s; JSON file fully valid (every line parses): "
              f"{'yes' if valid else 'NO'}")
        results["configs"][c.name].update(time_to_first_event_s=statistics.median(c.ready_s),
                                          json_valid=valid)
    if foreign:
        print(f"warning: {foreign} other BPF tracing program(s) were loaded during the run; "
              "they tax every configuration and make the figures noisier")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--seconds", type=float, default=10.0, help="storm length (default 10)")
    p.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--threads", type=int, default=2,
                   help="connstorm threads (default 2: the highest rate on 2 cores)")
    p.add_argument("--podsight", default=str(REPO / ".venv" / "bin" / "podsight"),
                   help="the podsight command (shell words; default .venv/bin/podsight)")
    p.add_argument("--candidate", metavar="CMD",
                   help="also run this podsight command (a patched build, say) as 'candidate', "
                        "interleaved with the rest: an A/B in one run")
    p.add_argument("--ring-size", type=int, default=0, help="pass --ring-size to podsight")
    p.add_argument("--kernel-only", action="store_true",
                   help="add ps-kernel: podsight --failed-only, whose kernel side tracks every "
                        "connect but delivers none, to split kernel from user-space cost")
    p.add_argument("--no-bpftrace", action="store_true", help="skip the bpftrace reference")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.repeat < 1 or args.threads < 1:
        p.error("--seconds, --repeat and --threads must be positive")
    return args



def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/tcpconnect.py: needs root (it loads eBPF programs)", file=sys.stderr)
        return 1
    return run_guarded("bench/tcpconnect.py",
                       lambda children: report(*run(args, children), args), args.json)

if __name__ == "__main__":
    sys.exit(main())
