"""`podsight packets -w` beside `tcpdump -w` on the same veth load, in one run.

usage (root, from the repository root; takes the shared test lock itself):

    .venv/bin/python bench/packets.py [--seconds 3] [--rounds 2] [--json FILE]

Two namespaces joined by a veth (psk-c/eth0 10.254.7.1 <-> psk-s/eth0
10.254.7.2, TSO/GSO/GRO off, so every wire packet is one skb), an iperf3
TCP stream from psk-c to psk-s. In each round, in turn: no capture, then
tcpdump and podsight on psk-s's eth0 with snaplen 96, whole packets, and a
filter that rejects everything (``udp port 9``). Reported per config:
packets/s captured, kernel drops, CPU seconds per million packets (the
capturer's own CPU time while iperf3 ran, from /proc/PID/task/*/schedstat,
divided by the packets that crossed the interface), and iperf3's throughput
relative to the run without capture and to tcpdump's.

``--variant 'podsight full,podsight -s 96:rr1:chrt -r 1'`` adds rows after the configs
named: the same capturer under a command prefix (``chrt -r 1``, ``nice -n -10``, ``env
X=1``) and/or with more flags of its own (``'podsight full:page-cache::--page-cache'``,
``'tcpdump -s 0:B128::-B 131072'``), in every round, with podsight's ratio to the same
round's tcpdump.

With ``--prog-stats`` the kernel's run-time statistics (BPF_ENABLE_STATS) are
on while iperf3 runs beside podsight, and the rows say how long podsight's
programs ran per packet in the kernel (``prog_ns``: the entry program with
its filter, the tail call and the capture program, from ``bpftool prog
show``). The statistics add two clock reads to every run, so leave them off
for the throughput figures.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import BenchError, Children, run_guarded, wait_with_cpu

CLIENT_NS, SERVER_NS = "psk-c", "psk-s"
CLIENT_ADDR, SERVER_ADDR = "10.254.7.1", "10.254.7.2"
PODSIGHT = [sys.executable, "-m", "podsight.cli.main"]
LOCK = Path(os.environ.get("PODSIGHT_TEST_LOCK", "/run/podsight-tests.lock"))


def sh(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        raise BenchError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


def teardown() -> None:
    for ns in (CLIENT_NS, SERVER_NS):
        subprocess.run(["ip", "netns", "pids", ns], capture_output=True, check=False)
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                              check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def setup() -> None:
    teardown()
    atexit.register(teardown)
    if " 10.254.7." in sh("ip", "-o", "-4", "addr", "show"):
        raise BenchError("10.254.7.0/30 is in use on this host")
    sh("ip", "netns", "add", CLIENT_NS)
    sh("ip", "netns", "add", SERVER_NS)
    sh("ip", "-n", CLIENT_NS, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
       "netns", SERVER_NS)
    for ns, addr in ((CLIENT_NS, CLIENT_ADDR), (SERVER_NS, SERVER_ADDR)):
        sh("ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "tso", "off", "gso", "off",
           "gro", "off")


def iface_packets() -> int:
    out = json.loads(sh("ip", "-n", SERVER_NS, "-s", "-j", "link", "show", "eth0"))
    stats = out[0]["stats64"]
    return int(stats["rx"]["packets"]) + int(stats["tx"]["packets"])


def task_cpu_ns(pid: int) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    return total


def thread_cpu_ns(pid: int) -> dict[str, int]:
    """CPU ns so far per thread name (summed over threads of one name) of ``pid``."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                base = f"/proc/{pid}/task/{task}"
                name = Path(f"{base}/comm").read_text().strip()
                ns = int(Path(f"{base}/schedstat").read_text().split()[0])
                out[name] = out.get(name, 0) + ns
    return out


PODSIGHT_EXTRA: list[str] = []  # --podsight-args: more flags for every podsight run
BASE_SRC: list[str] = []  # --base-src: a second podsight's source tree, run as podsight-base
BASE_EXTRA: list[str] = []  # --base-args: podsight-base's flags instead of --podsight-args
#: --variant: config label -> (command prefix, more podsight flags) of the extra rows
VARIANTS: dict[str, tuple[list[str], list[str]]] = {}


def capturer(kind: str, snaplen: int, expr: str, out: Path, label: str = "") -> list[str]:
    prefix, more = VARIANTS.get(label, ([], []))
    if kind == "tcpdump":
        return ["ip", "netns", "exec", SERVER_NS, *prefix, "tcpdump", "-i", "eth0", "-s",
                str(snaplen), "-w", str(out), *more, *([expr] if expr else [])]
    extra = BASE_EXTRA if kind == "podsight-base" and BASE_EXTRA else PODSIGHT_EXTRA
    return [*prefix, *PODSIGHT, "packets", "--netns", SERVER_NS, "-s", str(snaplen or 262144),
            "-w", str(out), *extra, *more, *([expr] if expr else [])]


def wait_ready(proc: subprocess.Popen[bytes], err: Path, words: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if words in err.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise BenchError(f"capturer exited: {err.read_text(errors='replace').strip()}")
        time.sleep(0.05)
    raise BenchError(f"capturer not ready: {err.read_text(errors='replace').strip()}")


def prog_run_time() -> tuple[int, int]:
    """(run_time_ns, run_cnt) summed over podsight's packets entry programs now loaded."""
    progs = json.loads(sh("bpftool", "-j", "prog", "show"))
    mine = [p for p in progs if str(p.get("name", "")).startswith("packets_")]
    return (sum(int(p.get("run_time_ns", 0)) for p in mine),
            sum(int(p.get("run_cnt", 0)) for p in mine))


def one(children: Children, label: str, kind: str | None, snaplen: int, expr: str,
        seconds: float, port: int, work: Path, prog_stats: bool = False,
        bitrate: float = 0.0) -> dict[str, Any]:
    out = work / f"{label}.pcap"
    err = work / f"{label}.err"
    proc = None
    if kind is not None:
        env = None
        if kind == "podsight-base":
            env = {**os.environ, "PYTHONPATH": BASE_SRC[0]}
        with err.open("wb") as ferr:
            proc = children.start(capturer(kind, snaplen, expr, out, label),
                                  stdout=subprocess.DEVNULL, stderr=ferr,
                                  stdin=subprocess.DEVNULL, env=env)
        wait_ready(proc, err, "listening on" if kind == "tcpdump" else "capturing packets")
    stats = None
    if prog_stats and kind == "podsight":
        from podsight.ebpf import RunTimeStats

        stats = RunTimeStats()
        ns0, runs0 = prog_run_time()
    cpu0 = task_cpu_ns(proc.pid) if proc else 0
    threads0 = thread_cpu_ns(proc.pid) if proc else {}
    pk0 = iface_packets()
    t0 = time.monotonic()
    limit = ["-b", f"{bitrate:.0f}", "--pacing-timer", "200"] if bitrate else []
    client = subprocess.run(["ip", "netns", "exec", CLIENT_NS, "iperf3", "-c", SERVER_ADDR,
                             "-p", str(port), "-t", str(seconds), "-J", *limit],
                            capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - t0
    packets = iface_packets() - pk0
    prog_ns = None
    if stats is not None:
        ns1, runs1 = prog_run_time()
        stats.close()
        prog_ns = round((ns1 - ns0) / max(runs1 - runs0, 1), 1)
    cpu = (task_cpu_ns(proc.pid) - cpu0) / 1e9 if proc else 0.0
    threads = ({name: round((ns - threads0.get(name, 0)) / 1e9, 3)
                for name, ns in thread_cpu_ns(proc.pid).items()} if proc else {})
    if client.returncode:
        raise BenchError(f"iperf3 failed: {client.stdout[-300:]} {client.stderr[-300:]}")
    gbps = json.loads(client.stdout)["end"]["sum_sent"]["bits_per_second"] / 1e9
    row: dict[str, Any] = {"label": label, "gbps": round(gbps, 3), "iface_packets": packets,
                           "pps": round(packets / elapsed)}
    if prog_ns is not None:
        row["prog_ns"] = prog_ns
    if proc is not None:
        time.sleep(0.3)  # what the capturer still has in flight
        os.killpg(proc.pid, signal.SIGINT)
        total_cpu = wait_with_cpu(proc, 60)
        text = err.read_text(errors="replace")
        if kind == "tcpdump":
            captured = int(re.search(r"(\d+) packets? captured", text)[1])  # type: ignore[index]
            drops = int(re.search(r"(\d+) packets? dropped by kernel", text)[1])  # type: ignore[index]
        else:
            m = re.search(r"podsight: (\d+) packets captured, (\d+) received by filter.*?, "
                          r"(\d+) lost", text)
            if m is None:
                raise BenchError(f"no summary from podsight: {text.strip()[-400:]}")
            captured, drops = int(m[1]), int(m[3])
        tshark = subprocess.run(["capinfos", "-c", "-M", str(out)], capture_output=True,
                                text=True, check=False)
        in_file = re.search(r"Number of packets:\s+(\d+)", tshark.stdout)
        row.update(captured=captured, kernel_drops=drops, cpu_s=round(cpu, 3),
                   total_cpu_s=round(total_cpu or 0.0, 3),
                   cpu_s_per_mpkt=round(cpu / max(packets, 1) * 1e6, 3),
                   cpu_s_per_mcaptured=round(cpu / max(captured, 1) * 1e6, 3),
                   thread_cpu_s={k: v for k, v in threads.items() if v >= 0.005},
                   captured_pps=round(captured / elapsed),
                   file_packets=int(in_file[1]) if in_file else -1,
                   file_bytes=out.stat().st_size if out.exists() else 0)
    with contextlib.suppress(FileNotFoundError):
        out.unlink()
    return row


CONFIGS = [
    ("none", None, 0, ""),
    ("tcpdump -s 96", "tcpdump", 96, ""),
    ("podsight -s 96", "podsight", 96, ""),
    ("tcpdump -s 0", "tcpdump", 0, ""),
    ("podsight full", "podsight", 0, ""),
    ("tcpdump reject-all", "tcpdump", 96, "udp port 9"),
    ("podsight reject-all", "podsight", 96, "udp port 9"),
]


def work(args: argparse.Namespace, children: Children) -> dict[str, Any]:
    for tool in ("tcpdump", "iperf3", "ethtool", "capinfos"):
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode:
            raise BenchError(f"{tool} is missing (make setup-test)")
    with LOCK.open("w") as lock:
        print("bench: waiting for the shared test lock", file=sys.stderr)
        fcntl.flock(lock, fcntl.LOCK_EX)
        setup()
        port = 5301
        server = children.start(["ip", "netns", "exec", SERVER_NS, "iperf3", "-s", "-p",
                                 str(port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        rows: list[dict[str, Any]] = []
        rated: list[dict[str, Any]] = []
        with tempfile.TemporaryDirectory(prefix="podsight-bench-") as tmp:
            for rnd in range(args.rounds):
                for label, kind, snap, expr in configs(args.only):
                    row = one(children, label, kind, snap, expr, args.seconds, port, Path(tmp),
                              args.prog_stats)
                    row["round"] = rnd
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
                if args.rates:
                    rated += rate_round(children, args, rnd, port, Path(tmp), rows)
        server.kill()
        teardown()
    table = summarize(rows, configs(args.only))
    out: dict[str, Any] = {"rows": rows, "table": table}
    if args.rates:
        out.update(rated=rated, ceilings=summarize_rates(rated, args.rates))
    return out


def packets_per_bit(rows: list[dict[str, Any]], rnd: int, seconds: float) -> float:
    """Wire packets (both directions) per bit of iperf3 payload, from this round's run
    without capture: turns a packet rate into the bitrate iperf3 is given."""
    base = [r for r in rows if r["label"] == "none" and r["round"] == rnd]
    if not base:
        raise BenchError("rate-limited rounds need the uncaptured run (do not --only it away)")
    r = base[0]
    return float(r["iface_packets"]) / (r["gbps"] * 1e9 * seconds)


def rate_round(children: Children, args: argparse.Namespace, rnd: int, port: int, tmp: Path,
               rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Whole packets at each of ``args.rates`` (packets/s on the wire), tcpdump -s 0 and
    podsight in turn (which goes first alternates by round): where each one starts to drop
    when both get the same load, rather than whatever rate each lets the sender reach."""
    per_bit = packets_per_bit(rows, rnd, args.seconds)
    tools = [("tcpdump -s 0", "tcpdump"), ("podsight full", "podsight")]
    if BASE_SRC:
        tools.append(("podsight-base full", "podsight-base"))
    if rnd % 2:
        tools.reverse()
    out = []
    for pps in args.rates:
        for label, kind in tools:
            row = one(children, f"{label} @{pps // 1000}k", kind, 0, "", args.seconds, port,
                      tmp, bitrate=pps / per_bit)
            row.update(round=rnd, tool=kind, target_pps=pps,
                       drop_pct=round(100 * row["kernel_drops"]
                                      / max(row["kernel_drops"] + row["captured"], 1), 3))
            out.append(row)
            print(json.dumps(row), file=sys.stderr)
    return out


def summarize_rates(rated: list[dict[str, Any]], rates: list[int]) -> dict[str, Any]:
    """Per target rate and tool: the wire rate reached (median), drops (sum over rounds,
    and the worst round's share); and each tool's lossless ceiling: the highest rate
    below which no round of it lost a packet."""
    kinds = sorted({r["tool"] for r in rated}, key=["tcpdump", "podsight",
                                                    "podsight-base"].index)
    print(f"\nwhole packets, iperf3 rate-limited ({len({r['round'] for r in rated})} rounds):")
    print(f"{'target pps':>10} | " + " | ".join(
        f"{kind + ': wire pps':>22} {'drops':>9} {'worst %':>8} {'CPU s/Mpkt':>10}"
        for kind in kinds))
    table = []
    ceiling = dict.fromkeys(kinds, 0)
    clean = dict.fromkeys(kinds, True)
    for pps in rates:
        entry: dict[str, Any] = {"target_pps": pps}
        cells = []
        for kind in kinds:
            mine = [r for r in rated if r["target_pps"] == pps and r["tool"] == kind]
            wire = statistics.median(r["pps"] for r in mine)
            drops = sum(r["kernel_drops"] for r in mine)
            worst = max(r["drop_pct"] for r in mine)
            cpu = statistics.median(r["cpu_s_per_mpkt"] for r in mine)
            entry[kind] = {"wire_pps": wire, "drops": drops, "worst_drop_pct": worst,
                           "cpu_s_per_mpkt": cpu,
                           "file_ok": all(r["file_packets"] == r["captured"] for r in mine)}
            if drops == 0 and clean[kind]:
                ceiling[kind] = int(wire)
            elif drops:
                clean[kind] = False
            cells.append(f"{wire:>22,.0f} {drops:>9,} {worst:>8.2f} {cpu:>10.3f}")
        table.append(entry)
        print(f"{pps:>10,} | " + " | ".join(cells))
    print("lossless up to (wire packets/s, every round): "
          + ", ".join(f"{kind} {ceiling[kind]:,}" for kind in kinds))
    return {"table": table, "lossless_up_to_pps": ceiling}


def configs(only: str | None) -> list[tuple[str, str | None, int, str]]:
    """CONFIGS, or those whose label is in the comma-separated ``only`` ("none" always)."""
    chosen = CONFIGS
    if only:
        wanted = {w.strip() for w in only.split(",")} | {"none"}
        chosen = [c for c in CONFIGS if c[0] in wanted]
    out = []
    for c in chosen:
        out.append(c)
        for label in VARIANTS:
            if label.startswith(c[0] + " ["):
                out.append((label, c[1], c[2], c[3]))
    return out


def summarize(rows: list[dict[str, Any]],
              chosen: list[tuple[str, str | None, int, str]] = CONFIGS) -> list[dict[str, Any]]:
    """Medians over rounds, with the noise: the range of iperf3's rate and of the CPU cost,
    and podsight's rate over tcpdump's taken round by round (one round's pair ran minutes
    apart at most, so its ratio is the least noisy figure)."""
    def vals(label: str, key: str) -> list[float]:
        return [r[key] for r in rows if r["label"] == label and key in r]

    def med(label: str, key: str) -> float:
        v = vals(label, key)
        return statistics.median(v) if v else float("nan")

    def span(label: str, key: str, fmt: str) -> str:
        v = vals(label, key)
        return f"{format(min(v), fmt)}-{format(max(v), fmt)}" if v else "-"

    base = med("none", "gbps")
    out = []
    print(f"{'config':20} {'captured/s':>10} {'drops':>7} {'CPU s/Mpkt':>17} "
          f"{'iperf3 Gbit/s':>18} {'vs none':>7} {'vs tcpdump, per round':>24}")
    for label, kind, _, _ in chosen:
        gbps = med(label, "gbps")
        peer = label.split(" [")[0].replace("podsight", "tcpdump").replace("full", "-s 0")
        ratios = []
        if kind == "podsight":
            ref = {r["round"]: r["gbps"] for r in rows if r["label"] == peer}
            ratios = [r["gbps"] / ref[r["round"]] for r in rows
                      if r["label"] == label and ref.get(r["round"])]
        drops = sum(r.get("kernel_drops", 0) for r in rows if r["label"] == label)
        entry = {"config": label, "captured_pps": med(label, "captured_pps"),
                 "kernel_drops": drops, "cpu_s_per_mpkt": med(label, "cpu_s_per_mpkt"),
                 "cpu_range": span(label, "cpu_s_per_mpkt", ".3f"),
                 "gbps": gbps, "gbps_range": span(label, "gbps", ".2f"), "vs_none": gbps / base,
                 "vs_tcpdump": statistics.median(ratios) if ratios else float("nan"),
                 "vs_tcpdump_range": (f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"),
                 "prog_ns": med(label, "prog_ns")}
        out.append(entry)
        cap = "-" if kind is None else f"{entry['captured_pps']:,.0f}"
        cpu = "-" if kind is None else f"{entry['cpu_s_per_mpkt']:.3f} ({entry['cpu_range']})"
        vs = ("" if not ratios else
              f"{entry['vs_tcpdump']:.2f} ({entry['vs_tcpdump_range']})")
        print(f"{label:20} {cap:>10} {drops if kind else '-':>7} {cpu:>17} "
              f"{gbps:>5.2f} ({entry['gbps_range']}) {entry['vs_none']:>7.2f} {vs:>24}")
    return out


def rates_arg(text: str) -> list[int]:
    """``100k,250k,1M`` -> [100000, 250000, 1000000]."""
    out = []
    for word in text.split(","):
        word = word.strip().lower()
        mult = {"k": 1000, "m": 1000000}.get(word[-1:], 1)
        try:
            out.append(int(float(word.rstrip("km")) * mult))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a rate: {word!r}") from None
    return sorted(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", help="comma-separated config labels to run (default all)")
    parser.add_argument("--prog-stats", action="store_true",
                        help="also measure podsight's kernel programs per packet (bpf_stats)")
    parser.add_argument("--rates", type=rates_arg, default=[],
                        help="also whole packets at these wire packet rates, iperf3 limited, "
                             "e.g. 100k,200k,400k")
    parser.add_argument("--base-src", type=Path,
                        help="with --rates: also run the podsight of this src tree "
                             "(podsight-base), for a before/after in the same run")
    parser.add_argument("--base-args", default="",
                        help="podsight-base's flags (default: --podsight-args)")
    parser.add_argument("--podsight-args", default="",
                        help="more flags for podsight, e.g. '-B 2M'")
    parser.add_argument("--variant", action="append", default=[],
                        metavar="CONFIGS:NAME:PREFIX[:FLAGS]",
                        help="extra rows after each of the comma-separated configs (e.g. "
                             "'podsight full,podsight -s 96:rr1:chrt -r 1'): the same capturer "
                             "run under the command PREFIX and with more FLAGS (podsight's or "
                             "tcpdump's), labelled "
                             "'CONFIG [NAME]'")
    args = parser.parse_args()
    for text in args.variant:
        parts = text.split(":")
        if len(parts) not in (3, 4) or not parts[1]:
            parser.error(f"--variant {text!r}: use CONFIGS:NAME:PREFIX[:FLAGS]")
        for base in parts[0].split(","):
            VARIANTS[f"{base.strip()} [{parts[1]}]"] = (parts[2].split(),
                                                         parts[3].split() if len(parts) == 4
                                                         else [])
    PODSIGHT_EXTRA[:] = args.podsight_args.split()
    BASE_SRC[:] = [str(args.base_src.resolve())] if args.base_src else []
    BASE_EXTRA[:] = args.base_args.split()
    if os.geteuid() != 0:
        print("packets bench: run as root", file=sys.stderr)
        return 1
    return run_guarded("packets bench", lambda children: work(args, children), args.json)


if __name__ == "__main__":
    sys.exit(main())
