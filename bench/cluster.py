"""Benchmark: three simulated nodes' connect storms merged by kubectl-podsight.

Run as root (takes /run/podsight-tests.lock itself, like the tests)::

    .venv/bin/python bench/cluster.py [--seconds 8]

Three agents (``podsight agent --netns``), each watching its own network namespace where
``bench/connstorm`` runs a loopback connect storm; the client merges the three streams
(``-o json`` to /dev/null). In the same run, the local command (``podsight trace
tcpconnect -o json``) traces one storm alone, for its CPU per event. Reported: events/s
merged, lost (kernel + sequence gaps) and duplicates from the client's per-node lines,
and client CPU per event (rusage) beside the local command's. Printed, never asserted.
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


def child_cpu(proc: subprocess.Popen[str]) -> float:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    build_connstorm()
    lock = open(os.environ.get("PODSIGHT_TEST_LOCK", "/run/podsight-tests.lock"), "w")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    tmp = Path(f"/tmp/podsight-bench-cluster-{os.getpid()}")
    tmp.mkdir()
    out: dict[str, object] = {}
    with namespaces(*NODES.values()), agents(NODES, tmp) as running:
        err = tmp / "client.err"
        client = subprocess.Popen(
            [sys.executable, "-m", "podsight.cli.kubectl",
             *[w for a in running for w in ("--agent-addr", a.addr)],
             "trace", "tcpconnect", "-o", "json"],
            env=ENV, stdout=subprocess.DEVNULL, stderr=err.open("w"), text=True)
        wait_for(lambda: err.read_text().count("tracing TCP connects") == 3, "3 nodes tracing")
        cpu0 = {a.node: _cpu(a.proc.pid) for a in running}
        t0 = time.monotonic()
        storms = [storm(ns, args.seconds) for ns in NODES.values()]
        made = [json.loads(s.communicate()[0])["connects"] for s in storms]
        elapsed = time.monotonic() - t0
        agent_cpu = {a.node: _cpu(a.proc.pid) - cpu0[a.node] for a in running}
        time.sleep(2.0)  # the merge window and the last batches
        client.send_signal(signal.SIGINT)
        client_cpu = child_cpu(client)
        text = err.read_text()
    got = sum(int(m) for m in re.findall(r": ok: (\d+) records", text))
    lost = sum(int(a) + int(b) for a, b in re.findall(
        r"(\d+) lost in the kernel, (\d+) lost on the way", text))
    dups = sum(int(d) for d in re.findall(r"(\d+) duplicates dropped", text))
    out["cluster"] = {"storm_connects": sum(made), "per_node": made, "seconds": elapsed,
                      "records_merged": got, "events_per_s": got / elapsed, "lost": lost,
                      "duplicates": dups, "client_cpu_s": client_cpu,
                      "client_us_per_event": 1e6 * client_cpu / max(got, 1),
                      "agent_us_per_event": {n: 1e6 * c / max(m, 1) for (n, c), m in
                                             zip(agent_cpu.items(), made, strict=True)}}
    # The local command on one storm, same machine, same run.
    with namespaces("ps-bench-l"):
        local_err = tmp / "local.err"
        local = subprocess.Popen([sys.executable, "-m", "podsight.cli.main", "trace",
                                  "tcpconnect", "-o", "json", "--netns", "ps-bench-l"],
                                 env=ENV, stdout=subprocess.DEVNULL,
                                 stderr=local_err.open("w"), text=True)
        wait_for(lambda: "tracing" in local_err.read_text(), "local tracing")
        s = storm("ps-bench-l", args.seconds)
        n = json.loads(s.communicate()[0])["connects"]
        time.sleep(1.0)
        local.send_signal(signal.SIGINT)
        cpu = child_cpu(local)
        m = re.search(r"podsight: (\d+) events, (\d+) lost", local_err.read_text())
        out["local"] = {"storm_connects": n, "events": int(m.group(1)) if m else None,
                        "lost": int(m.group(2)) if m else None, "cpu_s": cpu,
                        "us_per_event": 1e6 * cpu / max(n, 1)}
    print(json.dumps(out, indent=1))
    return 0


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    sys.exit(main())
