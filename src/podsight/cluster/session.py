"""One gadget run on the agent, asked for by a client.

The request is the local command line (``trace tcpconnect -n shop``), parsed by the
same parser, so a flag means the same on a node as on a laptop. Flags that name output
files or terminals on the agent's machine make no sense for a remote caller and are
refused with one line; outputs are the agent's own (JSON lines and pcapng blocks down
the stream, see :mod:`.batches`). ``packets --comments`` and ``--tls-keylog FILE`` are
done here, where they can be: the node's identity names both ends of each packet, and
the key log is a file on the node (or in one of its pods). The run is the one pipeline
(:class:`podsight.pipeline.Run`) with its own stop flag: a client that stops, cancels or
goes away sets it, and the pipeline's normal end detaches the gadget.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import threading
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from podsight.cluster import agent_pb2 as pb
from podsight.cluster.batches import FrameBatches, NoticeLines, RecordBatches, SeqCounter
from podsight.cluster.schemarows import SchemaRows
from podsight.errors import PodsightError, UserError
from podsight.runtime import StopFlag, Stopped
from podsight.schema import json_string

_OUTPUT = ("names a file on the node; outputs are written by the client (give output "
           "flags to kubectl podsight)")
_IDENTITY = ("the agent names pods with its own ServiceAccount; a kubeconfig of the "
             "caller's is not on the node")
_CAPTURE = "the client's capture file's (give it to kubectl podsight, which keeps it)"
#: Flags a remote run refuses: parsed attribute -> (the flag as users type it, why).
REFUSED = {
    "sqlite": ("--sqlite", _OUTPUT), "json_file": ("--json", _OUTPUT),
    "kubeconfig": ("--kubeconfig", _IDENTITY), "context": ("--context", _IDENTITY),
}
#: And for capture gadgets, the flags of the capture file (the client writes it).
REFUSED_CAPTURE = {"ring_size": ("--ring-size", _CAPTURE), "ring": ("--ring", _CAPTURE),
                   "max_packets": ("--max-packets", _CAPTURE),
                   "page_cache": ("--page-cache", _CAPTURE)}
REFUSED_WORDS = {"-w", "--write", "--tui", "--no-tui", "-h", "--help", "--force"}

_PARSE_LOCK = threading.Lock()


#: What a client may ask for besides JSON lines (RunRequest.outputs).
OUTPUTS = ("table", "sql")


@dataclass
class Request:
    spec: Any
    ns: argparse.Namespace
    outputs: tuple[str, ...] = ()
    columns: str | None = None


def find_spec(argv: Sequence[str]) -> Any:
    from podsight.gadgets import specs

    for spec in specs():
        if tuple(argv[: len(spec.command)]) == spec.command:
            return spec
    names = ", ".join(" ".join(s.command) for s in specs())
    raise UserError(f"no gadget {' '.join(argv[:2])!r} (gadgets: {names})")


def parse_request(argv: Sequence[str], scope_netns: str | None = None,
                  outputs: Sequence[str] = (), columns: str = "") -> Request:
    """The gadget and its parsed flags; bad input raises :class:`UserError` (one line)."""
    argv = list(argv)
    for name in outputs:
        if name not in OUTPUTS:
            raise UserError(f"output {name!r}: the agent adds {' or '.join(OUTPUTS)}")
    if not argv:
        raise UserError("empty request: give a gadget command line (trace tcpconnect ...)")
    spec = find_spec(argv)
    for word in argv:
        flag = word.split("=", 1)[0]
        if flag in REFUSED_WORDS:
            raise UserError(f"{flag}: outputs are written by the client, not on the node "
                            "(give output flags to kubectl podsight)")
    for i, word in enumerate(argv):
        if (word in ("-o", "--output") and i + 1 < len(argv) and argv[i + 1] != "json") or \
                (word.startswith("--output=") and word != "--output=json"):
            raise UserError("-o: outputs are written by the client, not on the node")
    if scope_netns and "--netns" not in argv:
        argv += ["--netns", scope_netns]
    if "capture" in spec.flag_groups:
        argv += ["-w", "-"]  # the frames go down the stream; -w is only required by the parser
    from podsight.cli.main import build_parser

    err = io.StringIO()
    with _PARSE_LOCK, contextlib.redirect_stderr(err):
        try:
            ns = build_parser().parse_args(argv)
        except SystemExit:
            line = err.getvalue().strip().splitlines()
            text = line[-1].removeprefix("podsight: error: ") if line else "bad request"
            raise UserError(text) from None
    refused = {**REFUSED, **(REFUSED_CAPTURE if "capture" in spec.flag_groups else {})}
    for attr, (flag, why) in refused.items():
        if getattr(ns, attr, None) not in (None, False):
            raise UserError(f"{flag}: {why}")
    if getattr(ns, "tls_keylog", None) is not None and not ns.tls_keylog.strip():
        raise UserError("--tls-keylog needs a file name")
    if "capture" in spec.flag_groups and outputs:
        raise UserError("a capture gadget sends frames: no table or SQLite rows")
    return Request(spec, ns, tuple(outputs), columns.strip() or None)


class Session:
    """Runs one request; :meth:`run` sends everything through ``emit`` and returns the
    Summary (also sent)."""

    def __init__(self, request: Request, node: str, emit: Callable[[pb.RunReply], None]) -> None:
        self.request = request
        self.node = node
        self.emit = emit
        self.stop = StopFlag()
        self.seq = SeqCounter()

    def _frames(self, frames: FrameBatches, ctx: Any) -> FrameBatches:
        """The frame output, once the gadget started: comments named by this node's
        identity, and the key log (``--tls-keylog``) read here, on the node."""
        from podsight.cli.gadget import keylog_of
        from podsight.outputs.pcapng import commented

        ns = self.request.ns
        if getattr(ns, "comments", False):
            notation = ctx.resolver.endpoint

            def annotate(block: bytes) -> bytes:
                return commented(block, lambda addr: str(notation(addr).notation))
            frames.annotate = annotate
        frames.keylog = keylog_of(ns, ctx)
        return frames

    def _progress(self, frames: FrameBatches | None) -> Callable[[int], None]:
        """After each collect: keys the application wrote meanwhile, then the new mark."""
        seq = self.seq

        def progress(collecting: int) -> None:
            if frames is not None:
                frames.send_keys()
            seq.mark = collecting
        return progress

    def run(self) -> pb.Summary:
        from podsight.cli.gadget import build_run
        from podsight.pipeline import OutputOptions, RunResult, summary_line

        spec, ns = self.request.spec, self.request.ns
        capture = "capture" in spec.flag_groups
        frames = FrameBatches(self.seq, self.emit) if capture else None
        outputs = self.request.outputs
        # The node names each record in the JSON itself: free here (it is part of every
        # line's template), where the client would copy every line to add it.
        prefix = f'"node":{json_string(self.node)},'
        rows = SchemaRows("table" in outputs, "sql" in outputs) if outputs else None
        notices = NoticeLines(self.node, spec.name, self.emit,
                              rows.describe if rows is not None else None)
        options = OutputOptions(
            mode="none" if capture else "json", max_time=ns.max_time, max_bytes=None,
            command="podsight agent: " + " ".join(spec.command),
            columns=self.request.columns, check_columns="table" in outputs,
            json_prefix=prefix, progress=self._progress(frames),
            sinks=(rows,) if rows is not None else (),
            frame_outputs=((lambda ctx: self._frames(frames, ctx)),) if frames is not None
            else ())
        result = RunResult()
        failure = ""
        bad_input = False

        def warn(text: str) -> None:
            notices.write(f"podsight: warning: {text}\n")

        with ExitStack() as stack:
            try:
                run_ = build_run(spec, ns, options, stack, stop=self.stop,
                                 out=RecordBatches(self.seq, self.emit, rows, prefix),
                                 err=notices, warn=warn)
                if rows is not None:
                    rows.run = run_
                result = run_.execute()
            except Stopped:
                pass
            except PodsightError as exc:
                failure = str(exc)
                bad_input = isinstance(exc, UserError)
            except OSError as exc:
                failure = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename
                                                      else "")
            except Exception as exc:  # the session's boundary: one line to the client
                failure = f"internal error ({type(exc).__name__}: {exc})"
        if result.failure is not None and not failure:
            failure = str(result.failure)
            bad_input = isinstance(result.failure, UserError)
        if not notices.started:
            notices.release()
        t = result.tally
        summary = pb.Summary(
            records=self.seq.next, lost=t.lost,
            losses=[pb.Loss(key=k, cause=v.cause, count=v.count) for k, v in t.losses.items()],
            line=summary_line(spec, result), stopped_by=result.stopped_by, failure=failure,
            pending=result.pending, bad_input=bad_input,
            interfaces=frames.interfaces if frames is not None else ())
        self.emit(pb.RunReply(summary=summary))
        return summary
