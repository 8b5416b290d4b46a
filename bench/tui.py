"""Benchmark: what the live view costs, beside the same run writing JSON to a file.

Run as root (under the shared lock, like every kernel benchmark)::

    .venv/bin/python bench/tui.py [--seconds 8] [--repeat 3] [--json FILE]

Two loads, each with these configurations, interleaved in rounds so that drift
on this shared VM lands on all of them alike:

``json``
    ``podsight ... --no-tui -o json > file``: the reference (1.00).
``view``
    the live view in a real terminal (tmux, 200x50), nothing else written.
``view+json``
    the view, and ``--json FILE`` beside it (what a person who wants the
    records keeps).
``keys`` (the view again)
    the same run while a key (Right, then Left: a view switch) is pressed every
    half second; the time from ``tmux send-keys`` to ``tmux capture-pane``
    showing the new view is the key-press latency. Its CPU is reported too but
    it redraws on purpose, so it is not a ratio.

Loads:

``flows``
    ``podsight flows --interfaces psbh0`` while a pod-like namespace (psb-pod,
    bench/flows.py's veth) sends UDP datagrams to ``--flows-rate`` distinct
    destination ports a second: that many flows per interval (1 s).
``connects``
    ``podsight trace tcpconnect`` during bench/connstorm (2 threads, loopback):
    about 100k connects/s on this VM.

CPU is podsight's own (all threads, user + system, from /proc) over a steady
window that starts once the run is ready and a second has passed and ends
just before it is stopped, so start-up (imports, loading programs) is left
out of both sides alike. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import BenchError, Children, cpu_so_far, run_guarded, wait_with_cpu

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SRC = REPO / "src"

FLOW_SENDER = r"""
import socket, sys, time
host, rate, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40000))
payload = b"x" * 32
end = time.monotonic() + seconds
sent = 0
tick = 0.01
per_tick = max(1, int(rate * tick))
nxt = time.monotonic()
while time.monotonic() < end:
    for _ in range(per_tick):
        s.sendto(payload, (host, 1024 + sent % rate))
        sent += 1
    nxt += tick
    delay = nxt - time.monotonic()
    if delay > 0:
        time.sleep(delay)
print(sent, flush=True)
"""


def podsight_argv() -> list[str]:
    return [sys.executable, "-m", "podsight.cli.main"]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(SRC), PYTHONUNBUFFERED="1")


# -- a terminal --------------------------------------------------------------------------

class Tmux:
    """One command in a tmux pane of its own server; read with capture-pane."""

    def __init__(self, argv: list[str], err: Path) -> None:
        self.socket = f"podsight-bench-{uuid.uuid4().hex[:8]}"
        self.err = err
        e = env()
        keep = {k: e[k] for k in ("PATH", "HOME", "PYTHONPATH") if k in e}
        keep.update(TERM="xterm-256color", LANG="C.UTF-8")
        script = f"{shlex.join(argv)} 2>{shlex.quote(str(err))}; echo exit=$? >>{err}"
        self.tmux("-f", "/dev/null", "new-session", "-d", "-x", "200", "-y", "50", "env", "-i",
                  *(f"{k}={v}" for k, v in keep.items()), "sh", "-c", script)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True, timeout=30, check=False).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "0")

    def pid(self) -> int:
        shell = int(self.tmux("list-panes", "-F", "#{pane_pid}").split()[0])
        children = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
        if not children:
            raise BenchError(f"the view is not running: {self.err.read_text()[-500:]}")
        return int(children[0])

    def wait(self, cond: Callable[[str], bool], what: str, timeout: float = 60) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if cond(self.screen()):
                return time.monotonic() - start
            if "exit=" in (self.err.read_text() if self.err.exists() else ""):
                break
            time.sleep(0.005)
        raise BenchError(f"never on screen: {what}: {self.screen()[-800:]}")

    def close(self) -> None:
        self.tmux("kill-server")


# -- runs -------------------------------------------------------------------------------

@dataclass
class Sample:
    config: str
    cpu_s: float
    window_s: float
    load_rate: float
    latencies_ms: list[float] = field(default_factory=list)
    summary: str = ""

    @property
    def cpu_pct(self) -> float:
        return 100 * self.cpu_s / self.window_s


def wait_file(path: Path, text: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.02)
    said = path.read_text()[-500:] if path.exists() else ""
    raise BenchError(f"{path} never said {text!r}: {said}")


def measured(pid: int, seconds: float, during: Callable[[float], list[float]] | None
             ) -> tuple[float, float, list[float]]:
    """CPU seconds of ``pid`` over ``seconds`` (after one to settle), and latencies."""
    time.sleep(1.0)
    c0, t0 = cpu_so_far(pid), time.monotonic()
    lat = during(seconds) if during else (time.sleep(seconds) or [])
    c1, t1 = cpu_so_far(pid), time.monotonic()
    return c1 - c0, t1 - t0, lat


def key_probe(term: Tmux) -> Callable[[float], list[float]]:
    def probe(seconds: float) -> list[float]:
        out = []
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            # Right leaves the standard view (for the next one the gadget has), Left returns.
            key, back = ("Right", False) if i % 2 == 0 else ("Left", True)
            at = time.monotonic()
            term.tmux("send-keys", "-t", "0", key)
            while ("view: standard" in term.screen()) != back:
                if time.monotonic() - at > 10:
                    raise BenchError(f"{key} was not answered within 10 s")
                time.sleep(0.002)
            out.append((time.monotonic() - at) * 1000)
            i += 1
            time.sleep(0.5)
        return out
    return probe


@contextmanager
def load(kind: str, children: Children, args: argparse.Namespace) -> Iterator[Callable[[], float]]:
    """Start the load; yields a function that stops it and returns its rate."""
    if kind == "flows":
        from flows import HOST_ADDR, in_pod  # type: ignore[import-not-found]

        seconds = args.seconds + 30
        proc = children.start(in_pod([sys.executable, "-c", FLOW_SENDER, HOST_ADDR,
                                      str(args.flows_rate), str(seconds)]),
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        started = time.monotonic()

        def stop() -> float:
            alive = time.monotonic() - started < seconds and proc.poll() is None
            os.killpg(proc.pid, signal.SIGKILL)
            wait_with_cpu(proc, 10)
            return float(args.flows_rate) if alive else 0.0
        yield stop
    else:
        from tcpconnect import CONNSTORM  # type: ignore[import-not-found]

        # connstorm runs for a set time (no signal stops it early): a little longer than
        # the window; its rate is read when it ends.
        proc = children.start([str(CONNSTORM), "-t", "2", "-d", str(args.seconds + 4)],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

        def stop() -> float:
            out = proc.stdout.read() if proc.stdout else b""
            wait_with_cpu(proc, 30)
            try:
                return float(json.loads(out)["rate"])
            except (ValueError, KeyError) as exc:
                raise BenchError(f"connstorm said {out[-200:]!r}") from exc
        yield stop


def gadget_args(kind: str) -> list[str]:
    return ["flows", "--interfaces", "psbh0"] if kind == "flows" else ["trace", "tcpconnect"]


def run_json(kind: str, children: Children, args: argparse.Namespace, work: Path) -> Sample:
    out, err = work / "out.json", work / "err.txt"
    out.unlink(missing_ok=True)
    with out.open("w") as o, err.open("w") as e:
        plain = ["--no-tui"] if kind == "flows" else []  # tcpconnect is plain unless --tui
        proc = children.start([*podsight_argv(), *gadget_args(kind), *plain, "-o", "json"],
                              stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=env())
    ready = "capturing flows" if kind == "flows" else "tracing"
    wait_file(err, ready)
    with load(kind, children, args) as stop:
        cpu, window, _ = measured(proc.pid, args.seconds, None)
        os.kill(proc.pid, signal.SIGINT)
        rate = stop()
    wait_with_cpu(proc, 60)
    summary = err.read_text().strip().splitlines()[-1]
    for line in out.read_text().splitlines():
        json.loads(line)
    return Sample("json", cpu, window, rate, summary=summary)


def run_view(kind: str, config: str, children: Children, args: argparse.Namespace,
             work: Path) -> Sample:
    err = work / "view-err.txt"
    err.unlink(missing_ok=True)
    extra = ["--tui"] if kind == "connects" else []
    if config == "view+json":
        (work / "view.json").unlink(missing_ok=True)
        extra += ["--json", str(work / "view.json")]
    term = Tmux([*podsight_argv(), *gadget_args(kind), *extra], err)
    try:
        term.wait(lambda s: "view: standard" in s, "the view")
        pid = term.pid()
        with load(kind, children, args) as stop:
            term.wait(lambda s: " written" in s and " 0 written" not in s, "records", 60)
            probe = key_probe(term) if config == "keys" else None
            cpu, window, lat = measured(pid, args.seconds, probe)
            term.tmux("send-keys", "-t", "0", "C-c")
            rate = stop()
        end = time.monotonic() + 60
        while "exit=" not in (err.read_text() if err.exists() else ""):
            if time.monotonic() > end:
                raise BenchError("the view did not end within 60 s of Ctrl-C")
            time.sleep(0.05)
    finally:
        term.close()
    lines = err.read_text().strip().splitlines()
    summary = next((x for x in reversed(lines) if x.startswith("podsight: ") and "lost" in x),
                   lines[-1] if lines else "")
    if config == "view+json":
        for line in (work / "view.json").read_text().splitlines():
            json.loads(line)
    return Sample(config, cpu, window, rate, lat, summary)


CONFIGS = ("json", "view", "view+json", "keys")


def bench(args: argparse.Namespace, children: Children) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for kind in args.loads:
        samples: dict[str, list[Sample]] = {c: [] for c in CONFIGS}
        veth = None
        if kind == "flows":
            from flows import Veth  # type: ignore[import-not-found]

            veth = Veth()
        else:
            from tcpconnect import build_connstorm  # type: ignore[import-not-found]

            build_connstorm()
        try:
            with tempfile.TemporaryDirectory(prefix="podsight-bench-tui-") as tmp:
                work = Path(tmp)
                for rnd in range(args.repeat):
                    order = CONFIGS[rnd % 4:] + CONFIGS[:rnd % 4]
                    for config in order:
                        s = (run_json(kind, children, args, work) if config == "json"
                             else run_view(kind, config, children, args, work))
                        samples[config].append(s)
                        lat = (f" keys p50 {statistics.median(s.latencies_ms):.0f} ms "
                               f"max {max(s.latencies_ms):.0f} ms" if s.latencies_ms else "")
                        print(f"{kind:<8} round {rnd + 1} {config:<9} CPU {s.cpu_pct:5.1f}% "
                              f"load {s.load_rate:,.0f}/s{lat}  | {s.summary}", flush=True)
        finally:
            if veth is not None:
                veth.close()
        base = statistics.median(s.cpu_pct for s in samples["json"])
        rows = {}
        for config in CONFIGS:
            pct = statistics.median(s.cpu_pct for s in samples[config])
            paired = statistics.median(v.cpu_pct / j.cpu_pct for v, j in
                                       zip(samples[config], samples["json"], strict=True))
            lat = [x for s in samples[config] for x in s.latencies_ms]
            rows[config] = {"cpu_pct": pct, "ratio": pct / base, "paired_ratio": paired,
                            "load_rate": statistics.median(s.load_rate for s in samples[config]),
                            **({"key_ms_p50": statistics.median(lat),
                                "key_ms_p95": sorted(lat)[int(0.95 * (len(lat) - 1))],
                                "key_ms_max": max(lat), "keys": len(lat)} if lat else {})}
        results[kind] = rows
    print(f"\nlive view benchmark: {args.repeat} rounds x {args.seconds:g} s steady window; "
          "podsight's CPU (all threads), median; ratio to --no-tui -o json > file")
    print(f"{'load':<9}{'config':<11}{'CPU %':>7}{'ratio':>7}{'paired':>8}{'load/s':>10}"
          f"{'key p50':>9}{'key p95':>9}{'key max':>9}")
    for kind, rows in results.items():
        for config, r in rows.items():
            keys = (f"{r['key_ms_p50']:>7.0f}ms{r['key_ms_p95']:>7.0f}ms{r['key_ms_max']:>7.0f}ms"
                    if "keys" in r else "")
            print(f"{kind:<9}{config:<11}{r['cpu_pct']:>7.1f}{r['ratio']:>7.2f}"
                  f"{r['paired_ratio']:>8.2f}{r['load_rate']:>10,.0f}{keys}")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=8.0, help="steady window per run")
    p.add_argument("--repeat", type=int, default=3, help="rounds")
    p.add_argument("--loads", nargs="+", choices=("flows", "connects"),
                   default=["flows", "connects"])
    p.add_argument("--flows-rate", type=int, default=10_000, help="new flows per second")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/tui.py: needs root (it loads eBPF programs)", file=sys.stderr)
        return 2
    return run_guarded("bench/tui.py", lambda children: bench(args, children), args.json)


if __name__ == "__main__":
    sys.exit(main())
