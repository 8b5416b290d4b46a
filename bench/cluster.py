"""Benchmark: three simulated nodes' connect storms merged by kubectl-podsight.

Run as root (takes /run/podsight-tests.lock itself, like the tests)::

    .venv/bin/python bench/cluster.py [--seconds 8] [--replay 600000]

The target (issue 13): three agents each producing 30k connect events/s, the client
merging at least 90k events/s with 0 lost and 0 duplicated, its CPU per event beside the
local command's. On a 2-core machine the storms, three agents and the client share two
cores, so the phases separate what limits what, all in one run:

1. ``storm_alone``: the three storms (``bench/connstorm``, one per namespace) with no
   tracing at all: the load generator's own ceiling on this machine.
2. ``cluster``: the same storms with three agents (``podsight agent --netns``) and the
   client merging (``-o json`` to /dev/null): events/s merged, lost (kernel + sequence
   gaps), duplicates, CPU per event of the client and of each agent.
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
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from clusterrun import ENV, agents, namespaces, wait_for
from tcpconnect import CONNSTORM, build_connstorm

NODES = {"node-a": "ps-bench-a", "node-b": "ps-bench-b", "node-c": "ps-bench-c"}


def storm(netns: str, seconds: float, threads: int = 1) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", netns, str(CONNSTORM), "-t", str(threads),
                             "-d", str(seconds)], stdout=subprocess.PIPE, text=True)


def storms(seconds: float) -> tuple[list[int], float]:
    """The three storms at once: connects of each, and the wall time they took."""
    t0 = time.monotonic()
    procs = [storm(ns, seconds) for ns in NODES.values()]
    made = [int(json.loads(s.communicate()[0])["connects"]) for s in procs]
    return made, time.monotonic() - t0


def child_cpu(proc: subprocess.Popen[str]) -> float:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _report(text: str) -> dict[str, int]:
    got = sum(int(m) for m in re.findall(r": (?:ok|done): (\d+) records", text))
    lost = sum(int(a) + int(b) for a, b in re.findall(
        r"(\d+) lost in the kernel, (\d+) lost on the way", text))
    dups = sum(int(d) for d in re.findall(r"(\d+) duplicates dropped", text))
    return {"records": got, "lost": lost, "duplicates": dups}


def cluster_phase(seconds: float, tmp: Path) -> dict[str, object]:
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
        made, elapsed = storms(seconds)
        agent_cpu = {a.node: _cpu(a.proc.pid) - cpu0[a.node] for a in running}
        time.sleep(2.0)  # the merge window and the last batches
        client.send_signal(signal.SIGINT)
        client_cpu = child_cpu(client)
        text = err.read_text()
    r = _report(text)
    return {"storm_connects": sum(made), "per_node": made, "seconds": elapsed,
            "storm_rate": sum(made) / elapsed, "records_merged": r["records"],
            "events_per_s": r["records"] / elapsed, "lost": r["lost"],
            "duplicates": r["duplicates"], "client_cpu_s": client_cpu,
            "client_us_per_event": 1e6 * client_cpu / max(r["records"], 1),
            "agent_us_per_event": {n: 1e6 * c / max(m, 1) for (n, c), m in
                                   zip(agent_cpu.items(), made, strict=True)},
            "_merged": str(merged)}


def local_phase(seconds: float, tmp: Path) -> dict[str, object]:
    err = tmp / "local.err"
    local = subprocess.Popen([sys.executable, "-m", "podsight.cli.main", "trace",
                              "tcpconnect", "-o", "json", "--netns", ",".join(NODES.values())],
                             env=ENV, stdout=subprocess.DEVNULL, stderr=err.open("w"), text=True)
    wait_for(lambda: "tracing" in err.read_text(), "local tracing")
    made, elapsed = storms(seconds)
    time.sleep(1.0)
    local.send_signal(signal.SIGINT)
    cpu = child_cpu(local)
    m = re.search(r"podsight: (\d+) events, (\d+) lost", err.read_text())
    events = int(m.group(1)) if m else 0
    return {"storm_connects": sum(made), "seconds": elapsed, "storm_rate": sum(made) / elapsed,
            "events": events, "events_per_s": events / elapsed,
            "lost": int(m.group(2)) if m else None, "cpu_s": cpu,
            "us_per_event": 1e6 * cpu / max(events, 1)}


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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--replay", type=int, default=600_000, help="events per node replayed")
    ap.add_argument("--replay-batch", type=int, default=1500)
    args = ap.parse_args()
    build_connstorm()
    lock = open(os.environ.get("PODSIGHT_TEST_LOCK", "/run/podsight-tests.lock"), "w")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    tmp = Path(f"/tmp/podsight-bench-cluster-{os.getpid()}")
    tmp.mkdir()
    out: dict[str, object] = {"cpus": os.cpu_count()}
    with namespaces(*NODES.values()):
        made, elapsed = storms(args.seconds)
        out["storm_alone"] = {"storm_connects": sum(made), "seconds": elapsed,
                              "storm_rate": sum(made) / elapsed, "per_node": made}
        cluster = cluster_phase(args.seconds, tmp)
        merged = Path(str(cluster.pop("_merged")))
        out["cluster"] = cluster
        out["local"] = local_phase(args.seconds, tmp)
    out["replay"] = replay_phase(merged, args.replay, args.replay_batch, tmp)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
