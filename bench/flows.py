"""Benchmark: what ``podsight flows`` costs a veth carrying iperf3 at full speed.

Run as root::

    .venv/bin/python bench/flows.py [--seconds 8] [--repeat 3] [--quick] [--json FILE]

The load is one iperf3 TCP stream between a pod-like network namespace
(``psb-pod``, its ``eth0``) and the root namespace (``psbh0``, the host side
of the veth, where a CNI would leave it and where ``podsight flows`` attaches),
on 10.250.0.0/30, which lives on that veth only: nothing is routed anywhere.
Each cell of the matrix -- data direction x offload mode -- runs these
configurations, interleaved in rounds (rotated inside each round) so that
drift on this shared VM lands on all of them alike:

``base``
    iperf3 alone: the 1.00 every ratio is taken against.
``tc-null``
    an empty tc program (``return TC_ACT_UNSPEC``) on both directions of
    psbh0, no podsight: what the tc hook itself costs, the floor under any
    tc-based observer (podsight included).
``podsight``
    the same transfer while ``podsight flows --no-tui -o json --interfaces
    psbh0`` runs. Besides the rate we check what it reported: its summary's
    lost count, and the bytes of the iperf3 data flow in its JSON records
    against the bytes iperf3 moved (headers included: ~1.046 for a 1448-byte
    MSS, 66 bytes of Ethernet, IPv4 and TCP with timestamps per segment).
``ps-all`` (``--enable-all``)
    podsight with ``--enable-all`` (RTT, drops and DNS on top).
``candidate`` (``--candidate CMD``)
    another podsight command (a patched build), run exactly like ``podsight``.

Offload modes: ``gso-on`` is the veth default (TSO/GSO on, GRO off): the tc
programs see one super-packet per up to 64 KiB. ``gso-off`` turns TSO and GSO
off on both ends (tx checksum offload stays on). Directions: ``pod-sends``
(the pod's iperf3 client sends; data enters psbh0: tc ingress) and
``host-sends`` (``iperf3 -R``; data leaves psbh0: tc egress). Only
``pod-sends gso-off`` runs the programs once per wire packet: the pod's eth0
segments before the veth. On the sending side tc egress runs *before*
software segmentation, so in ``host-sends gso-off`` the egress program still
sees super-packets (the kframes/s column counts frames after segmentation).

iperf3's client and server are pinned to two CPUs (``--cpus``, default 0,1):
unpinned they wander and the rate with them. Even so, a TCP stream over a
veth on two CPUs is sent from both (process context, and ACK-clocked from
softirq on the receiver's CPU), the two backlogs reorder it and the sender
retransmits spuriously (tens of thousands of ``retr`` per run): rates swing
+-15% from run to run on their own. So every run also records CPU time: the
sending iperf3 with the softirqs it ran (where the tc programs run on the
data path), ksoftirqd, and what everything else on the machine used
(``noise``). The sender's CPU is the bottleneck (~99% busy with GSO off), so
``model`` -- base sender CPU per byte / (sender CPU + all of podsight's CPU)
per byte -- is the ratio a saturated sender predicts, and it moves much less
than rates do; ``result`` is judged on it unless ``--judge paired``.

After the rounds, unless ``--no-prog-stats``, one more podsight run per cell
holds the kernel's BPF run-time statistics on (``BPF_ENABLE_STATS``, released
with its fd, so nothing stays on if we die) and reports what the tc programs
cost per run and per packet counted: time spent in softirqs and the transmit
path that podsight's own CPU figure does not show. The statistics add two
clock reads to every run, so these ns are an upper bound.

Figures are printed, never asserted: this is a measurement, not a test (see
DESIGN.md, "Performance principles"); the exit status does not depend on
them. ``result`` only compares a figure with the target the issue set.
"""

from __future__ import annotations

import argparse
import atexit
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    CLOCK_TICKS,
    BenchError,
    Children,
    cpu_so_far,
    prog_ids,
    run_guarded,
    wait_with_cpu,
)

from podsight.ebpf import RawProgram, RunTimeStats, TcHook
from podsight.ebpf.progs import BPF_PROG_TYPE_SCHED_CLS, EMPTY_TC
from podsight.errors import UserError

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent

NETNS = "psb-pod"
HOST_IF = "psbh0"  # root namespace side: what podsight observes
POD_IF = "eth0"
HOST_ADDR = "10.250.0.1"
POD_ADDR = "10.250.0.2"
PREFIX_LEN = 30

MODES = {"gso-on": 0.98, "gso-off": 0.95}  # mode -> target ratio (the issue's)
DIRECTIONS = ("pod-sends", "host-sends")

READY = b"podsight: capturing flows on"
SUMMARY = re.compile(
    rb"podsight: (\d+) flow records, (\d+) packets in ([\d.]+)s, (\d+) lost([^\n]*)"
)
OVERFLOW = re.compile(rb"(\d+) packets went through the ring")
READY_TIMEOUT = 30.0  # seconds podsight may take to load, attach and say so
STOP_TIMEOUT = 60.0  # seconds podsight may take to harvest and exit after SIGINT
# Ethernet + IPv4 + TCP with the timestamp option: what a full segment adds to its MSS.
WIRE_HEADERS = 14 + 20 + 32


# -- child processes -----------------------------------------------------------


def sh(argv: list[str], what: str) -> str:
    """Run a setup command; its stdout, or a BenchError with its stderr."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        raise BenchError(f"{what} failed ({shlex.join(argv)}): {done.stderr.strip()}")
    return done.stdout


def in_pod(argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", NETNS, *argv]


# -- the veth ------------------------------------------------------------------


class Veth:
    """psb-pod/eth0 <-> psbh0: a pod-like namespace on a veth, and its offloads.

    ``close`` is idempotent and also registered with atexit: whatever happens,
    the namespace, the veth (deleting one end deletes both) and anything
    still running inside the namespace go away.
    """

    def __init__(self) -> None:
        self._up = False
        self.remove_stale()
        self._check_addresses()
        self._up = True
        atexit.register(self.close)
        try:
            sh(["ip", "netns", "add", NETNS], "creating the namespace")
            sh(["ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", POD_IF,
                "netns", NETNS], "creating the veth")
            sh(["ip", "addr", "add", f"{HOST_ADDR}/{PREFIX_LEN}", "dev", HOST_IF], "addressing")
            sh(["ip", "link", "set", HOST_IF, "up"], "link up")
            sh(["ip", "-n", NETNS, "addr", "add", f"{POD_ADDR}/{PREFIX_LEN}", "dev", POD_IF],
               "addressing")
            sh(["ip", "-n", NETNS, "link", "set", POD_IF, "up"], "link up")
            sh(["ip", "-n", NETNS, "link", "set", "lo", "up"], "link up")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def exists() -> bool:
        return (Path("/run/netns") / NETNS).exists() or (Path("/sys/class/net") / HOST_IF).exists()

    @classmethod
    def remove_stale(cls) -> None:
        """Remove what a killed earlier run left (only our own names)."""
        if not cls.exists():
            return
        print(f"bench: removing {NETNS}/{HOST_IF} left by an earlier run", file=sys.stderr)
        cls._remove()

    @staticmethod
    def _remove() -> None:
        if (Path("/run/netns") / NETNS).exists():
            pids = subprocess.run(["ip", "netns", "pids", NETNS], capture_output=True,
                                  text=True, check=False).stdout.split()
            for pid in pids:  # our own iperf3 clients: nothing else runs in psb-pod
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", NETNS], capture_output=True, check=False)
        if (Path("/sys/class/net") / HOST_IF).exists():
            subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True, check=False)

    @staticmethod
    def _check_addresses() -> None:
        out = sh(["ip", "-o", "-4", "addr", "show"], "listing addresses")
        taken = [line.split()[1] for line in out.splitlines() if " 10.250.0." in line]
        if taken:
            raise BenchError(f"10.250.0.0/{PREFIX_LEN} is already used on {', '.join(taken)}; "
                             "the benchmark needs it for its own veth")

    def close(self) -> None:
        if self._up:
            self._up = False
            self._remove()

    def set_offloads(self, gso: bool) -> dict[str, str]:
        """TSO and GSO on or off on both ends (GRO stays off: the veth default)."""
        word = "on" if gso else "off"
        flags = ["gso", word, "tso", word, "gro", "off"]
        sh(["ethtool", "-K", HOST_IF, *flags], "ethtool")
        sh(in_pod(["ethtool", "-K", POD_IF, *flags]), "ethtool")
        state = {}
        for side, argv in ((HOST_IF, ["ethtool", "-k", HOST_IF]),
                           (f"{NETNS}/{POD_IF}", in_pod(["ethtool", "-k", POD_IF]))):
            out = sh(argv, "ethtool")
            got = {k.strip(): v.split()[0] for k, v in
                   (line.split(":", 1) for line in out.splitlines() if ":" in line) if v.strip()}
            state[side] = (f"tso {got.get('tcp-segmentation-offload')} "
                           f"gso {got.get('generic-segmentation-offload')} "
                           f"gro {got.get('generic-receive-offload')} "
                           f"tx-csum {got.get('tx-checksumming')}")
            if got.get("generic-segmentation-offload") != word:
                raise BenchError(f"ethtool could not turn GSO {word} on {side}")
        return state


def link_stats() -> dict[str, int]:
    base = Path("/sys/class/net") / HOST_IF / "statistics"
    return {name: int((base / name).read_text()) for name in
            ("rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_dropped", "tx_dropped")}


def free_port() -> int:
    """A TCP port free on HOST_ADDR (iperf3's 5201 may be someone else's)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST_ADDR, 0))
        return int(s.getsockname()[1])


def listening(addr: str, port: int) -> bool:
    """Is a TCP socket listening on addr:port in the root namespace (/proc/net/tcp)?"""
    want = f"{socket.htonl(int.from_bytes(socket.inet_aton(addr), 'big')):08X}:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[1] == want and cols[3] == "0A":
            return True
    return False


def start_server(children: Children, port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """iperf3 -s on the host side, serving every run; returns once it listens."""
    argv = ["iperf3", "-s", "-B", HOST_ADDR, "-p", str(port)]
    err = workdir / "iperf3-server.err"
    with err.open("wb") as ferr:
        proc = children.start(argv, stdout=subprocess.DEVNULL, stderr=ferr,
                              stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"iperf3 -s exited with code {proc.returncode}: "
                             f"{err.read_text(errors='replace').strip()[-300:]}")
        if listening(HOST_ADDR, port):
            return proc
        time.sleep(0.05)
    raise BenchError(f"iperf3 -s is not listening on {HOST_ADDR}:{port} after 10 s")


# -- one transfer --------------------------------------------------------------


@dataclass
class Transfer:
    """One iperf3 run as iperf3, the veth's counters and the CPU accounting saw it."""

    gbps: float  # receiver's rate
    bytes: int  # payload bytes the receiver got
    seconds: float
    retransmits: int
    mss: int
    frames: int  # data-direction frames through psbh0 (GSO super-packets count once)
    data_tuple: tuple[str, int, str, int]  # saddr, sport, daddr, dport of the data stream
    sender_cpu_s: float  # the sending iperf3, kernel side included (softirqs it ran)
    receiver_cpu_s: float
    softirqd_cpu_s: dict[int, float]  # ksoftirqd/N: softirqs deferred to a thread, per CPU
    busy_s: float  # every CPU's busy time (/proc/stat), whoever used it

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds

    @property
    def segments_per_s(self) -> float:
        return self.bytes / max(self.mss, 1) / self.seconds

    def sender_side_s(self, cpu: int | None) -> float:
        """The sender's CPU: the sending iperf3 and, on its CPU, the softirq thread.

        Whatever the tc programs cost on the data path runs in softirqs on the
        sending CPU, billed to the sender (or to ksoftirqd when deferred); the
        rate is what that CPU can push.
        """
        softirqd = (sum(self.softirqd_cpu_s.values()) if cpu is None
                    else self.softirqd_cpu_s.get(cpu, 0.0))
        return self.sender_cpu_s + softirqd

    def ours_s(self) -> float:
        """CPU the transfer itself used: both iperf3s and the softirq threads."""
        return self.sender_cpu_s + self.receiver_cpu_s + sum(self.softirqd_cpu_s.values())


@dataclass(frozen=True)
class Load:
    """How every transfer runs: where its server is, how long, on which CPUs."""

    port: int
    seconds: float
    cpus: tuple[int, int] | None  # iperf3 -A CLIENT,SERVER; None: the scheduler chooses
    server_pid: int
    softirqd: dict[int, int]  # CPU -> pid of its ksoftirqd
    workdir: Path

    def sender_cpu(self, direction: str) -> int | None:
        """The CPU the sending iperf3 is pinned to (the pod's client, or the host's server)."""
        if self.cpus is None:
            return None
        return self.cpus[1] if direction == "host-sends" else self.cpus[0]


def softirq_threads() -> dict[int, int]:
    """CPU -> pid of ksoftirqd/CPU: softirqs the kernel defers run (and are billed) there."""
    found: dict[int, int] = {}
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError, ValueError):
            name = comm.read_text().strip()
            if name.startswith("ksoftirqd/"):
                found[int(name.split("/", 1)[1])] = int(comm.parent.name)
    return found


def busy_seconds() -> float:
    """Busy time of all CPUs together (everything but idle and iowait), from /proc/stat."""
    cols = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user already)
    return (cols[0] + cols[1] + cols[2] + cols[5] + cols[6] + cols[7]) / CLOCK_TICKS


def run_iperf(children: Children, load: Load, direction: str,
              seconds: float | None = None) -> Transfer:
    """The pod's iperf3 client against the host's server; -R when the host sends."""
    seconds = seconds or load.seconds
    argv = in_pod(["iperf3", "-c", HOST_ADDR, "-p", str(load.port), "-t", f"{seconds:g}",
                   "-J", "--connect-timeout", "3000"])
    if direction == "host-sends":
        argv.append("-R")
    if load.cpus:
        argv += ["-A", f"{load.cpus[0]},{load.cpus[1]}"]
    out, err = load.workdir / "iperf3.out", load.workdir / "iperf3.err"
    before = link_stats()
    server0 = cpu_so_far(load.server_pid)
    softirqd0 = {cpu: cpu_so_far(pid) for cpu, pid in load.softirqd.items()}
    busy0 = busy_seconds()
    with out.open("wb") as fout, err.open("wb") as ferr:
        # `ip netns exec` execs iperf3: the child's rusage is the client's CPU.
        proc = children.start(argv, stdout=fout, stderr=ferr, stdin=subprocess.DEVNULL)
    client_cpu = wait_with_cpu(proc, seconds + 30)
    if client_cpu is None:
        raise BenchError(f"iperf3 -c did not finish within {seconds + 30:g} s")
    busy = busy_seconds() - busy0
    server_cpu = cpu_so_far(load.server_pid) - server0
    softirqd = {cpu: cpu_so_far(pid) - softirqd0[cpu] for cpu, pid in load.softirqd.items()}
    after = link_stats()
    try:
        r = json.loads(out.read_bytes())
    except ValueError:
        raise BenchError(f"iperf3 -c printed no JSON (exit code {proc.returncode}): "
                         f"{err.read_text(errors='replace').strip()[-300:]}") from None
    if "error" in r or proc.returncode:
        raise BenchError(f"iperf3 -c failed: {r.get('error', proc.returncode)}")
    end = r["end"]
    conn = r["start"]["connected"][0]
    client = (conn["local_host"], int(conn["local_port"]))
    server = (conn["remote_host"], int(conn["remote_port"]))
    host_sends = direction == "host-sends"
    src, dst = (server, client) if host_sends else (client, server)
    counter = "tx_packets" if host_sends else "rx_packets"
    received = end["sum_received"]
    return Transfer(
        gbps=float(received["bits_per_second"]) / 1e9,
        bytes=int(received["bytes"]),
        seconds=float(received["seconds"]),
        retransmits=int(end["sum_sent"].get("retransmits", 0)),
        mss=int(r["start"].get("tcp_mss_default", 1448)),
        frames=after[counter] - before[counter],
        data_tuple=(src[0], src[1], dst[0], dst[1]),
        sender_cpu_s=server_cpu if host_sends else client_cpu,
        receiver_cpu_s=client_cpu if host_sends else server_cpu,
        softirqd_cpu_s=softirqd,
        busy_s=busy,
    )


# -- the floor: an empty tc program --------------------------------------------------


class NullTc:
    """An empty program (``return TC_ACT_UNSPEC``) on both directions of the host veth.

    The cost of the tc hook itself, which any tc-based observer pays before
    doing anything: podsight's ratio can be no better than this one. Loaded
    from two raw instructions and attached with tcx links (what podsight uses
    on this kernel) through podsight's own binding, so the links go with our
    fds whatever happens.
    """

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self.prog_id = 0

    def __enter__(self) -> NullTc:
        try:
            prog = self._stack.enter_context(
                RawProgram(BPF_PROG_TYPE_SCHED_CLS, EMPTY_TC, "bench_null_tc"))
            info = Path(f"/proc/self/fdinfo/{prog.fd}").read_text()
            self.prog_id = int(info.split("prog_id:", 1)[1].split()[0])
            for direction in ("ingress", "egress"):
                self._stack.enter_context(TcHook(prog, HOST_IF, direction, mode="tcx"))
        except (OSError, UserError) as exc:
            self._stack.close()
            raise BenchError(f"cannot attach the empty tc program with tcx: {exc}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


# -- BPF run-time statistics ------------------------------------------------------


def stats_sysctl_on() -> bool:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip() != "0"
    return False



def bpf_progs() -> list[dict[str, Any]]:
    bpftool = shutil.which("bpftool")
    if bpftool is None:
        return []
    done = subprocess.run([bpftool, "-j", "prog", "show"], capture_output=True, check=False)
    try:
        progs: list[dict[str, Any]] = json.loads(done.stdout or b"[]")
    except ValueError:
        return []
    return progs


def prog_runs(ids: set[int]) -> dict[str, tuple[int, int]]:
    """Program name -> (run count, run time ns), for these program IDs."""
    return {p["name"]: (int(p.get("run_cnt", 0)), int(p.get("run_time_ns", 0)))
            for p in bpf_progs() if p.get("id") in ids}


def foreign_programs(ours: set[int]) -> int:
    """BPF tracing programs someone else loaded while we ran.

    Another podsight (a test suite running ``flows --drops``, say) on the
    skb or TCP tracepoints taxes every configuration, the base included:
    worth a warning.
    """
    kinds = ("tracepoint", "tracing", "raw_tracepoint")
    return sum(1 for p in bpf_progs() if p.get("type") in kinds and p.get("id") not in ours)


# -- podsight ------------------------------------------------------------------


@dataclass
class Observed:
    """What one podsight run reported about one transfer."""

    records: int  # JSON lines
    invalid_lines: int
    flow_bytes: int  # the iperf3 data stream's records, summed
    flow_packets: int
    data_records: int
    lost: int
    overflow: int
    packets: int  # its summary's packet counter (both directions)
    cpu_s: float  # from ready to exit: the transfer, the last harvest, the summary
    transfer_cpu_s: float  # during the transfer only
    ready_s: float
    summary: str
    progs: dict[str, tuple[int, int]] = field(default_factory=dict)


def wait_ready(proc: subprocess.Popen[bytes], err: Path, started: float) -> float:
    """Seconds from start until podsight says it captures (its programs are attached)."""
    deadline = started + READY_TIMEOUT
    while time.monotonic() < deadline:
        if READY in err.read_bytes():
            return time.monotonic() - started
        if proc.poll() is not None:
            raise BenchError(f"podsight exited with code {proc.returncode} before it was ready: "
                             f"{err.read_text(errors='replace').strip()[-500:]}")
        time.sleep(0.02)
    raise BenchError(f"podsight did not say it was capturing within {READY_TIMEOUT:.0f} s")


def read_records(out: Path, data: tuple[str, int, str, int]) -> tuple[int, int, int, int, int]:
    """(lines, invalid lines, data-stream bytes, packets, records) from podsight's JSON."""
    lines = invalid = nbytes = packets = nrec = 0
    saddr, sport, daddr, dport = data
    with out.open("rb") as f:
        for line in f:
            lines += 1
            try:
                r = json.loads(line)
                key = (r["saddr"], r["sport"], r["daddr"], r["dport"], r["proto"])
                if key == (saddr, sport, daddr, dport, "tcp"):
                    nbytes += int(r["bytes"])
                    packets += int(r["packets"])
                    nrec += 1
            except (ValueError, KeyError, TypeError):
                invalid += 1
    return lines, invalid, nbytes, packets, nrec


def run_observed(children: Children, argv: list[str], workdir: Path, load: Load,
                 direction: str, *, prog_stats: bool = False) -> tuple[Transfer, Observed]:
    """Start podsight, wait until it captures, transfer, SIGINT it, read what it wrote."""
    out, err = workdir / "flows.out", workdir / "flows.err"
    try:
        with out.open("wb") as fout, err.open("wb") as ferr:
            started = time.monotonic()
            proc = children.start(argv, stdout=fout, stderr=ferr, stdin=subprocess.DEVNULL)
        ready = wait_ready(proc, err, started)
        cpu_at_ready = cpu_so_far(proc.pid)
        ids = prog_ids(proc.pid)
        runs_before: dict[str, tuple[int, int]] = {}
        with contextlib.ExitStack() as stack:
            if prog_stats:
                try:
                    stack.enter_context(RunTimeStats())
                except OSError as exc:
                    raise BenchError(f"could not turn BPF run-time statistics on: {exc}") from None
                runs_before = prog_runs(ids)
            cpu_before = cpu_so_far(proc.pid)
            transfer = run_iperf(children, load, direction)
            transfer_cpu = cpu_so_far(proc.pid) - cpu_before
            progs: dict[str, tuple[int, int]] = {}
            if prog_stats:
                for name, (cnt, ns) in prog_runs(ids).items():
                    cnt0, ns0 = runs_before.get(name, (0, 0))
                    progs[name] = (cnt - cnt0, ns - ns0)
        os.killpg(proc.pid, signal.SIGINT)
        cpu = wait_with_cpu(proc, STOP_TIMEOUT)
        if cpu is None:
            raise BenchError(f"podsight did not exit within {STOP_TIMEOUT:.0f} s of SIGINT")
        stderr = err.read_bytes()
        m = SUMMARY.search(stderr)
        if m is None:
            raise BenchError(f"podsight printed no summary (exit code {proc.returncode}): "
                             f"{stderr.decode(errors='replace').strip()[-500:]}")
        o = OVERFLOW.search(m.group(5))
        lines, invalid, nbytes, packets, nrec = read_records(out, transfer.data_tuple)
        return transfer, Observed(
            records=lines, invalid_lines=invalid, flow_bytes=nbytes, flow_packets=packets,
            data_records=nrec, lost=int(m.group(4)), overflow=int(o.group(1)) if o else 0,
            packets=int(m.group(2)), cpu_s=cpu - cpu_at_ready, transfer_cpu_s=transfer_cpu,
            ready_s=ready,
            summary=m.group(0).decode(errors="replace"), progs=progs,
        )
    finally:
        out.unlink(missing_ok=True)
        err.unlink(missing_ok=True)


def run_null_stats(children: Children, load: Load, direction: str,
                   ) -> tuple[Transfer, dict[str, tuple[int, int]]]:
    """One transfer beside the empty tc program with run-time statistics on: its cost per run.

    The statistics add their own clock reads to every run of every program;
    podsight's ns/run minus this one is what its programs cost beyond the
    hook and the measurement itself.
    """
    with NullTc() as null:
        try:
            stats = RunTimeStats()
        except OSError as exc:
            raise BenchError(f"could not turn BPF run-time statistics on: {exc}") from None
        with stats:
            before = prog_runs({null.prog_id})
            transfer = run_iperf(children, load, direction)
            after = prog_runs({null.prog_id})
    return transfer, {name: (cnt - before.get(name, (0, 0))[0], ns - before.get(name, (0, 0))[1])
                      for name, (cnt, ns) in after.items()}


def others_s(t: Transfer, o: Observed | None) -> float:
    """CPU seconds something else used during the transfer: not iperf3, not podsight."""
    return max(0.0, t.busy_s - t.ours_s() - (o.transfer_cpu_s if o else 0.0))


def payload_check(t: Transfer, o: Observed) -> tuple[float, bool]:
    """(flow bytes / iperf3 bytes, plausible?).

    The records count whole frames, so the expected ratio is 1 plus the headers
    (WIRE_HEADERS per packet). Packets the sender retransmits are counted on
    the sending side too; packets dropped before psbh0 are not: the payload in
    the records must lie between what the receiver got and that plus every
    retransmitted segment.
    """
    ratio = o.flow_bytes / max(t.bytes, 1)
    payload = o.flow_bytes - o.flow_packets * WIRE_HEADERS
    low = t.bytes * 0.998
    high = (t.bytes + t.retransmits * t.mss) * 1.002 + 4096
    return ratio, low <= payload <= high


# -- the run -------------------------------------------------------------------


@dataclass
class Config:
    """One configuration in one cell (direction x mode), and its rounds."""

    name: str
    argv: list[str] | None  # None: iperf3 alone (or beside the empty tc program)
    null_tc: bool = False
    transfers: list[Transfer] = field(default_factory=list)
    observed: list[Observed] = field(default_factory=list)

    @property
    def median_gbps(self) -> float:
        return statistics.median(t.gbps for t in self.transfers)

    def cost_ns_per_byte(self, sender_cpu: int | None) -> float:
        """Median sender-side CPU per byte moved, podsight's whole CPU added (conservative:
        as if all of it ran on the sender's CPU)."""
        costs = []
        for i, t in enumerate(self.transfers):
            extra = self.observed[i].transfer_cpu_s if self.observed else 0.0
            costs.append((t.sender_side_s(sender_cpu) + extra) * 1e9 / max(t.bytes, 1))
        return statistics.median(costs)

    @property
    def median_kpps(self) -> float:
        return statistics.median(t.frames_per_s for t in self.transfers) / 1000


@dataclass
class Cell:
    direction: str
    mode: str
    target: float
    configs: dict[str, Config]
    offloads: dict[str, str] = field(default_factory=dict)
    #: config -> (transfer, program -> (runs, run time ns), packets podsight counted)
    stats: dict[str, tuple[Transfer, dict[str, tuple[int, int]], int]] = field(
        default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.direction} {self.mode}"

    def noise_percent(self) -> float:
        """The most CPU anything else used during one of this cell's transfers (% of a CPU)."""
        worst = 0.0
        for c in self.configs.values():
            for i, t in enumerate(c.transfers):
                o = c.observed[i] if c.observed else None
                worst = max(worst, 100 * others_s(t, o) / t.seconds)
        return worst


def podsight_argvs(args: argparse.Namespace) -> dict[str, list[str]]:
    def flows(command: str, *extra: str) -> list[str]:
        return [*shlex.split(command), "flows", "--no-tui", "-o", "json", "--interfaces",
                HOST_IF, *extra]

    argvs = {"podsight": flows(args.podsight)}
    if args.enable_all:
        argvs["ps-all"] = flows(args.podsight, "--enable-all")
    for i, command in enumerate(args.candidate, start=1):
        argvs["candidate" if i == 1 else f"candidate{i}"] = flows(command)
    return argvs


def run(args: argparse.Namespace, children: Children) -> tuple[list[Cell], int]:
    """Every round of every cell; the cells and the most foreign BPF programs seen."""
    argvs = podsight_argvs(args)
    cells = [
        Cell(d, m, MODES[m], {"base": Config("base", None),
                              "tc-null": Config("tc-null", None, null_tc=True),
                              **{n: Config(n, a) for n, a in argvs.items()}})
        for d in args.directions for m in args.modes
    ]
    foreign = 0
    veth = Veth()
    try:
        with tempfile.TemporaryDirectory(prefix="podsight-bench-") as tmp:
            workdir = Path(tmp)
            port = free_port()
            server = start_server(children, port, workdir)
            load = Load(port, args.seconds, args.cpus, server.pid, softirq_threads(), workdir)
            # A short transfer first: the first second of load on an idle VM runs slow.
            veth.set_offloads(True)
            run_iperf(children, load, args.directions[0], seconds=1.0)
            for rnd in range(args.repeat):
                for cell in cells:
                    cell.offloads = veth.set_offloads(cell.mode == "gso-on")
                    order = list(cell.configs)
                    shift = rnd % len(order)
                    for name in order[shift:] + order[:shift]:
                        foreign = max(foreign, foreign_programs(set()))
                        c = cell.configs[name]
                        o: Observed | None = None
                        if c.argv is None:
                            with NullTc() if c.null_tc else contextlib.nullcontext():
                                t = run_iperf(children, load, cell.direction)
                            extra = ""
                        else:
                            t, o = run_observed(children, c.argv, workdir, load, cell.direction)
                            c.observed.append(o)
                            ratio, ok = payload_check(t, o)
                            extra = (f", lost {o.lost}, bytes/iperf3 {ratio:.4f}"
                                     f"{'' if ok else ' (MISMATCH)'}, podsight cpu "
                                     f"{o.cpu_s:.2f} s, ready in {o.ready_s:.2f} s")
                        c.transfers.append(t)
                        softirqd = "+".join(f"{v:.2f}" for v in t.softirqd_cpu_s.values())
                        print(f"round {rnd + 1}/{args.repeat} {cell.name:<19} {name:<9} "
                              f"{t.gbps:6.2f} Gbit/s {t.frames_per_s / 1000:5.0f} kframes/s "
                              f"retr {t.retransmits:6}, cpu s: sender {t.sender_cpu_s:.2f} "
                              f"receiver {t.receiver_cpu_s:.2f} ksoftirqd {softirqd} "
                              f"others {others_s(t, o):.2f}{extra}", file=sys.stderr, flush=True)
            if args.prog_stats:
                for cell in cells:
                    veth.set_offloads(cell.mode == "gso-on")
                    t, progs = run_null_stats(children, load, cell.direction)
                    cell.stats["tc-null"] = (t, progs, 0)
                    for name, argv in argvs.items():
                        t, o = run_observed(children, argv, workdir, load, cell.direction,
                                            prog_stats=True)
                        cell.stats[name] = (t, o.progs, o.packets)
                    for name, (t, progs, _) in cell.stats.items():
                        print(f"prog stats {cell.name:<19} {name:<9} {t.gbps:6.2f} Gbit/s, "
                              + ", ".join(f"{n} {cnt} runs {ns / max(cnt, 1):.0f} ns/run"
                                          for n, (cnt, ns) in sorted(progs.items())),
                              file=sys.stderr, flush=True)
    finally:
        children.kill_all()
        veth.close()
    return cells, foreign


# -- the report ----------------------------------------------------------------


def _paired(c: Config, base: Config) -> float:
    """Median of per-round ratios: each run against the base run next to it in time."""
    return statistics.median(t.gbps / b.gbps
                             for t, b in zip(c.transfers, base.transfers, strict=True))


def report(cells: list[Cell], foreign: int, args: argparse.Namespace) -> dict[str, Any]:
    print(f"\nflows benchmark: {args.repeat} rounds x {args.seconds:g} s, one iperf3 TCP stream "
          f"over the veth {NETNS}/{POD_IF} <-> {HOST_IF}, podsight flows on {HOST_IF}; "
          "medians over rounds\n")
    head = (f"{'direction':<11}{'mode':<8}{'config':<11}{'base Gb/s':>10}{'Gb/s':>7}"
            f"{'base kpps':>10}{'kpps':>6}{'ratio':>7}{'paired':>7}{'model':>7}{'target':>7}  "
            f"{'result':<7}{'lost':>4}{'bytes/iperf3':>13}{'cpu %':>6}{'noise %':>8}")
    print(head)
    print("-" * len(head))
    results: dict[str, Any] = {"seconds": args.seconds, "repeat": args.repeat,
                               "cpus": args.cpus, "foreign_bpf_programs": foreign,
                               "cells": []}
    failed = False
    for cell in cells:
        base = cell.configs["base"]
        sender_cpu = None if args.cpus is None else (
            args.cpus[1] if cell.direction == "host-sends" else args.cpus[0])
        noise = cell.noise_percent()
        entry: dict[str, Any] = {"direction": cell.direction, "mode": cell.mode,
                                 "target": cell.target, "offloads": cell.offloads,
                                 "noise_percent": noise, "configs": {}}
        base_cost = base.cost_ns_per_byte(sender_cpu)
        for c in cell.configs.values():
            cost = c.cost_ns_per_byte(sender_cpu)
            entry["configs"][c.name] = {
                "median_gbps": c.median_gbps, "median_kpps": c.median_kpps,
                "sender_cost_ns_per_byte": cost,
                "transfers": [asdict(t) for t in c.transfers],
                "observed": [asdict(o) for o in c.observed],
            }
            if c.argv is None and not c.null_tc:
                continue
            ratio = c.median_gbps / base.median_gbps
            paired = _paired(c, base)
            model = base_cost / cost
            if c.null_tc:  # a reference, judged against nothing
                print(f"{cell.direction:<11}{cell.mode:<8}{c.name:<11}{base.median_gbps:>10.2f}"
                      f"{c.median_gbps:>7.2f}{base.median_kpps:>10.0f}{c.median_kpps:>6.0f}"
                      f"{ratio:>7.3f}{paired:>7.3f}{model:>7.3f}{'':>7}  {'(floor)':<7}")
                entry["configs"][c.name].update(ratio=ratio, paired_ratio=paired,
                                                model_ratio=model)
                continue
            lost = sum(o.lost for o in c.observed)
            checks = [payload_check(t, o) for t, o in zip(c.transfers, c.observed, strict=True)]
            byte_ratio = statistics.median(r for r, _ in checks)
            bytes_ok = all(ok for _, ok in checks)
            valid = all(o.invalid_lines == 0 for o in c.observed)
            cpu = statistics.median(o.cpu_s for o in c.observed)
            cpu_pct = 100 * cpu / args.seconds
            judged = model if args.judge == "model" else paired
            passed = judged >= cell.target and lost == 0 and bytes_ok and valid
            failed = failed or not passed
            result = "pass" if passed else "FAIL"
            print(f"{cell.direction:<11}{cell.mode:<8}{c.name:<11}{base.median_gbps:>10.2f}"
                  f"{c.median_gbps:>7.2f}{base.median_kpps:>10.0f}{c.median_kpps:>6.0f}"
                  f"{ratio:>7.3f}{paired:>7.3f}{model:>7.3f}{cell.target:>7.2f}  {result:<7}"
                  f"{lost:>4}{byte_ratio:>12.4f}{' ' if bytes_ok else '!'}"
                  f"{cpu_pct:>6.1f}{noise:>8.1f}")
            entry["configs"][c.name].update(
                ratio=ratio, paired_ratio=paired, model_ratio=model, lost=lost,
                bytes_ratio=byte_ratio, bytes_ok=bytes_ok, json_valid=valid, cpu_s=cpu,
                cpu_percent=cpu_pct, passed=passed,
            )
        results["cells"].append(entry)
    print(f"""
tc-null: an empty tc program on both directions of {HOST_IF} (tcx), no podsight: the cost of
the hook itself, the best any tc-based observer can do.
ratio: median rates; paired: median of per-round ratios; model: sender-side CPU per byte
(the sending iperf3 with the softirqs it ran, ksoftirqd on its CPU), base / (config + all of
podsight's CPU); result: {args.judge} against the target, with zero lost records, the data-stream
bytes right and valid JSON; kpps: data-direction frames/s through {HOST_IF} (a GSO super-packet
counts once); bytes/iperf3: the data stream's bytes in podsight's records over the payload
iperf3 moved (whole frames: {1 + WIRE_HEADERS / 1448:.4f} for full 1448-byte segments; '!' if the
payload does not match); cpu %: podsight's CPU from ready to exit, % of one CPU over the
transfer; noise %: the most CPU anything else used during one of the cell's transfers.""")
    stats = [c for c in cells if c.stats]
    if stats:
        print("\ntc program cost: one more run per cell and configuration with BPF run-time "
              "statistics on\n(they add two clock reads per run: upper bounds); packets: "
              "podsight's packet counter, wire\npackets both ways (a GSO super-packet counts "
              "its segments); over tc-null: ns per packet beyond\nthe empty program's "
              "ns/run (the hook and the statistics themselves); share of a CPU: program\n"
              "run time over the transfer\n")
        head = (f"{'direction':<11}{'mode':<8}{'config':<11}{'program':<15}{'runs':>11}"
                f"{'ns/run':>8}{'packets':>11}{'ns/packet':>10}{'over tc-null':>13}{'Gb/s':>7}"
                f"{'share of a CPU':>16}")
        print(head)
        print("-" * len(head))
        for cell in stats:
            entry: dict[str, Any] = {}
            null_runs = sum(cnt for cnt, _ in cell.stats["tc-null"][1].values())
            null_ns = sum(ns for _, ns in cell.stats["tc-null"][1].values())
            null_per_run = null_ns / max(null_runs, 1)
            for config, (t, progs, packets) in cell.stats.items():
                programs: dict[str, Any] = {}
                for name, (cnt, ns) in sorted(progs.items()):
                    if not cnt:
                        continue
                    print(f"{cell.direction:<11}{cell.mode:<8}{config:<11}{name:<15}{cnt:>11,}"
                          f"{ns / cnt:>8.1f}{'':>11}{'':>10}{'':>13}{t.gbps:>7.2f}"
                          f"{100 * ns / 1e9 / t.seconds:>15.1f}%")
                    programs[name] = {"runs": cnt, "run_time_ns": ns, "ns_per_run": ns / cnt}
                runs = sum(cnt for cnt, _ in progs.values())
                total_ns = sum(ns for _, ns in progs.values())
                entry[config] = {"gbps": t.gbps, "programs": programs, "run_time_ns": total_ns}
                if config == "tc-null":
                    continue
                over = (total_ns - null_per_run * runs) / max(packets, 1)
                print(f"{cell.direction:<11}{cell.mode:<8}{config:<11}{'both':<15}{runs:>11,}"
                      f"{total_ns / max(runs, 1):>8.1f}{packets:>11,}"
                      f"{total_ns / max(packets, 1):>10.1f}{over:>13.1f}{t.gbps:>7.2f}"
                      f"{100 * total_ns / 1e9 / t.seconds:>15.1f}%")
                entry[config].update(packets_counted=packets,
                                     ns_per_segment=total_ns / max(packets, 1),
                                     ns_per_segment_over_null=over)
            results["cells"][cells.index(cell)]["prog_stats"] = entry
    print()
    for cell in cells:
        print(f"offloads {cell.name}: " + "; ".join(f"{k}: {v}" for k, v in cell.offloads.items()))
    if foreign:
        print(f"warning: {foreign} other BPF tracing program(s) were loaded "
              "during the run; they tax every configuration and make the figures noisier")
    results["passed"] = not failed
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--seconds", type=float, default=8.0,
                   help="length of each iperf3 transfer (default 8)")
    p.add_argument("--quick", action="store_true", help="3-second transfers (a smoke run)")
    p.add_argument("--repeat", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--modes", type=_choices(tuple(MODES)), default=list(MODES),
                   help="offload modes, comma-separated (default gso-on,gso-off)")
    p.add_argument("--directions", type=_choices(DIRECTIONS), default=list(DIRECTIONS),
                   help="who sends: pod-sends (data enters psbh0), host-sends (iperf3 -R, data "
                        "leaves psbh0); comma-separated (default both)")
    p.add_argument("--cpus", type=_cpus, default=(0, 1), metavar="CLIENT,SERVER",
                   help="pin the iperf3 client (in the pod) and server to these CPUs (iperf3 -A; "
                        "default 0,1: steadier than letting them share one), or 'none'")
    p.add_argument("--podsight", default=str(REPO / ".venv" / "bin" / "podsight"),
                   help="the podsight command (shell words; default .venv/bin/podsight)")
    p.add_argument("--enable-all", action="store_true",
                   help="add ps-all: podsight flows --enable-all (RTT, drops, DNS)")
    p.add_argument("--candidate", metavar="CMD", action="append", default=[],
                   help="also run this podsight command (a patched build, say) as 'candidate', "
                        "interleaved with the rest: an A/B in one run; may be repeated "
                        "(candidate2, ...)")
    p.add_argument("--judge", choices=("model", "paired"), default="model",
                   help="the ratio 'result' compares with the target (default model: steadier "
                        "than rates when other work shares the machine)")
    p.add_argument("--no-prog-stats", dest="prog_stats", action="store_false",
                   help="skip the extra run per cell that measures the tc programs' run time")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds = 3.0
    if args.seconds < 1 or args.repeat < 1:
        p.error("--seconds must be at least 1 and --repeat positive")
    return args


def _cpus(value: str) -> tuple[int, int] | None:
    if value == "none":
        return None
    try:
        client, server = (int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("CLIENT,SERVER CPU numbers (0,1), or none") from None
    return client, server


def _choices(allowed: tuple[str, ...]) -> Any:
    def parse(value: str) -> list[str]:
        got = [v.strip() for v in value.split(",") if v.strip()]
        bad = [v for v in got if v not in allowed]
        if bad or not got:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}")
        return list(dict.fromkeys(got))

    return parse


def preflight(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        raise BenchError("needs root (it builds a network namespace and loads eBPF programs)")
    for tool, package in (("iperf3", "iperf3"), ("ethtool", "ethtool"), ("ip", "iproute2")):
        if shutil.which(tool) is None:
            raise BenchError(f"{tool} not found (apt-get install {package})")
    podsight = shlex.split(args.podsight)[0]
    if shutil.which(podsight) is None:
        raise BenchError(f"podsight not found at {podsight} (make setup, or --podsight CMD)")
    if args.prog_stats and shutil.which("bpftool") is None:
        raise BenchError("bpftool not found (apt-get install bpftool), or use --no-prog-stats")
    if stats_sysctl_on():
        print("bench: warning: kernel.bpf_stats_enabled is 1: every podsight row pays for "
              "BPF run-time statistics", file=sys.stderr)



def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def work(children: Children) -> dict[str, Any]:
        preflight(args)
        return report(*run(args, children), args)

    return run_guarded("bench/flows.py", work, args.json)

if __name__ == "__main__":
    sys.exit(main())
