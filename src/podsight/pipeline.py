"""The one run loop every gadget uses: source -> decode -> identity -> filter -> outputs.

A gadget (``podsight/gadgets/<name>/``) is only a *source*: it loads and
attaches its kernel program, hands over batches of records, and counts what
it could not deliver. Everything else is here or in a shared package and
knows nothing about any one gadget:

1. startup: identity sources, then the gadget (preflight, load, attach),
   then the output files (so a failed check leaves no file behind); a stop
   asked for at any moment of it is honoured at the next step;
2. the loop: wait, collect a batch, name both ends of every record at the
   record's own time, drop what user-space filters reject, write to every
   output; follow pods as they come and go; stop on Ctrl-C, SIGTERM,
   ``--max-time`` or ``--max-bytes``;
3. the end, in this order: detach (the kernel stops adding), collect the
   last batch, report what is still pending, close the outputs with the
   run's counters, print the summary line. Counts in the summary are then
   exactly what was written plus what was lost.

An output that fails (a full disk) ends the run the same way, with its
error after the summary; files written so far stay valid.

Two additions for capture gadgets, neither knowing any gadget: a batch may
carry :class:`Frames` (packets as blocks of a capture file, already built by
the kernel) that go to *frame outputs* (a pcapng file, a ring of them, a
pipe), with the gadget's :class:`CaptureInterface` list; and a run may have
:class:`Trigger` s, other gadgets run beside it whose first matching record
stops the run a delay later (``--until-failed-connect``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TextIO, TypeVar, cast

from podsight.errors import PodsightError, RunFailure
from podsight.runtime import STOP, StopFlag, Stopped
from podsight.schema import Schema

if TYPE_CHECKING:
    import numpy as np

    from podsight.identity import Resolver
    from podsight.net.rules import Rule
    from podsight.outputs.json import TemplateSpec
    from podsight.selectors import PodSelector
    from podsight.spec import GadgetSpec
    from podsight.timefmt import Clock

R = TypeVar("R")


# -- what a gadget provides ------------------------------------------------------------------

@dataclass
class Batch(Generic[R]):
    """What one collect returned: decoded records, and/or raw ones decoded on demand.

    A gadget whose events come in floods returns ``raw`` (a numpy array of
    kernel records): the JSON output may then render it through templates
    without decoding most of it (see :class:`podsight.outputs.json.TemplateJson`).
    """

    records: list[R] = field(default_factory=list)
    raw: np.ndarray | None = None
    frames: Frames | None = None

    def __len__(self) -> int:
        return (len(self.records) + (len(self.raw) if self.raw is not None else 0)
                + (len(self.frames) if self.frames is not None else 0))


@dataclass
class Frames:
    """Captured packets as ready-made blocks of a capture file, where the kernel wrote them.

    Block ``i`` is ``data[offsets[i] : offsets[i] + lengths[i]]`` (pcapng Enhanced
    Packet Blocks: the gadget's kernel program built them). The memory is the
    gadget's (a mapped ring buffer): valid until :attr:`release` is called, which
    the pipeline does once every output has written them. Outputs write them
    with ``writev`` straight from there, so no per-packet Python work is done.
    """

    data: np.ndarray  # uint8
    offsets: np.ndarray  # int64
    lengths: np.ndarray  # int64
    release: Callable[[], None] = field(default=lambda: None)
    #: optionally, per block, its IPv4 source and destination as they lie in the packet
    #: (little-endian uint32 of the network-order bytes), both 0 when the kernel did not
    #: find Ethernet + IPv4 there: the Name Resolution Block's addresses without reading
    #: the blocks (whole packets lie far apart: a cache miss each). Valid for blocks of
    #: Ethernet interfaces only.
    ipv4: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def nbytes(self) -> int:
        return int(self.lengths.sum()) if len(self.lengths) else 0

    def iovecs(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(n, 2) uint64 array of (address, length) of blocks ``start:stop``, for writev."""
        import numpy as np

        offsets, lengths = self.offsets[start:stop], self.lengths[start:stop]
        iov = np.empty((len(offsets), 2), dtype=np.uint64)
        iov[:, 0] = self.data.ctypes.data + offsets.astype(np.uint64)
        iov[:, 1] = lengths
        return iov

    def block(self, i: int) -> bytes:
        off = int(self.offsets[i])
        return self.data[off: off + int(self.lengths[i])].tobytes()


@dataclass
class CaptureInterface:
    """One interface a capture gadget observes, as a capture file describes it.

    ``id`` is its number in the file (the gadget's kernel program writes it in
    every block). The gadget updates the counters and sets ``closed`` when the
    interface goes away; frame outputs write its description when it appears
    and its statistics when it closes (and at the end, and on every rotation).
    """

    id: int
    name: str
    description: str
    snaplen: int
    filter: str = ""
    linktype: int = 1  # LINKTYPE_ETHERNET
    start_ns: int = 0  # wall clock, ns
    end_ns: int = 0
    closed: bool = False
    received: int = 0  # packets the kernel saw that passed the filter
    dropped: int = 0  # of those, packets it could not hand over
    written: int = 0
    bytes: int = 0


class FrameOutput(Protocol):
    """Where :class:`Frames` go: a pcapng file, a ring of files, a pipe.

    An output with a ``target`` attribute (a file name; ``-`` for stdout) is listed
    with its size in the live view's status bar.
    """

    bytes: int
    #: Why it takes no more (``--max-packets reached``), else "".
    full: str

    def write_frames(self, frames: Frames, interfaces: Sequence[CaptureInterface]) -> int:
        """Write ``frames`` (describing new interfaces and closing gone ones first);
        return how many were written (fewer once :attr:`full`)."""

    def close(self, interfaces: Sequence[CaptureInterface]) -> None:
        """The end: statistics of every interface, then close the file(s)."""


@dataclass(frozen=True)
class Loss:
    """Events the kernel saw but that podsight could not deliver, for one cause."""

    count: int
    cause: str  # "ring buffer full (a larger --ring-size helps)"


@dataclass
class Tally:
    """A gadget's counters at the end of a run, for the summary and the capture table.

    ``losses`` add up to "N lost"; ``before``/``after`` are extra parts of the
    summary line around it ("40 packets in 3.0s", "0 pending"); ``notes``
    follow after a semicolon; ``counters`` are the raw kernel counters.
    """

    losses: dict[str, Loss] = field(default_factory=dict)
    before: list[str] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    skipped_runs: int = 0  # tracing program runs the kernel skipped (recursion_misses)

    @property
    def lost(self) -> int:
        return sum(loss.count for loss in self.losses.values())


@dataclass(frozen=True)
class Selection:
    """What the user selected, as the kernel side can filter it.

    ``netns``: network namespace inodes to observe (0 in it: one selected pod's
    namespace is not known yet, so let everything through and filter in user
    space); None: no selection, everything. ``host``: the host's namespace is
    selected too.
    """

    netns: frozenset[int] | None
    host: bool
    host_netns: int


class Gadget(Protocol[R]):
    """A source of records; built by the gadget's factory from a :class:`RunContext`."""

    schema: Schema[R]

    def start(self, selection: Selection) -> str:
        """Preflight, load, attach; return what is being captured ("tracing TCP connects")."""

    def follow(self, selection: Selection) -> None:
        """The selected pods changed (or time passed): observe what is selected now."""

    def wait(self, timeout: float) -> None:
        """Sleep until there is something to collect, or ``timeout`` seconds pass."""

    def collect(self, *, final: bool) -> Batch[R]:
        """Records ready now (``final``: the last collect, after :meth:`detach`)."""

    def decode(self, raw: np.ndarray) -> list[R]:
        """Raw kernel records (as returned in :attr:`Batch.raw`) to records."""

    def templates(self, admit: Callable[[np.ndarray], R | None]) -> TemplateSpec[R] | None:
        """How its raw records render through JSON templates, or None for no fast path."""

    def detach(self) -> None:
        """Stop the kernel adding events (after this, counters no longer move)."""

    def pending(self) -> list[R]:
        """Records still open at the end (after :meth:`detach`), reported as such."""

    def tally(self, elapsed: float) -> Tally:
        """Counters for the summary (after the final collect)."""

    def close(self) -> None:
        """Release every kernel object (idempotent)."""


# -- what the CLI provides -------------------------------------------------------------------

@dataclass
class RunContext:
    """Everything a gadget's factory may use: its parsed flags and the shared services."""

    spec: GadgetSpec
    values: Mapping[str, Any]
    resolver: Resolver
    selector: PodSelector
    clock: Clock
    rules: Sequence[Rule] = ()
    warn: Callable[[str], None] = lambda text: None


@dataclass
class OutputOptions:
    """Which outputs a run writes (from ``-o``, ``--sqlite``, ``--json``, ``--no-tui``)."""

    mode: str = "columns"  # columns | json | none (only the sinks)
    columns: str | None = None
    extra_columns: tuple[str, ...] = ()
    sqlite: str | None = None
    #: ``--json FILE``: JSON lines to this new file, beside whatever stdout shows.
    json_file: str | None = None
    #: The live view (``podsight.tui``) shows the records: the run writes to
    #: :attr:`Run.feed`, and stderr lines wait until the view is closed.
    live: bool = False
    max_time: float | None = None
    max_bytes: int | None = None
    command: str = ""
    #: Extra outputs given by a caller that consumes records itself (``advise`` collects
    #: a live run's connects): each gets every record, named and filtered.
    sinks: tuple[Any, ...] = ()
    #: Frame outputs (``-w FILE``), opened after the gadget started: each factory gets
    #: the run's context and returns a :class:`FrameOutput`.
    frame_outputs: tuple[Callable[[RunContext], FrameOutput], ...] = ()
    #: Print the gadget's ``status()`` line on stderr while running (capture gadgets).
    status_line: bool = False
    #: Check ``columns`` before starting even when no table is shown here (``podsight
    #: agent`` formats table cells for a client): a bad name is bad input, said first.
    check_columns: bool = False
    #: Members every JSON line starts with (``"node":"node-a",``, from ``podsight agent``).
    json_prefix: str = ""
    #: Called after each collect's records are written, with the wall-clock ns taken just
    #: before that collect: everything the gadget held by then has reached the outputs.
    #: ``podsight agent`` tells its client this, so the client's merge never releases
    #: records ahead of ones the node still holds (a clock read when the node is idle
    #: would claim records it has not collected yet).
    progress: Callable[[int], None] | None = None


R_contra = TypeVar("R_contra", contravariant=True)


class Output(Protocol[R_contra]):
    """Anything records are written to (table, JSON lines, SQLite, live view)."""

    def write(self, records: Sequence[R_contra]) -> None: ...


# -- identity and filters ---------------------------------------------------------------------

class Admission(Generic[R]):
    """The identity and filter stages: names both ends of a record, then keeps it or not.

    Identity is resolved from the record's fields named in its schema's
    :class:`~podsight.schema.Sides`. Pod selectors apply to the record's
    subjects (``-n``, ``-p``, ...); ``netns`` adds namespaces selected by
    ``--netns``; user-space field filters (``--comm``, ``--dst``) come last.
    """

    def __init__(self, schema: Schema[R], resolver: Resolver, selector: PodSelector,
                 netns: frozenset[int], predicates: Sequence[Callable[[R], bool]],
                 preselected: Callable[[R], bool] | None = None) -> None:
        self.sides = schema.sides
        self.resolver = resolver
        self.selector = selector
        self.netns = netns
        self.predicates = list(predicates)
        self.preselected = preselected

    def name(self, r: R) -> None:
        """Set the record's endpoints from identity, as of the record's own time."""
        res = self.resolver
        sides = self.sides
        at = getattr(r, sides.time)
        local = None
        if sides.local is not None:
            target, addr, netns, cgroup = sides.local
            local = res.local_endpoint(getattr(r, addr), getattr(r, netns), getattr(r, cgroup),
                                       at_ns=at)
            setattr(r, target, local)
        for target, addr in sides.remote:
            a = getattr(r, addr)
            setattr(r, target, res.endpoint(a, at_ns=at) if local is None
                    else res.remote_endpoint(a, local, at_ns=at))

    def since(self, r: R) -> int:
        """Since when the record's ends are named as they are now (for cached renderings)."""
        sides = self.sides
        local = None
        if sides.local is not None:
            _, addr, netns, cgroup = sides.local
            local = (getattr(r, addr), getattr(r, netns), getattr(r, cgroup))
        return self.resolver.stable_since([getattr(r, a) for _, a in sides.remote], local)

    def selected(self, r: R) -> bool:
        """Do the pod flags pick this record (the user-space half of the kernel's filter)?"""
        if not self.selector.selects_pods:
            return True
        if self.preselected is not None and self.preselected(r):
            return True
        sides = self.sides
        netns = getattr(r, sides.local[2]) if sides.local is not None else 0
        if netns and netns in self.netns:
            return True
        return any(self.resolver.selects(self.selector, ep, netns)
                   for ep in (getattr(r, t) for t in sides.subjects) if ep is not None)

    def __call__(self, records: Sequence[R]) -> list[R]:
        out = []
        for r in records:
            self.name(r)
            if self.selected(r) and all(p(r) for p in self.predicates):
                out.append(r)
        return out

    def one(self, r: R) -> R | None:
        self.name(r)
        if self.selected(r) and all(p(r) for p in self.predicates):
            return r
        return None


class RawNaming(Generic[R]):
    """What a sink that takes raw kernel records (``write_raw``) names them with: the
    gadget's decoder and the run's identity and selection, for a few records of a batch
    (one per group of records that name alike) instead of every one.

    A sink aggregating a batch decodes and :meth:`admit` s one record per group; every
    other record of the group whose time is at or after :meth:`since` of it is named
    the same (after :meth:`sync` with the batch's newest time); the rest it decodes and
    admits one by one. Offered only when no user-space filter reads a record's own
    fields (the pod flags only look at its ends).
    """

    def __init__(self, gadget: Gadget[R], admission: Admission[R]) -> None:
        self.decode = gadget.decode
        self._admission = admission

    def sync(self, at_ns: int) -> int:
        return self._admission.resolver.sync(at_ns)

    def admit(self, records: Sequence[R]) -> list[R | None]:
        """Each record named; None for one the pod flags do not select."""
        one = self._admission.one
        return [one(r) for r in records]

    def since(self, record: R) -> int:
        return self._admission.since(record)


class RawOutput(Protocol):
    """An output that also takes raw kernel records, named through :class:`RawNaming`;
    returns how many it kept."""

    def write_raw(self, raw: np.ndarray, naming: RawNaming[Any]) -> int: ...


class _TemplateIdentity(Generic[R]):
    """:class:`podsight.outputs.json.TemplateIdentity` for one run: the resolver, asked
    through the schema's sides of a decoded raw record."""

    def __init__(self, gadget: Gadget[R], admission: Admission[R]) -> None:
        self._decode = gadget.decode
        self._admission = admission

    def sync(self, at_ns: int) -> int:
        return self._admission.resolver.sync(at_ns)

    def since(self, record: np.ndarray) -> int:
        records = self._decode(record)
        return self._admission.since(records[0]) if records else 0


# -- triggers -----------------------------------------------------------------------------------

@dataclass
class Trigger:
    """Another gadget, run beside the main one, whose first record that ``fires`` stops the
    run ``delay`` seconds later (``--until-failed-connect``: a capture that ends with the
    failure inside it). Its records are named and selected like the main gadget's (the pod
    flags apply); nothing of it is written."""

    flag: str
    ctx: RunContext
    factory: Callable[[RunContext], Gadget[Any]]
    fires: Callable[[Any], bool]
    delay: float
    describe: Callable[[Any], str] = str


class _Armed:
    """A started trigger."""

    def __init__(self, trigger: Trigger, gadget: Gadget[Any], admission: Admission[Any]) -> None:
        self.trigger = trigger
        self.gadget = gadget
        self.admission = admission
        self.fired: str = ""

    def poll(self) -> str:
        """The first firing record's description, once (then "")."""
        if self.fired:
            return ""
        batch = self.gadget.collect(final=False)
        records = list(batch.records)
        if batch.raw is not None and len(batch.raw):
            records += self.gadget.decode(batch.raw)
        for r in self.admission(records) if records else ():
            if self.trigger.fires(r):
                self.fired = self.trigger.describe(r)
                return self.fired
        return ""


# -- the run --------------------------------------------------------------------------------------

@dataclass
class RunResult:
    """What a run did, for the summary line and the capture table."""

    records: int = 0
    pending: int = 0
    unwritten: int = 0
    stopped_by: str = ""
    elapsed: float = 0.0
    failure: PodsightError | None = None
    tally: Tally = field(default_factory=Tally)


def summary_line(spec: GadgetSpec, result: RunResult) -> str:
    """``podsight: 3 events, 0 lost, 0 pending`` and, when it matters, why and what else."""
    t = result.tally
    noun = spec.noun
    parts = [f"{result.records} {noun}", *t.before, f"{t.lost} lost", *t.after]
    if spec.reports_pending:
        parts.append(f"{result.pending} pending")
    line = "podsight: " + ", ".join(parts)
    if t.lost:
        line += " (" + "; ".join(f"{loss.cause}: {loss.count}"
                                 for loss in t.losses.values() if loss.count) + ")"
    notes = list(t.notes)
    if t.skipped_runs:
        notes.append(f"{t.skipped_runs} program runs skipped by the kernel (nested on one CPU; "
                     "events in them were not seen)")
    if result.unwritten:
        notes.append(f"{result.unwritten} {noun} not written")
    if result.stopped_by:
        notes.append(f"stopped: {result.stopped_by}")
    if notes:
        line += "; " + "; ".join(notes)
    return line


class Run(Generic[R]):
    """One run of one gadget with its outputs; :meth:`execute` does everything."""

    def __init__(self, ctx: RunContext, factory: Callable[[RunContext], Gadget[R]],
                 options: OutputOptions, netns: frozenset[int],
                 predicates: Sequence[Callable[[R], bool]], *,
                 stop: StopFlag = STOP, out: TextIO | None = None,
                 err: TextIO | None = None, triggers: Sequence[Trigger] = ()) -> None:
        self.ctx = ctx
        self.factory = factory
        self.options = options
        self.netns = netns
        self.predicates = predicates
        self.stop = stop
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.result = RunResult()
        self.gadget: Gadget[R] | None = None
        self._outputs: list[Output[R]] = []
        self._sizes: list[Callable[[], int]] = []
        self._template: Any = None
        self._sqlite: Any = None
        self._files: list[tuple[str, Callable[[], int]]] = []
        self._json_file: TextIO | None = None
        #: The live view's feed (``options.live``); the view runs this run in a thread.
        self.feed: Any = None
        if options.live:
            from podsight.outputs.live import LiveFeed

            self.feed = LiveFeed(f"podsight {ctx.spec.name}", ctx.spec.noun)
            self.err = self.feed.log  # the terminal is the view's until it closes
        self._reader_gone = False
        self._running = False
        self._admission: Admission[R] | None = None
        self._started = 0.0
        self.triggers = list(triggers)
        self._armed: list[_Armed] = []
        self._trigger_stop = ""
        self._frame_outputs: list[FrameOutput] = []
        self._next_status = 0.0
        self._status_shown = False

    # -- selection ---------------------------------------------------------------------

    def selection(self) -> Selection:
        res = self.ctx.resolver
        selector = self.ctx.selector
        if not selector.selects_pods and not self.netns:
            return Selection(None, selector.host, res.host_netns)
        wanted = set(self.netns)
        if selector.selects_pods:
            wanted |= res.selected_netns(selector)
        return Selection(frozenset(wanted), selector.host, res.host_netns)

    # -- outputs ---------------------------------------------------------------------------

    def _open_outputs(self, gadget: Gadget[R], admission: Admission[R]) -> None:
        from podsight.outputs.json import JsonEncoder, JsonLines, TemplateJson
        from podsight.outputs.table import TableWriter

        opts = self.options
        schema = gadget.schema
        if opts.sqlite:
            from podsight.outputs.sqlite import SqliteOutput

            meta = {"command": opts.command, "gadget": self.ctx.spec.name,
                    "started": self.ctx.clock.rfc3339(time.time_ns())}
            self._sqlite = SqliteOutput(opts.sqlite, self.ctx.spec.name, schema, meta)
            self._outputs.append(self._sqlite)
            self._sizes.append(lambda: int(self._sqlite.bytes))
            self._files.append((opts.sqlite, self._sizes[-1]))
        self._outputs.extend(opts.sinks)
        for factory in opts.frame_outputs:
            frame_output = factory(self.ctx)
            self._frame_outputs.append(frame_output)
            self._sizes.append(lambda o=frame_output: int(o.bytes))  # type: ignore[misc]
            target = getattr(frame_output, "target", "")
            if target and target != "-":
                self._files.append((target, self._sizes[-1]))

        def json_lines(stream: TextIO) -> JsonLines[R]:
            json = JsonLines(schema, stream, opts.json_prefix)
            self._outputs.append(json)
            self._sizes.append(lambda: json.bytes)
            spec = gadget.templates(lambda raw: self._admit_raw(raw, admission))
            # A template decides filters once per identity: only if no filter reads a
            # value that changes from event to event of one identity.
            varying = {slot.attr for slot in spec.slots} if spec is not None else set()
            if self._template is None and spec is not None and not varying & {
                    getattr(p, "attr", "") for p in self.predicates}:
                self._template = (TemplateJson(JsonEncoder(schema, opts.json_prefix), spec,
                                               _TemplateIdentity(gadget, admission)), json)
            return json

        if opts.json_file:
            self._json_file = open(opts.json_file, "x", encoding="utf-8")  # noqa: SIM115
            json_lines(self._json_file)
            self._files.append((opts.json_file, self._sizes[-1]))
        if opts.mode == "none":
            return
        if opts.mode == "json":
            json_lines(self.out)
        else:
            fields = self._columns(gadget)
            if self.feed is not None:
                self.feed.open(schema, fields, self._files)
            else:
                table = TableWriter(fields, self.out)
                table.header()
                self._outputs.append(table)

    def table_fields(self) -> list[Any]:
        """The table's columns of the running gadget (as :meth:`_columns`), for a caller
        that formats the table elsewhere (``podsight agent``)."""
        assert self.gadget is not None
        return self._columns(self.gadget)

    def _columns(self, gadget: Gadget[R]) -> list[Any]:
        """The table's columns: the defaults (with identity's when pods are known, and the
        gadget's extras), or ``-o columns=``; a bad column name fails here, before start."""
        opts = self.options
        schema = gadget.schema
        extra = [*opts.extra_columns, *getattr(gadget, "extra_columns", ())]
        if self.ctx.resolver.knows_pods:
            k8s = ["k8s.namespace", "k8s.podname", "k8s.containername"]
            if self.ctx.resolver.has_kubernetes:
                k8s.insert(0, "k8s.node")
            extra += [n for n in k8s if n in schema.by_name]
        return schema.columns(opts.columns, extra=extra)

    def _admit_raw(self, raw: np.ndarray, admission: Admission[R]) -> R | None:
        assert self.gadget is not None
        records = self.gadget.decode(raw)
        return admission.one(records[0]) if records else None

    def _tell(self) -> None:
        """What identity's background threads have to say (the API server went away or came
        back, a runtime stopped answering): one line each, between batches."""
        lines = self.ctx.resolver.take_notices()
        if lines:
            self.err.write("".join(line + "\n" for line in lines))
            self.err.flush()

    def _write(self, batch: Batch[R], admission: Admission[R]) -> None:
        gadget = self.gadget
        assert gadget is not None
        if self.result.failure is not None or self._reader_gone:
            self.result.unwritten += len(batch)
            if batch.frames is not None:
                batch.frames.release()
            return
        if batch.frames is not None:
            frames = batch.frames
            try:
                self._write_frames(frames)
                self._offer_frames(frames, admission)
            finally:
                frames.release()
        records = list(batch.records)
        lines: list[str] | None = None
        raw = batch.raw
        unseen: np.ndarray | None = None  # raw records only the live view will look at
        aggregate: np.ndarray | None = None  # raw records for sinks that aggregate them
        if raw is not None and len(raw):
            if self._raw_sinks(admission):
                aggregate = raw
            elif self._template is not None and len(self._outputs) == 1:
                lines = self._template[0].lines(raw)
                unseen = raw
            elif self.feed is not None and not self._outputs and self._admits_all():
                unseen = raw  # the view alone, and it would keep every one: it samples
            else:
                records += gadget.decode(raw)
        kept = admission(records) if records else []
        try:
            if lines is not None:
                self._template[1].write_lines(lines)
                self.result.records += len(lines)
            elif unseen is not None:
                self.result.records += len(unseen)
            if kept:
                for output in self._outputs:
                    output.write(kept)
                self.result.records += len(kept)
            if aggregate is not None:
                naming = RawNaming(gadget, admission)
                self.result.records += min(cast(RawOutput, output).write_raw(aggregate, naming)
                                           for output in self._outputs)
        except BrokenPipeError:
            # `podsight ... | head`: the reader left. Not an error: stop, and say so.
            self._reader_gone = True
            self.result.stopped_by = "the reader of the output went away"
            self.stop.set()
        except OSError as exc:
            self._fail(RunFailure(f"writing output: {exc.strerror or exc}"), len(batch))
        except PodsightError as exc:
            self._fail(exc, len(batch))
        feed = self.feed
        if feed is not None:
            if kept:
                feed.write(kept)
            if unseen is not None:
                feed.offer(unseen, lambda sample: admission(gadget.decode(sample)))

    def _offer_frames(self, frames: Frames, admission: Admission[R]) -> None:
        """Frames to the live view, once written and before they are released: the view
        samples them and the gadget decodes only the sample (``decode_frames``)."""
        decode_frames = getattr(self.gadget, "decode_frames", None)
        if self.feed is None or decode_frames is None or not len(frames):
            return
        import numpy as np

        self.feed.offer(np.arange(len(frames)),
                        lambda which: admission(decode_frames(frames, which)))

    def _raw_sinks(self, admission: Admission[R]) -> bool:
        """Do the outputs take raw records (sinks that aggregate them: ``serve``) and
        nothing needs each record (no live view, no filter on a record's own fields)?"""
        return (bool(self._outputs) and self.feed is None and not admission.predicates
                and all(getattr(o, "write_raw", None) is not None for o in self._outputs))

    def _admits_all(self) -> bool:
        """Does admission keep every record as it is (no pod flags, no user-space filter)?"""
        return not self.predicates and not self.ctx.selector.selects_pods

    def _live_tally(self) -> Tally:
        assert self.gadget is not None
        return self.gadget.tally(time.monotonic() - self._started)

    def _capture_interfaces(self) -> Sequence[CaptureInterface]:
        return getattr(self.gadget, "capture_interfaces", ())

    def _write_frames(self, frames: Frames) -> None:
        """Frames to every frame output (the caller gives them back to the gadget); a full
        output stops."""
        interfaces = self._capture_interfaces()
        try:
            written = len(frames)
            for output in self._frame_outputs:
                written = min(written, output.write_frames(frames, interfaces))
                if output.full and not self.result.stopped_by:
                    self.result.stopped_by = output.full
                    self.stop.set()
            if self._frame_outputs:
                self.result.records += written
                self.result.unwritten += len(frames) - written
        except BrokenPipeError:
            self._reader_gone = True
            self.result.stopped_by = "the reader of the output went away"
            self.result.unwritten += len(frames)
            self.stop.set()
        except OSError as exc:
            self._fail(RunFailure(f"writing output: {exc.strerror or exc}"), len(frames))
        except PodsightError as exc:
            self._fail(exc, len(frames))

    def _show_status(self, final: bool = False) -> None:
        """The gadget's live line on stderr: rewritten in place on a terminal, else a line
        every 5 s."""
        status = getattr(self.gadget, "status", None)
        if not self.options.status_line or status is None:
            return
        tty = self.err.isatty()
        now = time.monotonic()
        if final:
            if self._status_shown and tty:
                self.err.write("\r\x1b[K")
                self.err.flush()
            return
        if now < self._next_status:
            return
        self._next_status = now + (1.0 if tty else 5.0)
        line = f"podsight: {status()}"
        self.err.write(f"\r{line}\x1b[K" if tty else line + "\n")
        self.err.flush()
        self._status_shown = True

    def _start_triggers(self, selection: Selection) -> None:
        for trigger in self.triggers:
            gadget = trigger.factory(trigger.ctx)
            self.stop.check()
            try:
                gadget.start(selection)
            except BaseException:
                gadget.close()
                raise
            admission = Admission(gadget.schema, trigger.ctx.resolver, trigger.ctx.selector,
                                  self.netns, (), getattr(gadget, "preselected", None))
            self._armed.append(_Armed(trigger, gadget, admission))

    def _poll_triggers(self, selection: Selection) -> None:
        for armed in self._armed:
            armed.gadget.follow(selection)
            what = armed.poll()
            if what:
                delay = armed.trigger.delay
                self._trigger_stop = f"{armed.trigger.flag}: {what}"
                self.err.write(f"podsight: {what}; stopping in {delay:g}s\n")
                self.err.flush()
                self.stop.stop_within(delay)

    def _close_triggers(self) -> None:
        for armed in self._armed:
            try:
                armed.gadget.detach()
            finally:
                armed.gadget.close()
        self._armed = []

    def _fail(self, exc: PodsightError, count: int) -> None:
        self.result.failure = exc
        self.result.unwritten += count
        self.stop.set()

    def _over_budget(self) -> bool:
        limit = self.options.max_bytes
        return limit is not None and sum(size() for size in self._sizes) >= limit

    # -- the run -----------------------------------------------------------------------------

    def execute(self) -> RunResult:
        """Start, loop, finish; always ends with the summary line on stderr."""
        result = self.result
        with ExitStack() as stack:
            try:
                self._run(stack)
            except Stopped:
                pass
            finally:
                self._finish(stack)
        self._tell()
        self.err.write(summary_line(self.ctx.spec, result) + "\n")
        self.err.flush()
        return result

    def _run(self, stack: ExitStack) -> None:
        ctx = self.ctx
        stop = self.stop
        stop.check()
        gadget = self.factory(ctx)
        self.gadget = gadget
        stack.callback(gadget.close)
        if self.options.mode == "columns" or self.options.check_columns:
            self._columns(gadget)  # a bad -o columns= is bad input: say so before starting
        stop.check()
        what = gadget.start(self.selection())
        self._running = True
        stop.check()
        self._start_triggers(self.selection())
        stop.check()
        admission = Admission(gadget.schema, ctx.resolver, ctx.selector, self.netns,
                              self.predicates, getattr(gadget, "preselected", None))
        self._admission = admission
        self._open_outputs(gadget, admission)
        stop.set_deadline(self.options.max_time)
        self._started = time.monotonic()
        # Printed once the programs are attached: from here on nothing is missed.
        self.err.write(f"podsight: {what} (Ctrl-C to stop)\n")
        self.err.flush()
        while not stop.is_set():
            gadget.wait(stop.remaining(0.05))
            collecting = time.time_ns()
            self._write(gadget.collect(final=False), admission)
            if self.options.progress is not None:
                self.options.progress(collecting)
            self._tell()
            if self.feed is not None:
                self.feed.tick(self.result.records, self._live_tally)
            self._show_status()
            if ctx.resolver.refresh() and self._template is not None:
                self._template[0].clear()
            selection = self.selection()
            gadget.follow(selection)
            if self._armed:
                self._poll_triggers(selection)
            if self._over_budget():
                self.result.stopped_by = "--max-bytes reached"
                break
        if self._trigger_stop and stop.signal is None and not self.result.stopped_by:
            self.result.stopped_by = self._trigger_stop
        elif stop.timed_out and not self.result.stopped_by:
            self.result.stopped_by = "--max-time reached"

    def _finish(self, stack: ExitStack) -> None:
        gadget = self.gadget
        result = self.result
        if self._started:
            result.elapsed = time.monotonic() - self._started
        if gadget is None:
            return
        try:
            self._close_triggers()
            if not self._running:
                return  # it never started: nothing was captured, nothing to count
            gadget.detach()
            admission = self._admission
            if admission is not None and (self._outputs or self._frame_outputs):
                self._write(gadget.collect(final=True), admission)
                before = result.records
                self._write(Batch(records=gadget.pending()), admission)
                result.pending = result.records - before
            result.tally = gadget.tally(result.elapsed)
            self._show_status(final=True)
            self._close_frame_outputs()
            if self._sqlite is not None:
                self._close_sqlite()
        finally:
            self._close_frame_outputs()
            if self._json_file is not None:
                self._json_file.close()
            if self.feed is not None:
                self.feed.finish(result.records, result.tally if self._running else None)
            gadget.close()

    def _close_frame_outputs(self) -> None:
        """Statistics and the end of every capture file (once; a failure is the run's)."""
        outputs, self._frame_outputs = self._frame_outputs, []
        for output in outputs:
            try:
                output.close(self._capture_interfaces())
            except OSError as exc:
                if self.result.failure is None:
                    self.result.failure = RunFailure(f"writing output: {exc.strerror or exc}")
            except PodsightError as exc:
                if self.result.failure is None:
                    self.result.failure = exc

    def _close_sqlite(self) -> None:
        result = self.result
        t = result.tally
        meta = {
            "ended": self.ctx.clock.rfc3339(time.time_ns()),
            "records": str(result.records),
            "lost": str(t.lost),
            "skipped_runs": str(t.skipped_runs),
            "pending": str(result.pending),
            "stopped_by": result.stopped_by or ("signal" if self.stop.signal else ""),
            **{key if key.startswith("lost_") else f"lost_{key}": str(loss.count)
               for key, loss in t.losses.items()},
            **{f"counter_{key}": str(value) for key, value in t.counters.items()},
        }
        try:
            self._sqlite.writer.set_meta(meta)
        except PodsightError as exc:
            if result.failure is None:
                result.failure = exc
        finally:
            self._sqlite.close()
