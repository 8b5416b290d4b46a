"""``podsight agent``: the gRPC service that runs gadgets for clients, and its health port.

Each ``Run`` call gets its own :class:`~podsight.cluster.session.Session` in a thread of
its own; replies go through a bounded queue, so a client that reads slower than the
gadget produces makes the pipeline wait and the kernel count what it could not deliver
(reported in the Summary), instead of the agent's memory growing. The call's end in any
form (the client's ``stop`` message, its half-close, a cancel, a dropped connection)
sets the session's stop flag; the pipeline then detaches its programs.

Health is plain HTTP on ``--health-listen`` (``/healthz``: alive; ``/readyz``: serving,
and with ``--auth kubernetes`` the API server accepted the agent's own TokenReview), on
a port of its own so a kubelet probe needs no token and no gRPC.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

from podsight import __version__
from podsight.cluster import agent_pb2 as pb
from podsight.cluster.auth import Authorizer, Refused
from podsight.cluster.session import Session, parse_request
from podsight.errors import UserError

SERVICE = "podsight.agent.v1.Agent"
#: Replies waiting for a slow client before the pipeline waits.
QUEUE_DEPTH = 64
#: With nothing to send, a heartbeat this often (s) moves the client's merge on.
HEARTBEAT = 0.2
MAX_MESSAGE = 64 << 20
_DONE = object()


class AgentService:
    def __init__(self, node: str, auth: Authorizer, scope_netns: str | None = None,
                 log: Any = None) -> None:
        self.node = node
        self.auth = auth
        self.scope_netns = scope_netns
        self.log = log or sys.stderr
        self.active = 0
        self._lock = threading.Lock()

    def _authorize(self, context: grpc.ServicerContext) -> str:
        value = dict(context.invocation_metadata()).get("authorization")
        try:
            return self.auth.check(value if isinstance(value, str) else None)
        except Refused as exc:
            code = (grpc.StatusCode.UNAUTHENTICATED if exc.unauthenticated
                    else grpc.StatusCode.PERMISSION_DENIED)
            context.abort(code, str(exc))
        except UserError as exc:  # the API server could not answer
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot check the caller: {exc}")
        raise AssertionError("unreachable")

    def info(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.InfoReply:
        self._authorize(context)
        from podsight.gadgets import specs

        return pb.InfoReply(node=self.node, version=__version__,
                            gadgets=[" ".join(s.command) for s in specs()])

    def run(self, requests: Iterator[pb.RunRequest],
            context: grpc.ServicerContext) -> Iterator[pb.RunReply]:
        user = self._authorize(context)
        try:
            first = next(requests)
        except StopIteration:
            return
        try:
            request = parse_request(list(first.argv), self.scope_netns, list(first.outputs),
                                    first.columns)
        except UserError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        replies: queue.Queue[Any] = queue.Queue(QUEUE_DEPTH)
        gone = threading.Event()

        def emit(reply: pb.RunReply) -> None:
            while not gone.is_set():
                try:
                    replies.put(reply, timeout=0.1)
                    return
                except queue.Full:
                    continue

        session = Session(request, self.node, emit)

        def stop() -> None:
            session.stop.set()

        def gone_now() -> None:
            gone.set()
            session.stop.set()

        context.add_callback(gone_now)

        def watch_requests() -> None:
            """A later message with stop, the client's half-close or the call's end."""
            try:
                for req in requests:
                    if req.stop:
                        break
            except Exception:  # the call was cancelled or broke
                pass
            stop()

        def work() -> None:
            try:
                session.run()
            finally:
                replies.put(_DONE)

        command = " ".join(first.argv)
        self._say(f"run by {user}: {command}")
        with self._lock:
            self.active += 1
        threading.Thread(target=watch_requests, name="agent-requests", daemon=True).start()
        worker = threading.Thread(target=work, name="agent-run", daemon=True)
        worker.start()
        try:
            while True:
                try:
                    item = replies.get(timeout=HEARTBEAT)
                except queue.Empty:
                    yield pb.RunReply(heartbeat=pb.Heartbeat(watermark=session.seq.mark))
                    continue
                if item is _DONE:
                    break
                yield item
        finally:
            gone_now()
            worker.join(timeout=30)
            with self._lock:
                self.active -= 1
            self._say(f"ended: {command}")

    def _say(self, text: str) -> None:
        try:
            self.log.write(f"podsight agent: {text}\n")
            self.log.flush()
        except (OSError, ValueError):
            pass

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Info": grpc.unary_unary_rpc_method_handler(
                self.info, request_deserializer=pb.InfoRequest.FromString,
                response_serializer=pb.InfoReply.SerializeToString),
            "Run": grpc.stream_stream_rpc_method_handler(
                self.run, request_deserializer=pb.RunRequest.FromString,
                response_serializer=pb.RunReply.SerializeToString),
        })


def serve_grpc(service: AgentService, host: str, port: int, workers: int = 16) -> grpc.Server:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
                         options=[("grpc.max_send_message_length", MAX_MESSAGE),
                                  ("grpc.max_receive_message_length", MAX_MESSAGE),
                                  ("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((service.handler(),))
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = server.add_insecure_port(target)
    except RuntimeError:
        bound = 0
    if not bound:
        raise UserError(f"--listen {target}: cannot listen there (in use, or not an address "
                        "of this host)")
    server.start()
    return server


class Health:
    """``/healthz`` and ``/readyz`` over plain HTTP."""

    def __init__(self, host: str, port: int) -> None:
        self.ready = False
        health = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/healthz":
                    code, text = 200, "ok"
                elif self.path == "/readyz":
                    code, text = (200, "ok") if health.ready else (503, "not ready")
                else:
                    code, text = 404, "not found"
                body = (text + "\n").encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise UserError(f"--health-listen {host}:{port}: {exc.strerror}") from None
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="agent-health",
                         daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
