"""What the agent pod costs on a real node: the figures behind deploy/daemonset.yaml's resources.

Starts the real node of tests/k8s/node (under the test lab lock /run/podsight-tests.lock:
do not wrap this in another flock of that file), builds and imports the agent image of
this checkout, runs ``kubectl podsight deploy`` and reads the agent process from the
host's /proc (hostPID): RSS and CPU idle, then while ``kubectl podsight trace tcpconnect
-A`` streams through the API server's port-forward from busybox pods that connect in a
loop. The same connects are counted by the local ``podsight trace tcpconnect`` on the
host in the same run, as the reference for CPU per event.

    python bench/cluster_agent_resources.py [--seconds 20] [--clients 3]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from k8s.nodefixtures import BUSYBOX, NODE, Node, _read_env, overlay  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_mem(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            k, v = line.split(":")
            out[k] = int(v.split()[0]) // 1024
    return out


def agent_pid() -> int:
    out = subprocess.run(["pgrep", "-f", "podsight agent --listen"], capture_output=True,
                         text=True).stdout.split()
    assert out, "no agent process on the host"
    return int(out[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--clients", type=int, default=3)
    a = ap.parse_args()
    with open("/run/podsight-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        d = Path(tempfile.mkdtemp(prefix="podsight-agentres-"))
        subprocess.run([str(NODE / "start-node.sh"), str(d / "node")], check=True,
                       env=dict(os.environ, PODSIGHT_K8S_WATCH_PID=str(os.getpid())),
                       stdout=subprocess.DEVNULL)
        node = Node(d / "node", _read_env(d / "node/env"))
        try:
            out = subprocess.run([str(NODE / "build-agent-image.sh")], check=True,
                                 capture_output=True, text=True,
                                 env=dict(os.environ, PYTHON=sys.executable)).stdout
            image = _read_env_text(out)["AGENT_IMAGE"]
            node.import_image(_read_env_text(out)["AGENT_IMAGE_TAR"])
            env = node.tool_env()
            plugin = [sys.executable, "-m", "podsight.cluster.cli"]
            subprocess.run([*plugin, "deploy", "-k", str(overlay(d / "overlay", node)),
                            "--image", image], env=env, check=True, capture_output=True)
            pid = agent_pid()
            time.sleep(5)
            c0, t0 = proc_cpu(pid), time.monotonic()
            time.sleep(10)
            idle = {"cpu_cores": (proc_cpu(pid) - c0) / (time.monotonic() - t0), **proc_mem(pid)}
            print(f"agent idle: {idle}", flush=True)
            node.run("create", "namespace", "load")
            pods = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web",
                     "namespace": "load"}, "spec": {"terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "web", "image": BUSYBOX, "command": [
                         "httpd", "-f", "-p", "8080", "-h", "/var/www"]}]}}]
            node.run("apply", "-f", "-", stdin=json.dumps(pods[0]))
            node.run("wait", "-n", "load", "--for=condition=Ready", "pod/web", "--timeout=60s")
            ip = node.json("get", "pod", "-n", "load", "web")["status"]["podIP"]
            for i in range(a.clients):
                node.run("apply", "-f", "-", stdin=json.dumps({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": f"client-{i}", "namespace": "load"},
                    "spec": {"terminationGracePeriodSeconds": 0, "containers": [{
                        "name": "c", "image": BUSYBOX, "command": [
                            "sh", "-c", f"while true; do nc -w 1 {ip} 8080 </dev/null; done"]}]}}))
            node.run("wait", "-n", "load", "--for=condition=Ready", "pod", "--all",
                     "--timeout=60s")
            local = subprocess.Popen([sys.executable, "-m", "podsight.cli.main", "trace",
                                      "tcpconnect", "-n", "load", "--kubeconfig",
                                      node.kubeconfig, "-o", "json", "--max-time",
                                      str(a.seconds)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, env=env, text=True)
            c0, t0 = proc_cpu(pid), time.monotonic()
            lc0 = proc_cpu(local.pid)
            remote = subprocess.run([*plugin, "trace", "tcpconnect", "-n", "load", "-o", "json",
                                     "--max-time", str(a.seconds)], env=env,
                                    capture_output=True, text=True)
            busy_s = time.monotonic() - t0
            agent_cpu = proc_cpu(pid) - c0
            local_cpu = proc_cpu(local.pid) - lc0
            local_out, _ = local.communicate()
            n_remote = sum(1 for line in remote.stdout.splitlines() if line.startswith("{"))
            n_local = sum(1 for line in local_out.splitlines() if line.startswith("{"))
            busy = {"seconds": round(busy_s, 1), "records_agent": n_remote,
                    "records_local": n_local, "agent_cpu_cores": round(agent_cpu / busy_s, 3),
                    "agent_us_per_record": round(agent_cpu / max(1, n_remote) * 1e6, 1),
                    "local_us_per_record": round(local_cpu / max(1, n_local) * 1e6, 1),
                    **proc_mem(pid)}
            print(f"agent streaming: {busy}", flush=True)
            print(remote.stderr.strip().splitlines()[-1] if remote.stderr else "", flush=True)
            subprocess.run([*plugin, "undeploy"], env=env, check=True, capture_output=True)
        finally:
            res = subprocess.run([str(NODE / "stop-node.sh"), str(d / "node")],
                                 capture_output=True, text=True)
            print(res.stderr.strip().splitlines()[-1], file=sys.stderr)
    return 0


def _read_env_text(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


if __name__ == "__main__":
    sys.exit(main())
