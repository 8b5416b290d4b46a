"""Benchmark: what ``podsight serve`` costs a connection storm, and how it holds up.

Run as root (under the bench lock: ``flock /run/podsight-bench.lock ...``; it takes none)::

    .venv/bin/python bench/graph.py [--seconds 10] [--repeat 3] [--long 1000000] [--json F]

Measured, all in one run:

``rate``
    bench/connstorm alone (``base``) and with ``podsight serve`` running
    (``serve``), interleaved in rounds so drift lands on both alike; the ratio is
    serve / base. Target: at least 0.90.
``records``
    every storm connection must reach the graph: the edge to the storm's port must
    count exactly the connects connstorm made, and ``podsight_lost_events_total``
    must stay 0. Target: 0 lost.
``rss``
    serve's resident memory after 100k connections and after ``--long`` (1M), from
    /proc: the graph keeps edges, not connections. Target: within 10%.
``programs`` (``--prog-stats``)
    the kernel's own account of serve's programs during one more storm
    (``BPF_ENABLE_STATS``: run count and run time per program, from bpftool):
    runs per connect, ns per run and ns per connect. The statistics add two clock
    reads to every run, so the rates of that storm are not compared.
``api``
    ``/api/graph/data`` answering a graph of 1,000 workloads (about 3,000 edges),
    median and 95th percentile over 100 requests on loopback. Target: under 50 ms.

Everything goes to 127.0.0.1. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchlib import BenchError, Children, run_guarded
from tcpconnect import build_connstorm, run_storm

ROOT = Path(__file__).resolve().parent.parent
PODSIGHT = [sys.executable, "-m", "podsight.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """podsight serve on loopback, for the host's own connections."""

    def __init__(self, children: Children, src: Path = ROOT / "src") -> None:
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=str(src))
        self.proc = children.start([*PODSIGHT, "serve", "--listen", f"127.0.0.1:{self.port}"],
                                   stderr=subprocess.PIPE, env=env)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline().decode()
            if "serving" in line:
                return
            if not line:
                break
        raise BenchError("podsight serve did not start")

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=60) as r:
            body: bytes = r.read()
            return body

    def connections_to(self, port: int) -> int:
        graph = json.loads(self.get("/api/graph.json"))
        return sum(e["detail__connections"] for e in graph["edges"]
                   if e["detail__port"] == port and e["target"].startswith("n/"))

    def lost(self) -> float:
        text = self.get("/metrics").decode()
        return sum(float(m[1]) for m in re.finditer(
            r'^podsight_lost_events_total\{[^}]*\} (\S+)$', text, re.M))

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status)[1])  # type: ignore[index]

    def cpu_s(self) -> float:
        """serve's CPU time so far (user + system, every thread), from /proc."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def prog_ids(self) -> set[int]:
        """The IDs of the BPF programs serve holds (from its fds)."""
        ids = set()
        for info in Path(f"/proc/{self.proc.pid}/fdinfo").iterdir():
            with contextlib.suppress(OSError):
                m = re.search(r"^prog_id:\s+(\d+)", info.read_text(), re.M)
                if m:
                    ids.add(int(m[1]))
        return ids

    def lost_causes(self) -> dict[str, float]:
        """podsight_lost_events_total by gadget/cause, the non-zero ones."""
        text = self.get("/metrics").decode()
        out = {}
        for m in re.finditer(r'^podsight_lost_events_total\{([^}]*)\} (\S+)$', text, re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m[1]))
            if float(m[2]):
                out[f"{labels.get('gadget')}/{labels.get('cause')}"] = float(m[2])
        return out

    def stop(self) -> str:
        """Stop it; its summary lines (losses, program runs the kernel skipped)."""
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.stderr is not None
        err = self.proc.stderr.read().decode(errors="replace")
        self.proc.wait(timeout=60)
        return "\n".join(line for line in err.splitlines() if line.startswith("podsight: ")
                         and ("lost" in line or "skipped" in line))


def prog_runs(ids: set[int]) -> dict[str, tuple[int, int]]:
    """Program name -> (run count, run time ns) for these program IDs, from bpftool."""
    done = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, check=True)
    return {p["name"]: (int(p.get("run_cnt", 0)), int(p.get("run_time_ns", 0)))
            for p in json.loads(done.stdout or b"[]") if p.get("id") in ids}


def prog_stats(children: Children, seconds: float, threads: int, src: Path) -> dict[str, Any]:
    """serve's programs as the kernel counts them over one storm: per program, runs per
    connect and ns per run; in all, kernel ns per connect."""
    from podsight.ebpf import RunTimeStats

    served = Served(children, src)
    try:
        ids = served.prog_ids()
        with RunTimeStats():
            before = prog_runs(ids)
            storm = run_storm(children, seconds, threads)
            wait_count(served, storm.port, storm.connects)
            after = prog_runs(ids)
    finally:
        served.stop()
    programs = {}
    for name, (cnt, ns) in after.items():
        runs, run_ns = cnt - before.get(name, (0, 0))[0], ns - before.get(name, (0, 0))[1]
        if runs:
            programs[name] = {"runs_per_connect": runs / storm.connects,
                              "ns_per_run": run_ns / runs,
                              "ns_per_connect": run_ns / storm.connects}
    return {"connects": storm.connects, "programs": programs,
            "ns_per_connect": sum(p["ns_per_connect"] for p in programs.values())}


def wait_count(served: Served, port: int, want: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        got = served.connections_to(port)
        if got >= want:
            return got
        time.sleep(0.2)
    return got


SYNTHETIC = r"""
import sys, time
from podsight.analysis.graph import Connection, Graph
from podsight.identity.endpoint import Endpoint, PodInfo
from podsight.outputs.http import GraphServer
from podsight.outputs.prometheus import GraphCollector

workloads, per = int(sys.argv[1]), int(sys.argv[2])
graph = Graph()
pods = [Endpoint.for_pod(f"10.1.{i // 250}.{i % 250}",
                         PodInfo(f"ns{i % 20}", f"w{i}-abc", workload_kind="Deployment",
                                 workload_name=f"w{i}")) for i in range(workloads)]
graph.add([Connection((i, j), src, pods[(i * 7 + j * 131 + 1) % workloads], 40000 + j,
                      8080 + j, "client", False, 0, 10**9, 1000, 2000)
           for i, src in enumerate(pods) for j in range(per)])
server = GraphServer("127.0.0.1", 0, graph, GraphCollector(graph, dict))
server.start()
print(server.address[1], flush=True)
sys.stdin.read()
"""


def api_latency(children: Children, workloads: int = 1000, per: int = 3) -> dict[str, float]:
    """/api/graph/data over HTTP on a synthetic graph of ``workloads`` workloads, served by
    podsight's own server in another process (as serve runs it), 100 requests."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = children.start([sys.executable, "-c", SYNTHETIC, str(workloads), str(per)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stdin is not None
    port = int(proc.stdout.readline())
    url = f"http://127.0.0.1:{port}/api/graph/data?stats-type=bytes"
    times = []
    try:
        for _ in range(100):
            t0 = time.perf_counter()
            with urllib.request.urlopen(url, timeout=30) as r:
                body = r.read()
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    data = json.loads(body)
    times.sort()
    return {"nodes": len(data["nodes"]), "edges": len(data["edges"]),
            "median_ms": statistics.median(times), "p95_ms": times[94]}


HOLDER = r"""
import socket, sys
n = int(sys.argv[1])
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4096)
keep = []
for _ in range(n):
    c = socket.create_connection(srv.getsockname()); a, _ = srv.accept()
    c.sendall(b"x" * 100); a.recv(100)
    keep += [c, a]
print(srv.getsockname()[1], flush=True)
sys.stdin.read()
"""


def open_read(children: Children, n: int = 5000, rounds: int = 20) -> dict[str, Any]:
    """Reading every open connection: tcplife's iterator over its table of open sockets
    (iter/bpf_map_elem, each socket read through its address: one walk for every network
    namespace) against sock_diag (``ss -tinH``, which must run in each
    namespace) and a TCP iterator, both for this namespace only."""
    from podsight.ebpf.iters import read_iter
    from podsight.gadgets.tcplife.tcplife import TcpLife

    holder = children.start([sys.executable, "-c", HOLDER, str(n)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdin is not None
    holder.stdout.readline()  # the connections are open (before tcplife: found by its seed)
    out: dict[str, Any] = {"connections": n}
    with TcpLife() as life:
        times, found = [], 0
        for _ in range(rounds):
            t0 = time.perf_counter()
            found = len(life.open_connections())
            times.append(time.perf_counter() - t0)
        out["open_iter_ms"] = statistics.median(times) * 1000
        out["open_iter_records"] = found
        seed = life._obj.program("tcplife_seed").attach_iter()
        try:
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                read_iter(seed)
                times.append(time.perf_counter() - t0)
        finally:
            seed.close()
        out["tcp_iter_per_netns_ms"] = statistics.median(times) * 1000
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        done = subprocess.run(["ss", "-tinH", "state", "established"], capture_output=True,
                              check=True)
        times.append(time.perf_counter() - t0)
    out["sock_diag_ss_per_netns_ms"] = statistics.median(times) * 1000
    out["sock_diag_lines"] = done.stdout.count(b"\n")
    holder.stdin.close()
    holder.wait(timeout=60)
    return out


def work(args: argparse.Namespace, children: Children) -> dict[str, Any]:
    if args.api_only:
        return {"api": api_latency(children)}
    if args.open_only:
        sys.path.insert(0, str(ROOT / "src"))
        return {"open_read": open_read(children)}
    if os.geteuid() != 0:
        raise BenchError("run as root (podsight serve loads kernel programs)")
    build_connstorm()
    sys.path.insert(0, str(ROOT / "src"))
    out: dict[str, Any] = {"base": [], "serve": [], "records": [],
                           "cpu_us": {"base": [], "serve": [], "ref": []}}
    configs = ["base", "serve"]
    srcs = {"serve": ROOT / "src"}
    if args.ref_src:
        configs.append("ref")
        srcs["ref"] = args.ref_src
        out["ref"] = []
    if args.prog_stats:
        out["programs"] = {c: prog_stats(children, args.seconds, args.threads, srcs[c])
                           for c in srcs}
    if args.prog_stats_only:
        return out
    for round_no in range(args.repeat):
        shift = round_no % len(configs)
        for config in configs[shift:] + configs[:shift]:
            if config == "base":
                storm = run_storm(children, args.seconds, args.threads)
                out["base"].append(storm.rate)
                out["cpu_us"]["base"].append(storm.cpu_s / storm.connects * 1e6)
            elif config == "ref":
                served = Served(children, args.ref_src)
                cpu0 = served.cpu_s()
                storm = run_storm(children, args.seconds, args.threads)
                wait_count(served, storm.port, storm.connects)
                out["ref"].append(storm.rate)
                out["cpu_us"]["ref"].append(
                    (storm.cpu_s + served.cpu_s() - cpu0) / storm.connects * 1e6)
                served.stop()
            else:
                served = Served(children)
                cpu0 = served.cpu_s()
                storm = run_storm(children, args.seconds, args.threads)
                got = wait_count(served, storm.port, storm.connects)
                out["serve"].append(storm.rate)
                out["cpu_us"]["serve"].append(
                    (storm.cpu_s + served.cpu_s() - cpu0) / storm.connects * 1e6)
                record: dict[str, Any] = {"connects": storm.connects, "in_graph": got,
                                          "lost": served.lost(),
                                          "causes": served.lost_causes()}
                record["summary"] = served.stop()
                out["records"].append(record)
            print(f"round {round_no + 1} {config}: {storm.rate:,.0f} connects/s",
                  file=sys.stderr)
    base, serve = statistics.median(out["base"]), statistics.median(out["serve"])
    out["ratio"] = serve / base
    out["paired"] = statistics.median(s / b for s, b in zip(out["serve"], out["base"], strict=True))
    # The model: the storm's CPU per connect alone over the storm's and serve's together
    # with serve running; steadier than rates when other work shares the cores.
    cpu = {k: statistics.median(v) for k, v in out["cpu_us"].items() if v}
    out["model"] = cpu["base"] / cpu["serve"]
    if "ref" in cpu:
        out["ref_model"] = cpu["base"] / cpu["ref"]
    if args.ref_src:
        out["ref_ratio"] = statistics.median(out["ref"]) / base
        out["ref_paired"] = statistics.median(
            r / b for r, b in zip(out["ref"], out["base"], strict=True))
    if args.rates_only:
        return out
    # RSS: one serve, a storm until --long connections, sampled at 100k and at the end.
    served = Served(children)
    total, rss_100k = 0, None
    port = None
    while total < args.long:
        storm = run_storm(children, 5, args.threads)
        port = storm.port
        total += storm.connects
        if rss_100k is None and total >= 100_000:
            wait_count(served, port, 0)
            rss_100k = served.rss_kib()
    time.sleep(1)
    rss_end = served.rss_kib()
    out["rss"] = {"connections": total, "at_100k_kib": rss_100k, "at_end_kib": rss_end,
                  "growth": rss_end / rss_100k if rss_100k else None,
                  "lost": served.lost()}
    served.stop()
    out["api"] = api_latency(children)
    out["open_read"] = open_read(children)
    return out


def report(r: dict[str, Any]) -> None:
    for config, ps in r.get("programs", {}).items():
        print(f"{config}: kernel programs {ps['ns_per_connect']:,.0f} ns per connect "
              f"({ps['connects']:,} connects)")
        for name, p in sorted(ps["programs"].items()):
            print(f"  {name:<24} {p['runs_per_connect']:5.2f} runs/connect "
                  f"{p['ns_per_run']:6.0f} ns/run {p['ns_per_connect']:6.0f} ns/connect")
    if "base" in r and "ratio" in r:
        b = r["base"]
        print(f"rates (connects/s) base {[round(x) for x in b]}, serve "
              f"{[round(x) for x in r['serve']]}" + (f", ref {[round(x) for x in r['ref']]}"
                                                      if "ref" in r else ""))
        spread = (max(b) - min(b)) / statistics.median(b)
        cpu = {k: statistics.median(v) for k, v in r.get("cpu_us", {}).items() if v}
        if "model" in r:
            print("CPU us per connect (storm, kernel programs included, + serve): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
                  + f"; model base/serve {r['model']:.2f}"
                  + (f", base/ref {r['ref_model']:.2f}" if "ref_model" in r else ""))
        print(f"serve/base: ratio {r['ratio']:.2f}, paired {r['paired']:.2f}"
              + (f"; ref/base: ratio {r['ref_ratio']:.2f}, paired {r['ref_paired']:.2f}"
                 if "ref_ratio" in r else "") + f"; base spread {spread:.0%} (noise)")
    if "open_read" in r:
        o = r["open_read"]
        print(f"reading {o['connections']:,} open connections ({o['open_iter_records']:,} "
              f"records): map iterator {o['open_iter_ms']:.1f} ms for every "
              f"namespace at once; per namespace, TCP iterator {o['tcp_iter_per_netns_ms']:.1f}"
              f" ms, sock_diag (ss -tin) {o['sock_diag_ss_per_netns_ms']:.1f} ms")
    if "api" in r:
        api = r["api"]
        print(f"/api/graph/data with {api['nodes']} nodes and {api['edges']} edges: median "
              f"{api['median_ms']:.1f} ms, p95 {api['p95_ms']:.1f} ms (target < 50 ms)")
    if r.get("records"):
        lost = sum(x["lost"] for x in r["records"])
        missing = sum(x["connects"] - x["in_graph"] for x in r["records"])
        print(f"connect rate: base {statistics.median(r['base']):,.0f}/s, with podsight "
              f"serve {statistics.median(r['serve']):,.0f}/s: ratio {r['ratio']:.2f} "
              "(target >= 0.90)")
        print(f"connection records: {sum(x['connects'] for x in r['records']):,} storm "
              f"connects, {missing} missing from the graph, {lost:.0f} lost (target 0)")
        for i, x in enumerate(r["records"]):
            if x.get("causes") or x["connects"] != x["in_graph"]:
                print(f"  round {i + 1}: {x['connects'] - x['in_graph']} missing, lost "
                      f"{x.get('causes')}; {x.get('summary', '')}")
    if "rss" in r:
        rss = r["rss"]
        print(f"rss: {rss['at_100k_kib'] / 1024:.1f} MiB at 100k connections, "
              f"{rss['at_end_kib'] / 1024:.1f} MiB at {rss['connections']:,}: "
              f"x{rss['growth']:.3f} (target within 10%), {rss['lost']:.0f} lost")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--long", type=int, default=1_000_000)
    p.add_argument("--json", type=Path)
    p.add_argument("--api-only", action="store_true", help="only the /api/graph/data figure "
                   "(no root, no kernel)")
    p.add_argument("--open-only", action="store_true",
                   help="only the open-connection read: iterators against sock_diag")
    p.add_argument("--prog-stats", action="store_true",
                   help="also the kernel's run time per program over one storm (bpftool)")
    p.add_argument("--prog-stats-only", action="store_true",
                   help="only that (implies --prog-stats)")
    p.add_argument("--rates-only", action="store_true",
                   help="only the connect rates (no RSS, API or open-connection figures)")
    p.add_argument("--ref-src", type=Path, metavar="DIR",
                   help="A/B: also run serve from this source tree (e.g. main's src, from "
                        "git archive) in every round")
    args = p.parse_args(argv)
    args.prog_stats = args.prog_stats or args.prog_stats_only
    if args.prog_stats and shutil.which("bpftool") is None:
        p.error("--prog-stats needs bpftool (apt-get install bpftool)")
    results: dict[str, Any] = {}

    def run(children: Children) -> dict[str, Any]:
        results.update(work(args, children))
        report(results)
        return results

    return run_guarded("bench/graph.py", run, args.json)


if __name__ == "__main__":
    sys.exit(main())
