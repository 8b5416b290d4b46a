"""``podsight serve``'s HTTP side: /metrics, the Grafana Node Graph API, the graph as
JSON and the service-map page, from one :class:`~podsight.analysis.graph.Graph`.

Routes:

- ``/metrics``: Prometheus exposition format (prometheus_client);
- ``/api/health``, ``/api/graph/fields``, ``/api/graph/data``: what Grafana's
  nodegraph-api datasource plugin asks, with k8spacket's query parameters
  (``stats-type``, ``namespace``, ``include``, ``exclude``, ``from``, ``to``);
- ``/api/graph.json``: the same graph as plain JSON (Grafana's Infinity datasource);
- ``/``: the service-map page, and ``/static/...`` what it loads (vendored: no CDN).

With a token every request for data needs ``Authorization: Bearer <token>`` (401
otherwise); the page and its scripts, which hold no data, do not.
"""

from __future__ import annotations

import hmac
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from podsight.analysis import graph as G
from podsight.outputs.prometheus import GraphCollector, exposition, registry

STATS = ("connection", "bytes", "duration")
STATIC = {"cytoscape.min.js": "application/javascript", "map.js": "application/javascript"}


class BadQuery(ValueError):
    pass


def parse_query(query: str) -> G.Query:
    """k8spacket's parameters to a :class:`~podsight.analysis.graph.Query`."""
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    stats = params.get("stats-type") or "connection"
    if stats not in STATS:
        raise BadQuery(f"stats-type must be one of {', '.join(STATS)}, not {stats!r}")

    def regex(name: str) -> Any:
        value = params.get(name)
        if not value:
            return None
        try:
            return re.compile(value)
        except re.error as exc:
            raise BadQuery(f"{name}: not a regular expression ({exc})") from None

    def ms(name: str) -> int | None:
        value = params.get(name)
        if not value:
            return None
        try:
            return int(value)
        except ValueError:
            raise BadQuery(f"{name}: epoch milliseconds expected, not {value!r}") from None

    return G.Query(stats=stats, namespace=params.get("namespace") or None,
                   include=regex("include"), exclude=regex("exclude"),
                   from_ms=ms("from"), to_ms=ms("to"))


class GraphServer:
    """The HTTP server, in its own threads; :meth:`close` stops it."""

    def __init__(self, host: str, port: int, graph: G.Graph, collector: GraphCollector,
                 token: str | None = None) -> None:
        self.graph = graph
        self.collector = collector
        self.registry = registry(collector)
        self.token = token
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "podsight"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                outer.requests += 1
                # The page and its scripts hold no data: only the data needs the token.
                static = self.path.split("?")[0] in ("/", "/index.html") or \
                    self.path.startswith("/static/")
                if outer.token is not None and not static and not outer.authorized(
                        self.headers.get("Authorization", "")):
                    self.send(401, b'{"error":"a bearer token is required"}\n',
                              "application/json", {"WWW-Authenticate": "Bearer"})
                    return
                try:
                    status, body, ctype = outer.route(self.path)
                except BadQuery as exc:
                    status, ctype = 400, "application/json"
                    body = (json.dumps({"error": str(exc)}) + "\n").encode()
                self.send(status, body, ctype)

            def send(self, status: int, body: bytes, ctype: str,
                     headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="podsight-http",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def authorized(self, header: str) -> bool:
        assert self.token is not None
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(),
                                                                   self.token.encode())

    def route(self, path: str) -> tuple[int, bytes, str]:
        parts = urlsplit(path)
        route = parts.path.rstrip("/") or "/"
        if route == "/metrics":
            from prometheus_client.exposition import CONTENT_TYPE_LATEST

            return 200, exposition(self.registry), CONTENT_TYPE_LATEST
        if route == "/api/health":
            return 200, b'{"status":"ok"}\n', "application/json"
        if route == "/api/graph/fields":
            q = parse_query(parts.query)
            return 200, _json(G.fields(q.stats)), "application/json"
        if route in ("/api/graph/data", "/api/graph.json"):
            q = parse_query(parts.query)
            return 200, _json(G.data(self.graph.snapshot(), q)), "application/json"
        if route in ("/", "/index.html"):
            return 200, _static("index.html"), "text/html; charset=utf-8"
        if route.startswith("/static/") and route[8:] in STATIC:
            return 200, _static(route[8:]), STATIC[route[8:]]
        return 404, b'{"error":"not found"}\n', "application/json"

    def close(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()


def _json(value: Any) -> bytes:
    return (json.dumps(value, separators=(",", ":")) + "\n").encode()


def _static(name: str) -> bytes:
    return (resources.files("podsight.outputs") / "web" / name).read_bytes()
