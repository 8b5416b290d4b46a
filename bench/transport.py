"""Benchmark: the agent's transport, gRPC streaming against an HTTP chunked stream.

Run (no root, no kernel; loopback only)::

    .venv/bin/python bench/transport.py [--events 2000000] [--batch 1000] [--repeat 3]

The same batches (``RunReply`` messages with ``Records`` of real-looking tcpconnect JSON
lines, packed times and sequence numbers, as the agent sends them) go from a server
process to a client process, as fast as the client reads them:

- ``grpc``: the agent's way, a server-streaming call through grpcio (the generic handler
  and the client's ``stream_stream`` with ``RunReply.FromString``, as in
  :mod:`podsight.cluster.client`);
- ``http``: aiohttp (already installed with the kubernetes client) serving one chunked
  HTTP/1.1 response of length-prefixed ``RunReply`` bytes, read by an aiohttp client
  that parses each with ``RunReply.FromString``. (HTTP/2 would frame the same way with
  one stream; h2 is not installed, and the point is the per-message cost of the stack.)

Reported per transport and repeat: events/s and CPU microseconds per event of the client
and of the server (rusage of each process). Printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

LINE = ('{"time":"2026-11-30T10:20:53.%09dZ","pid":4242,"tid":4242,"comm":"connstorm",'
        '"uid":0,"src":{"addr":"127.0.0.1","kind":"raw"},"dst":{"addr":"127.0.0.1",'
        '"kind":"raw"},"sport":%d,"dport":5555,"netns":4026532291,"error":"",'
        '"latency_ns":12345}')


def batches(events: int, batch: int) -> list[bytes]:
    """The serialized RunReply messages of ``events`` records, ``batch`` per message."""
    import numpy as np

    from podsight.cluster import agent_pb2 as pb

    out = []
    for first in range(0, events, batch):
        n = min(batch, events - first)
        text = "".join(LINE % (i, 30000 + i % 30000) + "\n" for i in range(first, first + n))
        times = np.arange(first, first + n, dtype=np.int64)
        out.append(pb.RunReply(records=pb.Records(
            first_seq=first, count=n, lines=text.encode(), times=times.tobytes(),
            watermark=int(times[-1]))).SerializeToString())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- servers ---------------------------------------------------------------------------------

def grpc_server(port: int, messages: list[bytes]) -> None:
    from concurrent import futures

    import grpc

    def run(request: bytes, context: object) -> object:
        yield from messages

    handler = grpc.method_handlers_generic_handler("bench.Transport", {
        "Run": grpc.unary_stream_rpc_method_handler(
            run, request_deserializer=lambda b: b, response_serializer=lambda b: b)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                         options=[("grpc.max_send_message_length", 64 << 20)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    sys.stdin.read()  # until the parent closes it
    server.stop(0)


def http_server(port: int, messages: list[bytes]) -> None:
    from aiohttp import web

    async def run(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for m in messages:
            await resp.write(struct.pack("<I", len(m)) + m)
        await resp.write_eof()
        return resp

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/run", run)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()

    asyncio.run(main())


# -- clients ---------------------------------------------------------------------------------

def grpc_client(port: int) -> int:
    import grpc

    from podsight.cluster import agent_pb2 as pb

    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.max_receive_message_length", 64 << 20)])
    call = channel.unary_stream("/bench.Transport/Run", request_serializer=lambda b: b,
                                response_deserializer=pb.RunReply.FromString)
    n = 0
    for reply in call(b""):
        n += reply.records.count
    channel.close()
    return n


def http_client(port: int) -> int:
    import aiohttp

    from podsight.cluster import agent_pb2 as pb

    async def main() -> int:
        n = 0
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://127.0.0.1:{port}/run") as resp:
            content = resp.content
            while True:
                try:
                    head = await content.readexactly(4)
                except asyncio.IncompleteReadError:
                    break
                (length,) = struct.unpack("<I", head)
                reply = pb.RunReply.FromString(await content.readexactly(length))
                n += reply.records.count
        return n

    return asyncio.run(main())


def _role(argv: list[str]) -> int:
    role, kind, port, events, batch = argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    if role == "server":
        msgs = batches(events, batch)
        (grpc_server if kind == "grpc" else http_server)(port, msgs)
        return 0
    import resource

    t0 = time.perf_counter()
    n = (grpc_client if kind == "grpc" else http_client)(port)
    elapsed = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)  # the whole client, import included
    print(json.dumps({"events": n, "seconds": elapsed, "cpu": ru.ru_utime + ru.ru_stime}))
    return 0


def one(kind: str, events: int, batch: int) -> dict[str, float]:
    port = free_port()
    me = [sys.executable, __file__, "--role"]
    server = subprocess.Popen([*me, "server", kind, str(port), str(events), str(batch)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdin is not None
    assert server.stdout.readline().strip() == "ready"
    s0 = _cpu(server.pid)
    client = subprocess.run([*me, "client", kind, str(port), str(events), str(batch)],
                            stdout=subprocess.PIPE, text=True, timeout=600, check=True)
    server_cpu = _cpu(server.pid) - s0
    server.stdin.close()
    server.wait(30)
    got = json.loads(client.stdout)
    return {"events_per_s": got["events"] / got["seconds"],
            "client_us_per_event": 1e6 * got["cpu"] / got["events"],
            "server_us_per_event": 1e6 * server_cpu / got["events"],
            "events": got["events"]}


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--role":
        return _role(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    results: dict[str, list[dict[str, float]]] = {"grpc": [], "http": []}
    for _ in range(args.repeat):  # interleaved, so drifting load hits both alike
        for kind in results:
            results[kind].append(one(kind, args.events, args.batch))
    summary = {}
    for kind, runs in results.items():
        summary[kind] = {key: {"median": sorted(r[key] for r in runs)[len(runs) // 2],
                               "min": min(r[key] for r in runs),
                               "max": max(r[key] for r in runs)}
                         for key in ("events_per_s", "client_us_per_event",
                                     "server_us_per_event")}
    print(json.dumps({"batch": args.batch, "events": args.events, "repeat": args.repeat,
                      "results": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
