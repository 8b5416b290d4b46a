"""How the client reaches an agent: ``kubectl port-forward`` vs the Python client's websocket.

Runs on the real node of tests/k8s/node (started and stopped here, under the test lab
lock /run/podsight-tests.lock, since it changes the host's network; do not wrap this in
another flock of that file). A hostNetwork busybox pod listens on the node's loopback,
as the agent does (busybox httpd serving a file of zeros); the same file is read:

- directly on 127.0.0.1 (the reference: no forward at all),
- through ``kubectl port-forward`` (API server -> kubelet -> containerd, SPDY),
- through ``kubernetes.stream.portforward`` (the same path over a websocket).

It prints the set-up time of each forward (process start to first byte) and its
throughput, median of --repeat runs with the min-max spread as the noise column.

    python bench/cluster_portforward.py [--mb 200] [--repeat 5]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE = ROOT / "tests/k8s/node"
BUSYBOX = "localhost/node-proto/busybox:1"
REQUEST = b"GET /zeros HTTP/1.0\r\n\r\n"


def kubectl(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    return subprocess.run([env["KUBECTL"], "--kubeconfig", env["KUBECONFIG"], *args],
                          input=stdin, capture_output=True, text=True, check=True).stdout


def read_all(sock_recv: Callable[[int], bytes], nbytes: int) -> int:
    got = 0
    while got < nbytes:
        chunk = sock_recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    return got


def via_direct(port: int, nbytes: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(REQUEST)
        first = s.recv(1)
        t1 = time.perf_counter()
        got = len(first) + read_all(s.recv, nbytes - 1)
    return t1 - t0, got / (time.perf_counter() - t1)


def via_kubectl(env: dict[str, str], ns: str, pod: str, port: int,
                nbytes: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen([env["KUBECTL"], "--kubeconfig", env["KUBECONFIG"], "port-forward",
                             "-n", ns, f"pod/{pod}", "--address", "127.0.0.1", f":{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        m = re.search(r"127\.0\.0\.1:(\d+)", proc.stdout.readline())
        assert m, "kubectl port-forward printed no port"
        with socket.create_connection(("127.0.0.1", int(m.group(1)))) as s:
            s.sendall(REQUEST)
            first = s.recv(1)
            t1 = time.perf_counter()
            got = len(first) + read_all(s.recv, nbytes - 1)
        return t1 - t0, got / (time.perf_counter() - t1)
    finally:
        proc.terminate()
        proc.wait(10)


def via_websocket(env: dict[str, str], ns: str, pod: str, port: int,
                  nbytes: int) -> tuple[float, float]:
    from kubernetes import client, config
    from kubernetes.stream import portforward

    t0 = time.perf_counter()
    api = client.CoreV1Api(config.new_client_from_config(config_file=env["KUBECONFIG"]))
    pf = portforward(api.connect_get_namespaced_pod_portforward, pod, ns, ports=str(port))
    s = pf.socket(port)
    s.setblocking(True)
    try:
        s.sendall(REQUEST)
        first = s.recv(1)
        t1 = time.perf_counter()
        got = len(first) + read_all(s.recv, nbytes - 1)
        return t1 - t0, got / (time.perf_counter() - t1)
    finally:
        s.close()
        pf.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args()
    nbytes = a.mb << 20
    with open("/run/podsight-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        d = Path(tempfile.mkdtemp(prefix="podsight-pf-"))
        subprocess.run([str(NODE / "start-node.sh"), str(d)], check=True,
                       env=dict(os.environ, PODSIGHT_K8S_WATCH_PID=str(os.getpid())),
                       stdout=subprocess.DEVNULL)
        try:
            env = dict(line.split("=", 1) for line in (d / "env").read_text().splitlines()
                       if "=" in line)
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "zeros"}, "spec": {
                "hostNetwork": True, "terminationGracePeriodSeconds": 0, "containers": [{
                    "name": "zeros", "image": BUSYBOX, "imagePullPolicy": "Never",
                    "command": ["sh", "-c", f"mkdir -p /srv && head -c {nbytes} /dev/zero "
                                f">/srv/zeros && exec httpd -f -p 127.0.0.1:{port} -h /srv"]}]}}
            kubectl(env, "apply", "-f", "-", stdin=json.dumps(pod))
            kubectl(env, "wait", "--for=condition=Ready", "pod/zeros", "--timeout=60s")
            deadline = time.monotonic() + 30
            while True:  # Ready means started, not listening
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except ConnectionRefusedError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            rows = {}
            for name, fn in (("direct 127.0.0.1", lambda: via_direct(port, nbytes)),
                             ("kubectl port-forward", lambda: via_kubectl(
                                 env, "default", "zeros", port, nbytes)),
                             ("python websocket", lambda: via_websocket(
                                 env, "default", "zeros", port, nbytes))):
                runs = [fn() for _ in range(a.repeat)]
                setups = [r[0] for r in runs]
                rates = [r[1] / 1e6 for r in runs]
                rows[name] = {"setup_s": statistics.median(setups),
                              "setup_spread": [min(setups), max(setups)],
                              "MB_s": statistics.median(rates),
                              "MB_s_spread": [min(rates), max(rates)]}
                r = rows[name]
                print(f"{name:<22} set-up {r['setup_s']:6.3f} s "
                      f"({min(setups):.3f}-{max(setups):.3f})  "
                      f"{r['MB_s']:8.1f} MB/s ({min(rates):.1f}-{max(rates):.1f})", flush=True)
            if a.json:
                Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
        finally:
            out = subprocess.run([str(NODE / "stop-node.sh"), str(d)], capture_output=True,
                                 text=True)
            print(out.stderr.strip().splitlines()[-1], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
