"""`podsight serve` in the background, its HTTP API, and a real Prometheus scraping it."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from background import Background


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Serve(Background):
    """`podsight serve ARGS` on a free loopback port (or ``--listen`` given in ARGS)."""

    def __init__(self, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        listen = [] if "--listen" in args else ["--listen", f"127.0.0.1:{self.port}"]
        super().__init__(["serve", *listen, *args], ready="serving", name="serve",
                         start_timeout=60)
        self.base = f"http://127.0.0.1:{self.port}"
        self.out = ""
        self.err = ""
        self.returncode: int | None = None

    def __enter__(self) -> Serve:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.returncode is None:
            self.out, self.err, self.returncode = self.finish(signal.SIGINT)

    def get(self, path: str, token: str | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(self.base + path)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, (status, body)
        return json.loads(body)

    def edge(self, edge_id: str, query: str = "") -> dict[str, Any] | None:
        data = self.json(f"/api/graph.json?{query}")
        return next((e for e in data["edges"] if e["id"] == edge_id), None)

    def wait_edge(self, edge_id: str, timeout: float = 30.0, **want: Any) -> dict[str, Any]:
        """The edge once every ``detail__<key>`` equals ``want[key]``."""
        deadline = time.monotonic() + timeout
        edge = None
        while time.monotonic() < deadline:
            edge = self.edge(edge_id)
            if edge and all(edge.get(f"detail__{k}") == v for k, v in want.items()):
                return edge
            time.sleep(0.1)
        raise AssertionError(f"edge {edge_id} never had {want}: {edge}")


class Prometheus:
    """Debian's prometheus on loopback, scraping ``target`` every second; a context manager."""

    def __init__(self, target: str, workdir: Path) -> None:
        assert shutil.which("prometheus"), "prometheus is missing: run 'make setup-test'"
        self.port = free_port()
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: podsight\n    static_configs:\n"
            f"      - targets: ['{target}']\n")
        self.proc = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.base = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Prometheus:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/-/ready", timeout=5) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.__exit__()
        raise AssertionError("prometheus did not start")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = self.base + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=30) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_value(self, promql: str, want: float, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        got: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            got = self.query(promql)
            if got and float(got[0]["value"][1]) == want:
                return want
            time.sleep(0.25)
        raise AssertionError(f"{promql} never returned {want}: {got}")
