"""Benchmark: three simulated nodes' connect storms merged by kubectl-podsight.

Run as root (takes /run/podsight-tests.lock itself, like the tests)::

    .venv/bin/python bench/cluster.py [--seconds 8] [--rate 30000] [--refused-pct 50]
        [--replay 600000]

The target (issue 13): three agents each producing 30k connect events/s, the client
merging at least 90k events/s with 0 lost and 0 duplicated, its CPU per event beside the
local command's. Each storm is paced (``connstorm -r``) to ``--rate`` connect attempts/s
in its node's namespace, so the nodes *offer* exactly the target and the question is
whether the pipeline keeps up with it (every event merged, in step with the storms), not
how fast a generator racing the tracers for the same two cores happens to go.
``--refused-pct`` sends that share of the attempts to a closed port: refused connects
are real connect events (result ``refused``) at about half a full connect's CPU, which
leaves the agents and the client more of the machine. The default is half of them: on a
2-core machine 90k/s of full connects alone take 1.1-1.2 cores of the generator, before
any tracing (``--refused-pct 0`` for those). ``--rate 0``: unpaced storms, as fast as
they go (the former bench).

The phases separate what limits what, all in one run:

1. ``storm_alone``: the three storms with no tracing, unpaced (the generator's ceiling on
   this machine) and paced at ``--rate`` (what the offered load itself costs).
2. ``cluster``: the paced storms with three agents (``podsight agent --netns``) and the
   client merging (``-o json`` to a file): attempts offered and made, records merged,
   missing (made - merged), lost (kernel + sequence gaps), duplicates; the merged rate in
   step with the storms (growth of the client's output while they run) and how long the
   client took after the storms ended to write the last record (its merge window is 1 s);
   CPU per event of the client, of each agent and of the storms; ``ours_cores``: the
   cores the storms and tracers used together (/proc/stat's tick samples are not used:
   on this VM they missed up to half a core against the processes' own accounting).
   ``keeps_up``: the storms made the offered rate (within 1%) and every attempt they made
   was merged, none lost, none duplicated. ``others_cores`` (every phase): cores other
   processes used meanwhile (other work on this shared machine, kernel threads).
3. ``local``: the local command (``podsight trace tcpconnect -o json --netns`` of the
   three namespaces) on the same storms: its CPU per event and rate, beside 2.
4. ``replay``: the client's own capacity, free of the load generator: three processes
   speak the agent protocol and send, as fast as the client reads, the records phase 2
   merged (each node's own lines, batches as the agents sent them, times at 30k/s per
   node); the client merges them as in phase 2. Reported: events/s the client sustains,
   its CPU per event, lost and duplicates.

Printed as JSON, never asserted.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from clusterrun import ENV, agents, namespaces, wait_for
from tcpconnect import CONNSTORM, build_connstorm

NODES = {"node-a": "ps-bench-a", "node-b": "ps-bench-b", "node-c": "ps-bench-c"}


@dataclass
class Load:
    """What the three storms are asked for: attempts/s per node (0: unpaced), refused %."""

    seconds: float
    rate: float
    refused_pct: int

    def unpaced(self) -> Load:
        return Load(self.seconds, 0, self.refused_pct)


@dataclass
class Storms:
    """What the three storms did: attempts each made (connects + refused), their rates,
    errors, their window, the generator's CPU, and the other processes' meanwhile."""

    made: list[int]
    rates: list[float]
    errors: int
    seconds: float
    windows: list[float]  # each storm's own window
    started: float  # time.monotonic() when the first one was started
    cpu_s: float
    others_cores: float

    @property
    def rate(self) -> float:
        return sum(self.rates)

    def row(self, load: Load) -> dict[str, object]:
        return {"offered_per_s": load.rate * len(self.made) if load.rate else "unpaced",
                "attempts": sum(self.made), "rate": self.rate,
                "per_node_rate": [round(r) for r in self.rates], "errors": self.errors,
                "seconds": self.seconds, "storms_cpu_s": self.cpu_s,
                "storms_us_per_event": 1e6 * self.cpu_s / max(sum(self.made), 1),
                "others_cores": self.others_cores}


def storm(netns: str, load: Load) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", netns, str(CONNSTORM), "-t", "1",
                             "-d", str(load.seconds), "-r", str(load.rate),
                             "-x", str(load.refused_pct)], stdout=subprocess.PIPE, text=True)


def all_cpu() -> dict[int, tuple[int, float]]:
    """Parent and CPU seconds of every process (kernel threads too). Without its reaped
    children's: a parent reaping a child that ran for minutes would count them all."""
    out: dict[int, tuple[int, float]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                f = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(d.name)] = (int(f[1]), (int(f[11]) + int(f[12])) / os.sysconf(
                "SC_CLK_TCK"))
    return out


class Others:
    """CPU the rest of the machine used meanwhile (other sessions' work, kernel threads):
    the noise column. Per process (the same accounting as the storms' and tracers' CPU,
    which /proc/stat's tick samples are not); this process and ``ours`` (and their
    children) are left out. Processes that ended meanwhile are missed: a lower bound."""

    def __init__(self, ours: set[int]) -> None:
        self.ours = {os.getpid(), *ours}
        self.start = all_cpu()

    def cores(self, seconds: float) -> float:
        end = all_cpu()
        used = sum(c - self.start.get(p, (0, 0.0))[1] for p, (parent, c) in end.items()
                   if p not in self.ours and parent not in self.ours)
        return max(used, 0.0) / seconds


def storms(load: Load, ours: set[int] | None = None) -> Storms:
    """The three storms at once (``ip netns exec`` execs connstorm: its rusage is theirs);
    ``ours``: the tracers' processes, left out of the rest of the machine."""
    others = Others(ours or set())
    t0 = time.monotonic()
    procs = [storm(ns, load) for ns in NODES.values()]
    outs = []
    cpu = 0.0
    for proc in procs:
        assert proc.stdout is not None
        outs.append(json.loads(proc.stdout.read()))
        cpu += child_cpu(proc)
    seconds = max(float(o["seconds"]) for o in outs)
    rest = others.cores(seconds)
    return Storms([int(o["connects"]) + int(o["refused"]) for o in outs],
                  [float(o["rate"]) for o in outs], sum(int(o["errors"]) for o in outs),
                  seconds, [float(o["seconds"]) for o in outs], t0, cpu, rest)


class Growth:
    """The size of a growing output file sampled every 50 ms in a thread (a stat: no
    reading), to tell the merged rate in step with the storms from the rate averaged over
    a run that may have caught up after them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append((time.monotonic(), self.path.stat().st_size))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def bytes_per_s(self, t0: float, t1: float) -> float:
        inside = [(t, b) for t, b in self.samples if t0 <= t <= t1]
        if len(inside) < 2:
            return 0.0
        (ta, ba), (tb, bb) = inside[0], inside[-1]
        return (bb - ba) / (tb - ta)

    def last_growth(self) -> float:
        """When the file reached its final size."""
        final = self.samples[-1][1] if self.samples else 0
        return next((t for t, b in self.samples if b == final), 0.0)


def child_cpu(proc: subprocess.Popen[str]) -> float:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _per_node(text: str) -> dict[str, int]:
    """Records each node's line of the client's report counts."""
    return {n: int(c) for n, c in re.findall(r"node (\S+) \([^)]*\): (?:ok|done): (\d+) records",
                                             text)}


def _report(text: str) -> dict[str, int]:
    got = sum(int(m) for m in re.findall(r": (?:ok|done): (\d+) records", text))
    lost = sum(int(a) + int(b) for a, b in re.findall(
        r"(\d+) lost in the kernel, (\d+) lost on the way", text))
    dups = sum(int(d) for d in re.findall(r"(\d+) duplicates dropped", text))
    return {"records": got, "lost": lost, "duplicates": dups}


def settle(growth: Growth, quiet: float = 2.0, limit: float = 60.0) -> None:
    """Wait until the output has not grown for ``quiet`` seconds (the merge window is 1 s)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if growth.samples and time.monotonic() - growth.last_growth() >= quiet:
            return


def in_step(growth: Growth, out: Path, records: int, s: Storms) -> dict[str, object]:
    """The merged rate while the storms ran (their second second to their end: start-up
    and the merge window left out), and how long after their end the last record came."""
    line = out.stat().st_size / max(records, 1)
    end = s.started + s.seconds
    return {"merged_in_step_per_s": growth.bytes_per_s(s.started + 1.5, end) / line,
            "last_record_after_storms_s": max(growth.last_growth() - end, 0.0)}


def cluster_phase(load: Load, tmp: Path) -> dict[str, object]:
    with agents(NODES, tmp) as running:
        err = tmp / "client.err"
        merged = tmp / "merged.json"
        client = subprocess.Popen(
            [sys.executable, "-m", "podsight.cli.kubectl",
             *[w for a in running for w in ("--agent-addr", a.addr)],
             "trace", "tcpconnect", "-o", "json"],
            env=ENV, stdout=merged.open("w"), stderr=err.open("w"), text=True)
        wait_for(lambda: err.read_text().count("tracing TCP connects") == 3, "3 nodes tracing")
        cpu0 = {a.node: _cpu(a.proc.pid) for a in running}
        client_cpu0 = _cpu(client.pid)
        growth = Growth(merged)
        s = storms(load, {client.pid, *(a.proc.pid for a in running)})
        client_cpu_storm = _cpu(client.pid) - client_cpu0
        agents_cpu_storm = sum(_cpu(a.proc.pid) - cpu0[a.node] for a in running)
        settle(growth)
        growth.stop()
        agent_cpu = {a.node: _cpu(a.proc.pid) - cpu0[a.node] for a in running}
        client.send_signal(signal.SIGINT)
        client_cpu = child_cpu(client)
        text = err.read_text()
    r = _report(text)
    per_node = _per_node(text)
    merged_rate = sum(per_node.get(n, 0) / w for n, w in zip(NODES, s.windows, strict=True))
    keeps_up = (s.rate >= 0.99 * load.rate * len(NODES) and r["records"] == sum(s.made)
                and r["lost"] == 0 and r["duplicates"] == 0) if load.rate else None
    return {**s.row(load), "records_merged": r["records"],
            "missing": sum(s.made) - r["records"], "lost": r["lost"],
            "duplicates": r["duplicates"],
            "merged_per_s": merged_rate,
            "keeps_up": keeps_up,
            **in_step(growth, merged, r["records"], s),
            "client_cpu_s": client_cpu, "client_cpu_during_storms_s": client_cpu_storm,
            "agents_cpu_during_storms_s": agents_cpu_storm,
            "ours_cores": (s.cpu_s + client_cpu_storm + agents_cpu_storm) / s.seconds,
            "client_us_per_event": 1e6 * client_cpu / max(r["records"], 1),
            "agent_us_per_event": {n: 1e6 * c / max(m, 1) for (n, c), m in
                                   zip(agent_cpu.items(), s.made, strict=True)},
            "_merged": str(merged)}


def local_phase(load: Load, tmp: Path) -> dict[str, object]:
    err = tmp / "local.err"
    out = tmp / "local.json"
    local = subprocess.Popen([sys.executable, "-m", "podsight.cli.main", "trace",
                              "tcpconnect", "-o", "json", "--netns", ",".join(NODES.values())],
                             env=ENV, stdout=out.open("w"), stderr=err.open("w"), text=True)
    wait_for(lambda: "tracing" in err.read_text(), "local tracing")
    growth = Growth(out)
    cpu0 = _cpu(local.pid)
    s = storms(load, {local.pid})
    cpu_storm = _cpu(local.pid) - cpu0
    settle(growth)
    growth.stop()
    local.send_signal(signal.SIGINT)
    cpu = child_cpu(local)
    m = re.search(r"podsight: (\d+) events, (\d+) lost", err.read_text())
    events = int(m.group(1)) if m else 0
    row = {**s.row(load), "events": events, "missing": sum(s.made) - events,
           "events_per_s": events / s.seconds, **in_step(growth, out, events, s),
           "lost": int(m.group(2)) if m else None, "cpu_s": cpu,
           "cpu_during_storms_s": cpu_storm, "ours_cores": (s.cpu_s + cpu_storm) / s.seconds,
           "us_per_event": 1e6 * cpu / max(events, 1)}
    out.unlink()
    return row


# -- replay: the client alone, fed at full speed by agent-protocol servers -------------------

REPLAY_SERVER = r"""
import sys, time, numpy as np, grpc
from concurrent import futures
from podsight.cluster import agent_pb2 as pb
node, path = sys.argv[1], sys.argv[2]
port, total, batch = (int(v) for v in sys.argv[3:6])
lines = [l for l in open(path, "rb").read().split(b"\n") if l]
step = 1_000_000_000 // 30_000  # 30k events/s of this node's clock
base = time.time_ns()
blobs = [b"".join(lines[(k * batch + i) % len(lines)] + b"\n" for i in range(batch))
         for k in range(20)]  # made once: the servers' CPU is not what is measured
def run(requests, context):
    first = next(requests)
    yield pb.RunReply(started=pb.Started(node=node, what="tracing TCP connects (replay)",
                                         gadget="tcpconnect"))
    seq = 0
    while seq < total:
        n = min(batch, total - seq)
        text = blobs[(seq // batch) % len(blobs)] if n == batch else b"".join(
            lines[(seq + i) % len(lines)] + b"\n" for i in range(n))
        times = base + (np.arange(seq, seq + n, dtype=np.int64) * step)
        yield pb.RunReply(records=pb.Records(first_seq=seq, count=n, lines=text,
                                             times=times.tobytes(), watermark=int(times[-1])))
        seq += n
    yield pb.RunReply(summary=pb.Summary(records=total, line="replayed"))
handler = grpc.method_handlers_generic_handler("podsight.agent.v1.Agent", {
    "Run": grpc.stream_stream_rpc_method_handler(run, request_deserializer=pb.RunRequest.FromString,
                                                 response_serializer=pb.RunReply.SerializeToString)})
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                     options=[("grpc.max_send_message_length", 64 << 20)])
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port(f"127.0.0.1:{port}")
server.start()
print("ready", flush=True)
sys.stdin.read()
"""


def replay_phase(merged: Path, total: int, batch: int, tmp: Path) -> dict[str, object]:
    """The client merging ``total`` events per node replayed at full speed."""
    from clusterrun import free_port

    per_node: dict[str, list[str]] = {n: [] for n in NODES}
    with merged.open() as f:
        for line in f:
            m = re.match(r'\{"node":"([^"]+)",', line)
            if m and m.group(1) in per_node:  # agents' lines name their node, as here
                per_node[m.group(1)].append(line)
    servers = []
    ports = []
    for node, lines in per_node.items():
        path = tmp / f"replay-{node}.json"
        path.write_text("".join(lines) or '{"time":"2026-01-01T00:00:00.000000000Z"}\n')
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-c", REPLAY_SERVER, node, str(path),
                                 str(port), str(total), str(batch)], env=ENV,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        servers.append(proc)
        ports.append(port)
    err = tmp / "replay.err"
    t0 = time.monotonic()
    client = subprocess.Popen(
        [sys.executable, "-m", "podsight.cli.kubectl",
         *[w for p in ports for w in ("--agent-addr", f"127.0.0.1:{p}")],
         "trace", "tcpconnect", "-o", "json"],
        env=ENV, stdout=subprocess.DEVNULL, stderr=err.open("w"), text=True)
    cpu = child_cpu(client)
    elapsed = time.monotonic() - t0
    for proc in servers:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
    r = _report(err.read_text())
    return {"events": r["records"], "seconds": elapsed,
            "events_per_s": r["records"] / elapsed, "lost": r["lost"],
            "duplicates": r["duplicates"], "client_cpu_s": cpu,
            "client_us_per_event": 1e6 * cpu / max(r["records"], 1),
            "batch": batch, "note": "wall time includes the client's start (~1 s)"}


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate (connects/s, 0 or more)")
    return value


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rate", type=_rate, default=30_000.0,
                    help="connect attempts/s each node's storm offers (0: unpaced)")
    ap.add_argument("--refused-pct", type=int, default=50, choices=range(101),
                    metavar="0-100", help="share of the attempts refused (closed port)")
    ap.add_argument("--replay", type=int, default=600_000, help="events per node replayed")
    ap.add_argument("--replay-batch", type=int, default=1500)
    ap.add_argument("--keep", action="store_true", help="keep the run's files in /tmp")
    args = ap.parse_args()
    build_connstorm()
    lock = open(os.environ.get("PODSIGHT_TEST_LOCK", "/run/podsight-tests.lock"), "w")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    tmp = Path(f"/tmp/podsight-bench-cluster-{os.getpid()}")
    tmp.mkdir()
    load = Load(args.seconds, args.rate, args.refused_pct)
    out: dict[str, object] = {"cpus": os.cpu_count(), "load_average": os.getloadavg(),
                              "rate_per_node": args.rate, "refused_pct": args.refused_pct}
    try:
        with namespaces(*NODES.values()):
            alone = {}
            for name, what in (("unpaced", load.unpaced()), ("paced", load)):
                if name == "unpaced" or load.rate:
                    s = storms(what)
                    alone[name] = s.row(what)
            out["storm_alone"] = alone
            cluster = cluster_phase(load, tmp)
            merged = Path(str(cluster.pop("_merged")))
            out["cluster"] = cluster
            out["local"] = local_phase(load, tmp)
        out["replay"] = replay_phase(merged, args.replay, args.replay_batch, tmp)
    finally:
        if not args.keep:  # the merged records alone are ~0.3 GB a run
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
