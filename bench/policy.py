"""Benchmark ``policy check`` and ``advise network-policy`` at cluster scale.

A cluster of 5,000 pods (500 Deployments of 10 pods in 50 namespaces, with
container ports), 1,000 NetworkPolicies (two per Deployment: ingress from
a few client Deployments, their namespaces or an ipBlock, on numbered, named
and ranged ports; egress to the cluster DNS, peers and external blocks),
and 1,000,000 recorded connections (each pod talks to the pods of five peer
Deployments and to a few external addresses; about 2% of the connections
are ones no policy allows).

The records are written by the tcpconnect gadget's own schema and outputs,
in three forms: its JSON lines (identity in every record), its SQLite file
(no labels: who is who from ``--objects``), and bare records (addresses
only, resolved through ``--objects``). Each is checked by the real command
line, in a child whose wall time and peak RSS are measured (``wait4``), and
the checker is also timed alone on connections already read. Advise runs on
the JSON lines. Targets (issue 10): check >= 200k connections/s, advise
< 10 s, memory < 500 MB. Never run as a timed test.

    flock /run/podsight-bench.lock .venv/bin/python bench/policy.py
        [--connections 1000000] [--pods 5000] [--policies 1000] [--keep DIR [--reuse]]
        [--json results.json]

It takes no lock itself: wrap it in the bench lock as above.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
PODSIGHT = [sys.executable, "-m", "podsight.cli.main"]
TARGET_RATE = 200_000
TARGET_ADVISE_S = 10.0
TARGET_MB = 500


# -- the cluster ---------------------------------------------------------------------------

def workloads(pods: int) -> list[dict[str, Any]]:
    out = []
    for d in range(pods // 10):
        ns = f"team-{d % 50}"
        out.append({"index": d, "ns": ns, "app": f"app-{d}", "hash": f"5d8f{d:04x}",
                    "tier": ("frontend", "backend", "data")[d % 3],
                    "pods": [(f"app-{d}-5d8f{d:04x}-{i:05x}", _ip(d * 10 + i))
                             for i in range(10)]})
    return out


def _ip(n: int) -> str:
    return f"10.{64 + n // 65536}.{(n // 256) % 256}.{n % 256}"


def objects(wls: list[dict[str, Any]]) -> dict[str, Any]:
    items: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": f"team-{t}", "labels": {"team": f"team-{t}",
                                                      "env": ("prod", "dev")[t % 2]}}}
        for t in range(50)]
    items.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}})
    for wl in wls:
        for name, ip in wl["pods"]:
            items.append({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": wl["ns"],
                             "labels": {"app": wl["app"], "tier": wl["tier"],
                                        "pod-template-hash": wl["hash"]},
                             "ownerReferences": [{"kind": "ReplicaSet", "controller": True,
                                                  "name": f"{wl['app']}-{wl['hash']}"}]},
                "spec": {"nodeName": f"node-{wl['index'] % 100}", "containers": [{
                    "name": "app", "ports": [
                        {"name": "http", "containerPort": 8080},
                        {"name": "metrics", "containerPort": 9090},
                        {"name": "dns", "containerPort": 5353, "protocol": "UDP"}]}]},
                "status": {"podIP": ip, "hostIP": f"10.250.0.{wl['index'] % 100}"}})
    return {"apiVersion": "v1", "kind": "List", "items": items}


def peers_of(wl: dict[str, Any], wls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    d = wl["index"]
    return [wls[(d * 7 + k * 13 + 1) % len(wls)] for k in range(5)]


def policies(wls: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    out = []
    for wl in wls[: count // 2]:
        clients = [c for c in wls if wl in peers_of(c, wls)]
        sel = {"matchLabels": {"app": wl["app"]}}
        ingress = [{"from": [{"podSelector": {"matchLabels": {"app": c["app"]}},
                              "namespaceSelector": {"matchLabels": {"team": c["ns"]}}}
                             for c in clients[:8]]
                    + [{"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}],
                    "ports": [{"port": "http"}, {"port": 9090}, {"port": 5000, "endPort": 5100},
                              {"port": "dns", "protocol": "UDP"}]}]
        if len(clients) > 8:
            ingress.append({"from": [{"namespaceSelector": {"matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "dev"]}]}}],
                "ports": [{"port": 8080}]})
        out.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": f"{wl['app']}-in", "namespace": wl["ns"]},
                    "spec": {"podSelector": sel, "policyTypes": ["Ingress"],
                             "ingress": ingress}})
        egress = [
            {"to": [{"namespaceSelector": {"matchLabels": {
                "kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
             "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]},
            {"to": [{"podSelector": {"matchLabels": {"app": p["app"]}},
                     "namespaceSelector": {"matchLabels": {
                         "kubernetes.io/metadata.name": p["ns"]}}} for p in peers_of(wl, wls)],
             "ports": [{"port": "http"}, {"port": "metrics"}]},
            {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"port": 443}]},
        ]
        out.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": f"{wl['app']}-out", "namespace": wl["ns"]},
                    "spec": {"podSelector": {"matchExpressions": [
                        {"key": "app", "operator": "In", "values": [wl["app"]]},
                        {"key": "canary", "operator": "DoesNotExist"}]},
                        "policyTypes": ["Egress"], "egress": egress}})
    return out


# -- the records ------------------------------------------------------------------------------

def connects(wls: list[dict[str, Any]], n: int, seed: int = 1) -> list[Any]:
    """Connect records, as the tcpconnect gadget makes them (identity included)."""
    sys.path.insert(0, str(ROOT / "src"))
    from podsight.gadgets.tcpconnect.schema import Connect
    from podsight.identity.endpoint import Endpoint, PodInfo

    rnd = random.Random(seed)
    eps: dict[str, Endpoint] = {}
    for wl in wls:
        labels = {"app": wl["app"], "tier": wl["tier"], "pod-template-hash": wl["hash"]}
        for name, ip in wl["pods"]:
            eps[ip] = Endpoint.for_pod(ip, PodInfo(
                wl["ns"], name, (ip,), node=f"node-{wl['index'] % 100}", labels=labels,
                containers=("app",), workload_kind="Deployment", workload_name=wl["app"]))
    out = []
    for i in range(n):
        wl = wls[rnd.randrange(len(wls))]
        _, saddr = wl["pods"][rnd.randrange(10)]
        roll = rnd.random()
        if roll < 0.85:
            peer = peers_of(wl, wls)[rnd.randrange(5)]
            daddr = peer["pods"][rnd.randrange(10)][1]
            dport = (8080, 9090)[rnd.randrange(2)]
        elif roll < 0.98:
            daddr, dport = f"203.0.113.{rnd.randrange(1, 50)}", 443
        else:  # nothing allows these
            daddr, dport = f"198.51.100.{rnd.randrange(1, 50)}", 80
        out.append(Connect(
            ts_ns=10**9 + i * 1000, pid=1000 + i % 50, tid=1000 + i % 50, comm="app", uid=0,
            netns=4026531840, cgroup_id=0, ip=4, saddr=saddr, sport=32768 + i % 28000,
            daddr=daddr, dport=dport, result="ok", errno=0, latency_ns=90_000, syn_retries=0,
            src=eps[saddr], dst=eps.get(daddr) or Endpoint.raw(daddr)))
    return out


def write_records(records: list[Any], d: Path) -> dict[str, Path]:
    from podsight.gadgets.tcpconnect.schema import schema
    from podsight.outputs.json import JsonLines
    from podsight.outputs.sqlite import SqliteOutput
    from podsight.timefmt import Clock

    sch = schema(Clock())
    paths = {"json": d / "connects.json", "sqlite": d / "connects.db", "bare": d / "bare.json"}
    with paths["json"].open("w") as f:
        out = JsonLines(sch, f)
        for start in range(0, len(records), 10_000):
            out.write(records[start:start + 10_000])
    db = SqliteOutput(str(paths["sqlite"]), "tcpconnect", sch, {"gadget": "tcpconnect"})
    for start in range(0, len(records), 10_000):
        db.write(records[start:start + 10_000])
    db.close()
    with paths["bare"].open("w") as f:
        for r in records:
            f.write(f'{{"ip":4,"proto":"tcp","saddr":"{r.saddr}","sport":{r.sport},'
                    f'"daddr":"{r.daddr}","dport":{r.dport}}}\n')
    return paths


# -- measuring ------------------------------------------------------------------------------

# Runs the command and reports its own wait4 rusage. A child forked from this process would
# start with this process's pages (the generated records) counted in its peak RSS: the
# command is started by a fresh, small interpreter instead. wait4's peak RSS is the largest
# of one process and its workers (policy check forks one per CPU): the sum over the process
# tree is sampled every 20 ms beside it.
_MEASURE = """
import json, os, subprocess, sys, tempfile, time

def tree_kb(pid):
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            pass
    return total

err = tempfile.TemporaryFile()
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=err)
peak = 0
while True:
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid:
        break
    peak = max(peak, tree_kb(proc.pid))
    time.sleep(0.02)
wall = time.perf_counter() - start
err.seek(0)
print(json.dumps({"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "rss_mb": usage.ru_maxrss / 1024, "tree_mb": peak / 1024,
                  "exit": os.waitstatus_to_exitcode(status),
                  "stderr": err.read().decode(errors="replace").strip().splitlines()[-1:]}))
"""


def measure(argv: list[str], cwd: Path) -> dict[str, Any]:
    """Wall time, CPU and peak RSS of one run of the command line."""
    env = {**os.environ, "KUBECONFIG": "", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", _MEASURE, *PODSIGHT, *argv], cwd=cwd, env=env,
                         capture_output=True, text=True, check=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


# The floor under a check of each input: reading and parsing it and nothing else (msgspec
# into podsight's Record, a block of lines at a time, as podsight reads JSON lines; orjson per
# line into dicts, as it read them before and reads odd lines; sqlite3 fetching the columns
# podsight selects), in a fresh interpreter like the commands. podsight's own work is the rest.
_PARSE_ONLY = {
    "msgspec": ("import sys\n"
                "from podsight.analysis.policy.jsonlines import _decode_list, blocks\n"
                "for text, _, _ in blocks(open(sys.argv[1], 'rb'), 0, None):\n"
                "    _decode_list(b''.join((b'[', text.replace(b'\\n', b','), b']')))\n"),
    "json": "import orjson, sys\nfor line in open(sys.argv[1], 'rb'): orjson.loads(line)\n",
    "sqlite": ("import sqlite3, sys\n"
               "from podsight.analysis.policy.records import ROW_COLUMNS, ROWS\n"
               "db = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True)\n"
               "columns = ', '.join(ROW_COLUMNS)\n"
               "rows = db.execute(f'SELECT {columns} FROM tcpconnect ORDER BY id')\n"
               "while rows.fetchmany(ROWS): pass\n"),
}


def parse_only(kind: str, path: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-c",
                          _PARSE_ONLY[kind], str(path)], capture_output=True, text=True,
                         check=True, env=env).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def checker_alone(d: Path, n: int) -> dict[str, float]:
    """The checker on connections already read: the verdicts and their cache alone."""
    from podsight.analysis.policy import Checker, Reader
    from podsight.analysis.policy.documents import documents
    from podsight.analysis.policy.policies import load
    from podsight.analysis.policy.world import from_documents

    world = from_documents(documents(str(d / "objects.json"), "objects"), "objects")
    checker = Checker(load(str(d / "policies")).policies, world)
    conns = list(Reader([str(d / "bare.json")]))
    start = time.perf_counter()
    for c in conns:
        checker.check(c)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for c in conns:
        checker.check(c)
    warm = time.perf_counter() - start
    return {"connections": len(conns), "first_pass_per_s": len(conns) / first,
            "cached_per_s": len(conns) / warm, "distinct": checker.distinct}


def generate(args: argparse.Namespace, d: Path) -> None:
    """The cluster, the policies and the records, written into ``d``."""
    wls = workloads(args.pods)
    # JSON, as kubectl get -o json prints it (PyYAML reads 5,000 pods in ~4 s, libyaml's
    # parser included: its constructor is Python; JSON takes 0.1 s)
    (d / "objects.json").write_text(json.dumps(objects(wls)))
    pol = d / "policies"
    pol.mkdir(exist_ok=True)
    (pol / "all.yaml").write_text(yaml.safe_dump_all(policies(wls, args.policies),
                                                     sort_keys=False))
    records = connects(wls, args.connections)
    write_records(records, d)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=1_000_000)
    p.add_argument("--pods", type=int, default=5000)
    p.add_argument("--policies", type=int, default=1000)
    p.add_argument("--keep", metavar="DIR", help="keep the generated files here")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--reuse", action="store_true",
                   help="with --keep DIR: use the files a run with the same sizes left there "
                        "(generating them takes minutes)")
    args = p.parse_args()
    if args.reuse and not args.keep:
        p.error("--reuse needs --keep DIR")
    sys.path.insert(0, str(ROOT / "src"))
    d = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="podsight-bench-"))
    d.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        paths = {"json": d / "connects.json", "sqlite": d / "connects.db", "bare": d / "bare.json"}
        pol = d / "policies"
        if args.reuse and all(f.exists() for f in [*paths.values(), pol, d / "objects.json"]):
            print(f"reusing the files in {d} (made with these sizes: the rates assume them)",
                  flush=True)
        else:
            generate(args, d)
        sizes = {k: v.stat().st_size / 1e6 for k, v in paths.items()}
        print(f"ready in {time.perf_counter() - t:.1f}s: {args.pods} pods, "
              f"{args.policies} policies, {args.connections} connections "
              f"(json {sizes['json']:.0f} MB, sqlite {sizes['sqlite']:.0f} MB, "
              f"bare {sizes['bare']:.0f} MB)", flush=True)
        objects_flag = ["--objects", str(d / "objects.json")]
        # Each check on every CPU (the default for inputs this big) and on one (--jobs 1).
        check = ["policy", "check", "--policies", str(pol), *objects_flag]
        runs: dict[str, list[str]] = {}
        for label, key in (("tcpconnect JSON lines", "json"), ("tcpconnect SQLite", "sqlite"),
                           ("bare records", "bare")):
            runs[f"check {label}"] = [*check, "--from", str(paths[key])]
            runs[f"check {label}, --jobs 1"] = [*check, "--from", str(paths[key]), "--jobs",
                                                 "1"]
        runs.update({
            # -o json on the records with identity too: one object per connection, each
            # with both ends' judgements (the issue's target holds for it as for the table)
            "check tcpconnect JSON lines, -o json": [*check, "--from", str(paths["json"]),
                                                     "-o", "json"],
            "check bare records, -o json": [*check, "--from", str(paths["bare"]), "-o",
                                            "json"],
            "advise from tcpconnect JSON lines": [
                "advise", "network-policy", "--from", str(paths["json"]), *objects_flag,
                "--output-dir", str(d / "advised"), "--overwrite"],
            "advise from tcpconnect SQLite + --objects": [
                "advise", "network-policy", "--from", str(paths["sqlite"]), *objects_flag,
                "--output-dir", str(d / "advised"), "--overwrite"],
        })
        results: dict[str, Any] = {"sizes_mb": sizes}
        print(f"\n{'run':<42} {'wall s':>7} {'conn/s':>10} {'cpu s':>6} {'peak RSS':>9} "
              f"{'all procs':>9}  target")
        for name, argv in runs.items():
            r = measure(argv, d)
            results[name] = r
            rate = args.connections / r["wall_s"]
            if name.startswith("advise"):
                target = f"< {TARGET_ADVISE_S:g} s, < {TARGET_MB} MB"
            else:
                target = f">= {TARGET_RATE // 1000}k conn/s, < {TARGET_MB} MB"
            print(f"{name:<42} {r['wall_s']:>7.2f} {rate:>10,.0f} {r['cpu_s']:>6.1f} "
                  f"{r['rss_mb']:>6.0f} MB {r['tree_mb']:>6.0f} MB  {target}  "
                  f"(exit {r['exit']})", flush=True)
            if r["exit"] not in (0, 1):
                print(f"   stderr: {r['stderr']}")
        print(f"\n{'parsing alone (the floor of a check)':<42} {'wall s':>7} {'rec/s':>10}")
        for label, kind, path in (("tcpconnect JSON lines, msgspec", "msgspec", paths["json"]),
                                  ("tcpconnect JSON lines, orjson", "json", paths["json"]),
                                  ("tcpconnect SQLite, sqlite3", "sqlite", paths["sqlite"]),
                                  ("bare records, orjson", "json", paths["bare"])):
            r = parse_only(kind, path)
            results[f"parse only: {label}"] = r
            print(f"{label:<42} {r['wall_s']:>7.2f} {args.connections / r['wall_s']:>10,.0f}",
                  flush=True)
        alone = checker_alone(d, args.connections)
        results["checker alone"] = alone
        print(f"\nchecker alone on {alone['connections']:,} connections already read: first "
              f"pass {alone['first_pass_per_s']:,.0f}/s ({alone['distinct']:,} distinct "
              f"(client, server, port, protocol) judged), cached {alone['cached_per_s']:,.0f}/s")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    io.DEFAULT_BUFFER_SIZE = 1 << 16
    sys.exit(main())
