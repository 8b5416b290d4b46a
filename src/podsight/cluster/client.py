"""Run one gadget on every node and merge what they send.

:func:`run_cluster` is the seam discovery calls: a list of
:class:`~podsight.cluster.endpoints.NodeEndpoint`, the gadget's command line for the
agents, and where the merged records go. One reader thread per node reads its gRPC
stream into one inbox; the main thread keeps the books (:class:`~.merge.Ledger` per
node), merges (:class:`~.merge.Merge`) and writes. It stops on Ctrl-C/SIGTERM (the stop
flag), ``--max-time``, or when every node is done; stopping asks every agent to stop
(``RunRequest.stop``), waits a few seconds for their Summaries (kernel loss), then
cancels what is left. A node that cannot be reached, refuses, or dies mid-stream is
reported and the others go on.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import grpc
import numpy as np

from podsight.cluster import agent_pb2 as pb
from podsight.cluster.endpoints import NodeEndpoint
from podsight.cluster.merge import Ledger, Merge
from podsight.runtime import STOP, StopFlag

SERVICE = "/podsight.agent.v1.Agent/"
#: After asking agents to stop: how long their Summaries may take.
STOP_GRACE = 10.0
CONNECT_TIMEOUT = 5.0
_END = object()


@dataclass
class NodeRun:
    """One node's run, as the client sees it."""

    endpoint: NodeEndpoint
    index: int
    name: str
    state: str = "connecting"  # running | done | failed | unreachable
    error: str = ""
    what: str = ""
    ledger: Ledger = field(default_factory=Ledger)
    summary: pb.Summary | None = None
    requests: queue.Queue[pb.RunRequest | None] = field(default_factory=queue.Queue)
    call: Any = None
    ended: bool = False
    bad_input: bool = False  # the agent refused the request itself (exit 2)

    @property
    def kernel_lost(self) -> int:
        return int(self.summary.lost) if self.summary is not None else 0

    def row(self) -> tuple[Any, ...]:
        return (self.name, self.endpoint.target, self.state, self.ledger.received,
                self.kernel_lost, self.ledger.gaps, self.ledger.duplicates,
                self.summary.line if self.summary is not None else "", self.error)


@dataclass
class ClusterResult:
    nodes: list[NodeRun]
    records: int = 0
    stopped_by: str = ""

    @property
    def failed(self) -> list[NodeRun]:
        return [n for n in self.nodes if n.state in ("failed", "unreachable")]


class Outputs:
    """What the merged records (and frames) are written to; the CLI builds it.

    Sinks that read JSON lines (``needs = "json"``, the default) get the merged lines as
    bytes, never parsed here. Sinks that need the gadget's formatted parts (``needs`` is
    ``"table"`` or ``"sql"``: the agent formats them by the gadget's schema) get tuples
    ``(json line, node, table cells, SQLite values)``; they are then asked for in the
    request, and told the columns when a node starts (``describe``)."""

    def __init__(self) -> None:
        self.records: list[Any] = []  # JsonSink, TableSink, SqliteSink, GraphFeed
        self.capture: Any = None  # MergedCapture
        self.sqlite: Any = None
        self.columns: str = ""  # -o columns=
        self.max_bytes: int | None = None  # --max-bytes: JSON written, SQLite, pcapng

    @property
    def parts(self) -> list[str]:
        """What the agents are asked to add besides JSON (RunRequest.outputs)."""
        return sorted({getattr(o, "needs", "json") for o in self.records} - {"json"})

    @property
    def full(self) -> str:
        """Why the outputs take no more (``--max-packets reached``, ``--max-bytes
        reached``), else empty: the run then stops as on Ctrl-C, rather than merging
        what nothing would write."""
        why = str(getattr(self.capture, "full", "") or "")
        if not why and self.max_bytes is not None:
            written = sum(int(getattr(o, "bytes", 0) or getattr(o, "size", 0) or 0)
                          for o in self.records)
            if written >= self.max_bytes:
                why = "--max-bytes reached"
        return why

    def describe(self, started: pb.Started) -> None:
        for out in self.records:
            if getattr(out, "needs", "json") != "json":
                out.describe(started)

    def write(self, items: Sequence[Any]) -> None:
        lines: Sequence[bytes] | None = None if self.parts else items
        for out in self.records:
            if getattr(out, "needs", "json") != "json":
                out.write(items)
                continue
            if lines is None:
                lines = [item[0] for item in items]
            out.write(lines)


def _metadata(token: str | None) -> tuple[tuple[str, str | bytes], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def _reader(node: NodeRun, first: pb.RunRequest, token: str | None,
            inbox: queue.Queue[Any]) -> None:
    """Read one node's stream into the inbox; its end (or error) last."""
    channel = grpc.insecure_channel(node.endpoint.target, options=[
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.enable_retries", 0)])
    try:
        try:
            grpc.channel_ready_future(channel).result(timeout=CONNECT_TIMEOUT)
        except grpc.FutureTimeoutError:
            inbox.put((node, RuntimeError(f"cannot connect to {node.endpoint.target} "
                                          f"within {CONNECT_TIMEOUT:g}s")))
            return
        node.requests.put(first)

        def requests() -> Iterator[pb.RunRequest]:
            while True:
                item = node.requests.get()
                if item is None:
                    return
                yield item

        run = channel.stream_stream(SERVICE + "Run",
                                    request_serializer=pb.RunRequest.SerializeToString,
                                    response_deserializer=pb.RunReply.FromString)
        call = run(requests(), metadata=_metadata(token))
        node.call = call
        try:
            for reply in call:
                inbox.put((node, reply))
        except grpc.RpcError as exc:
            inbox.put((node, exc))
    finally:
        node.requests.put(None)
        inbox.put((node, _END))
        channel.close()


def _rpc_error(node: NodeRun, exc: BaseException) -> tuple[str, str]:
    """(state, one line) for a failed stream."""
    code_of = getattr(exc, "code", None)
    if isinstance(exc, grpc.RpcError) and code_of is not None:
        code, details = code_of(), getattr(exc, "details", lambda: "")() or ""
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            node.bad_input = True
        if code == grpc.StatusCode.CANCELLED:
            return "failed", "cancelled"
        if code == grpc.StatusCode.UNAVAILABLE:
            if node.state == "connecting":
                return "unreachable", f"unreachable ({details})"
            return "failed", f"the agent went away mid-stream ({details})"
        return "failed", f"{details} ({code.name})"
    if node.state == "connecting":
        return "unreachable", str(exc)
    return "failed", str(exc)


def run_cluster(endpoints: Sequence[NodeEndpoint], argv: Sequence[str], outputs: Outputs, *,
                token: str | None = None, max_time: float | None = None,
                stop: StopFlag = STOP, err: TextIO | None = None,
                window_ns: int | None = None,
                on_started: Callable[[NodeRun], None] | None = None,
                on_ended: Callable[[NodeRun], None] | None = None) -> ClusterResult:
    """Run ``argv`` on every endpoint, merge, write ``outputs``; report on ``err``.
    ``on_started``/``on_ended``: called as each node's gadget starts and as its stream
    ends (whether or not it started: an unreachable node ends without starting)."""
    err = err or sys.stderr
    nodes = [NodeRun(ep, i, ep.node) for i, ep in enumerate(endpoints)]
    inbox: queue.Queue[Any] = queue.Queue()
    merge = Merge() if window_ns is None else Merge(window_ns=window_ns)
    result = ClusterResult(nodes)
    parts = outputs.parts
    first = pb.RunRequest(argv=list(argv), outputs=parts, columns=outputs.columns)
    for node in nodes:
        merge.join(node.index)
        threading.Thread(target=_reader, args=(node, first, token, inbox),
                         name=f"node-{node.name}", daemon=True).start()

    def say(text: str) -> None:
        err.write(f"kubectl-podsight: {text}\n")
        err.flush()

    def flush(everything: bool = False) -> None:
        items = merge.release(everything=everything)
        if items:
            outputs.write(items)
            result.records += len(items)

    def frames_of(node: NodeRun, f: pb.Frames) -> None:
        cap = outputs.capture
        start, count = node.ledger.admit(f.first_seq, f.count)
        if cap is None:
            return
        cap.update(node.name, f.interfaces)
        if f.tls_keys:
            cap.add_keys(f.tls_keys)
        blocks = cap.renumber(node.name, f.blocks, f.count)[start:count]
        times = np.frombuffer(f.times, dtype=np.int64)[start:count]
        merge.add(node.index, times, blocks, f.watermark)

    def records_of(node: NodeRun, r: pb.Records) -> None:
        start, count = node.ledger.admit(r.first_seq, r.count)
        if start >= count:
            merge.mark(node.index, r.watermark)
            return
        # The agent's lines name their node already ({"node":"...",): kept as they are.
        lines: list[Any] = r.lines.split(b"\n")[start:count]
        if parts:
            n = count - start
            cells = r.table.split(b"\n")[start:count] if r.table else [b"[]"] * n
            values = r.rows.split(b"\n")[start:count] if r.rows else [b"[]"] * n
            lines = list(zip(lines, [node.name] * n, cells, values, strict=True))
        times = np.frombuffer(r.times, dtype=np.int64)[start:count]
        merge.add(node.index, times, lines, r.watermark)

    described: list[str] = []  # the node whose Started gave the columns
    deadline = time.monotonic() + max_time + STOP_GRACE if max_time else None
    stopping_since: float | None = None
    live = len(nodes)
    while live:
        if stopping_since is None and (stop.is_set() or outputs.full or (
                deadline is not None and time.monotonic() >= deadline)):
            result.stopped_by = ("signal" if stop.is_set() else outputs.full
                                 or "--max-time reached")
            stopping_since = time.monotonic()
            for node in nodes:
                if not node.ended:
                    node.requests.put(pb.RunRequest(stop=True))
        if stopping_since is not None and time.monotonic() - stopping_since > STOP_GRACE:
            for node in nodes:
                if not node.ended and node.call is not None:
                    node.call.cancel()
        try:
            node, item = inbox.get(timeout=0.05)
        except queue.Empty:
            flush()
            continue
        if item is _END:
            node.ended = True
            live -= 1
            merge.leave(node.index)
            if node.state in ("connecting", "running"):
                if node.summary is not None:
                    node.state = "done"
                else:
                    node.state = "failed" if node.state == "running" else "unreachable"
                    node.error = node.error or "the stream ended without a summary"
                    say(f"node {node.name}: {node.error}")
            if on_ended is not None:
                on_ended(node)
            flush()
            continue
        if isinstance(item, BaseException):
            node.state, node.error = _rpc_error(node, item)
            if not node.bad_input and (node.summary is None or node.error != "cancelled"):
                say(f"node {node.name} ({node.endpoint.target}): {node.error}")
            continue
        kind = item.WhichOneof("kind")
        if kind == "records":
            records_of(node, item.records)
        elif kind == "frames":
            frames_of(node, item.frames)
        elif kind == "heartbeat":
            merge.mark(node.index, item.heartbeat.watermark)
        elif kind == "started":
            node.name = item.started.node or node.name
            node.state = "running"
            node.what = item.started.what
            if parts and not described:
                described.append(node.name)
                outputs.describe(item.started)
            say(f"node {node.name}: {node.what}")
            if on_started is not None:
                on_started(node)
        elif kind == "notice":
            say(f"node {node.name}: {item.notice.line.removeprefix('podsight: ')}")
        elif kind == "summary":
            s = item.summary
            node.summary = s
            node.ledger.close(s.records)
            if outputs.capture is not None:
                outputs.capture.update(node.name, s.interfaces)
            if s.failure:
                node.state, node.error = "failed", s.failure
                node.bad_input = s.bad_input
                if not s.bad_input:  # bad input is said once, by the caller (exit 2)
                    say(f"node {node.name}: error: {s.failure}")
            else:
                node.state = "done"
        if merge.pending > 50_000:
            flush()
    flush(everything=True)
    return result


def node_report(node: NodeRun) -> str:
    """One line per node for stderr: what it sent and what was lost on the way."""
    l = node.ledger  # noqa: E741
    parts = [f"{l.received} records", f"{node.kernel_lost} lost in the kernel",
             f"{l.gaps} lost on the way", f"{l.duplicates} duplicates dropped"]
    state = node.state if node.state != "done" else "ok"
    text = f"node {node.name} ({node.endpoint.target}): {state}: " + ", ".join(parts)
    if node.error:
        text += f"; {node.error}"
    return text
