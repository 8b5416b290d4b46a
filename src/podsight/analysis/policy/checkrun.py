"""The loop of ``policy check``, on one CPU or on several.

:func:`judge` runs connections through the checker (and, with ``--diff``,
the baseline) into a report, counting. :func:`judge_parallel` splits the
``--from`` files (JSON lines by byte range, trace tcpconnect SQLite files by
row id), forks one worker per part (at most ``jobs`` at a time, each
inheriting the loaded policies and objects), and writes the parts' reports
in input order, so the output is the one-CPU output byte for byte. A part
that fails stops the check where the one-CPU run would have stopped: the
parts before it are written, then its error. Inputs that cannot be split
(stdin, flow records, which are merged across the whole input) are judged
on one CPU. :func:`advise_parallel` reads the parts of an advise the same
way.
"""

from __future__ import annotations

import errno
import os
import pickle
import select
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TextIO

from podsight.analysis.policy.checker import ALLOWED, Checker, Verdict
from podsight.analysis.policy.jsonlines import Block
from podsight.analysis.policy.records import Chunk, Connection, NeedsWholeInput, Reader, Rows
from podsight.errors import RunFailure

#: How often (records, minus one) a long check looks whether Ctrl-C was pressed.
STOP_MASK = 4095
#: Below this much input a check stays on one CPU unless --jobs says otherwise.
PARALLEL_BYTES = 32 << 20
#: The most CPUs a check uses unless --jobs says otherwise (each holds its own caches).
MAX_AUTO_JOBS = 4


@dataclass
class Tally:
    """What a check counted: connections, denied, changed verdicts, the records read."""

    connections: int = 0
    denied: int = 0
    changed: int = 0
    rows: int = 0  # table rows written
    records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def add(self, other: Tally) -> None:
        self.connections += other.connections
        self.denied += other.denied
        self.changed += other.changed
        self.rows += other.rows
        self.records += other.records
        for proto, n in other.skipped.items():
            self.skipped[proto] = self.skipped.get(proto, 0) + n


def judge(conns: Iterable[Connection | Block | Rows], checker: Checker, before: Checker | None,
          report: Any, every: bool, stop: Callable[[], bool]) -> Tally:
    """Judge every connection into ``report``; ``every``: write the allowed ones too.

    ``conns`` may hold blocks of decoded JSON lines or batches of SQLite rows
    (:meth:`Reader.items`): without ``--diff`` they are judged by
    :class:`~podsight.analysis.policy.blockjudge.BlockJudge`, with it one connection at a
    time like the rest."""
    from podsight.analysis.policy.blockjudge import BlockJudge

    tally = Tally()
    denied = changed = n = 0
    check, decide, write = checker.check, checker.decision, report.write

    def one(conn: Connection) -> bool:
        """Judge and write one connection; True when denied."""
        nonlocal changed
        if not every:
            decision, src, dst = decide(conn)
            if decision.verdict == ALLOWED:
                return False
            write(conn, src, dst, Verdict(decision, src, dst, conn.dport, conn.proto))
            return True
        verdict = check(conn)
        if before is not None:
            old = before.check(conn)
            if old.verdict != verdict.verdict:
                changed += 1
                report.write_diff(conn, verdict.src, verdict.dst, old, verdict)
        else:
            write(conn, verdict.src, verdict.dst, verdict)
        return verdict.decision.verdict != ALLOWED

    blocks = BlockJudge(checker, report, every, one) if before is None else None
    try:
        for conn in conns:
            if conn.__class__ is Block or conn.__class__ is Rows:
                assert isinstance(conn, (Block, Rows))
                if stop():
                    raise KeyboardInterrupt
                if blocks is not None:
                    k, d = blocks.run(conn) if isinstance(conn, Block) else \
                        blocks.run_rows(conn)
                    n += k
                    denied += d
                    continue
                for i in range(len(conn.records)):
                    got = conn.connection(i)
                    if got is not None:
                        n += 1
                        denied += one(got)
                continue
            assert isinstance(conn, Connection)
            n += 1
            if not n & STOP_MASK and stop():
                raise KeyboardInterrupt
            if not every:  # inline: the hot path of a table of the denied ones
                decision, src, dst = decide(conn)
                if decision.verdict == ALLOWED:
                    continue
                denied += 1
                write(conn, src, dst, Verdict(decision, src, dst, conn.dport, conn.proto))
                continue
            denied += one(conn)
    finally:
        tally.connections, tally.denied, tally.changed = n, denied, changed
        tally.rows = getattr(report, "rows", 0)
    return tally


def plan(paths: list[str], jobs: int | None) -> list[Chunk] | None:
    """The parts to judge in parallel, or None to judge on one CPU. ``jobs`` None: as many
    CPUs as there are (up to :data:`MAX_AUTO_JOBS`) for inputs of
    :data:`PARALLEL_BYTES` or more; a number: that many, whatever the size."""
    from podsight.analysis.policy.records import split

    want = jobs if jobs is not None else min(os.cpu_count() or 1, MAX_AUTO_JOBS)
    if want < 2 or "-" in paths:
        return None
    if jobs is None:
        try:
            if sum(os.path.getsize(p) for p in paths) < PARALLEL_BYTES:
                return None
        except OSError:
            return None  # the one-CPU reader says what is wrong with it
    chunks: list[Chunk] = []
    for path in paths:
        parts = split(path, want)
        if parts is None:
            return None
        chunks += parts
    return chunks


@dataclass
class _Worker:
    pid: int
    index: int
    pipe: int
    data: bytearray = field(default_factory=bytearray)


@dataclass
class Part:
    """What a worker did with one part: ``payload`` (its task's result, also when reading
    stopped early), ``error`` (what stopped it, raised where one CPU would raise it), and
    the records it read."""

    payload: Any = None
    error: BaseException | None = None
    records: int = 0
    skipped: dict[str, int] = field(default_factory=dict)


class _Pool:
    """Forked workers for some of a check's parts, at most a given number at a time; their
    :class:`Part` results by index, as they end."""

    def __init__(self, chunks: list[Chunk], todo: list[int], reader: Reader,
                 task: Callable[[int, Iterable[Any]], Any], stop: Callable[[], bool],
                 items: bool) -> None:
        self.chunks, self.todo, self.reader = chunks, list(todo), reader
        self.task, self.stop, self.items = task, stop, items
        self.parts: dict[int, Part] = {}
        self.running: dict[int, _Worker] = {}

    def start(self, jobs: int) -> None:
        """Fork workers for the parts to do until ``jobs`` run."""
        while self.todo and len(self.running) < jobs:
            i = self.todo.pop(0)
            worker = _fork(i, self.chunks[i], self.reader, self.task, self.stop, self.items)
            self.running[worker.pipe] = worker

    def finish(self, jobs: int) -> bool:
        """Run every part to do, ``jobs`` at a time; False as soon as one cannot be read
        alone (flow records)."""
        while self.todo or self.running:
            self.start(jobs)
            if self.stop():
                raise KeyboardInterrupt
            ready, _, _ = select.select(list(self.running), [], [], 0.2)
            for fd in ready:
                worker = self.running[fd]
                data = os.read(fd, 1 << 20)
                if data:
                    worker.data += data
                    continue
                del self.running[fd]
                os.close(fd)
                _, status = os.waitpid(worker.pid, 0)
                part = _result(worker, status)
                if part is None:
                    return False
                self.parts[worker.index] = part
        return True

    def close(self) -> None:
        """Ctrl-C, an error, or done: no worker outlives us."""
        for worker in self.running.values():
            try:
                os.kill(worker.pid, signal.SIGKILL)
                os.waitpid(worker.pid, 0)
            except ChildProcessError:
                pass
            os.close(worker.pipe)
        self.running.clear()


def judge_parallel(chunks: list[Chunk], jobs: int, reader: Reader,
                   make_report: Callable[[Any, bool], Any],
                   work: Callable[[Iterable[Connection | Block | Rows], Any], Tally],
                   out: TextIO, header: Callable[[], str], stop: Callable[[], bool]
                   ) -> Tally | int:
    """Judge ``chunks``: the first here, straight into ``out``, the others meanwhile in
    forked workers (``jobs`` CPUs in all), each into a temporary file, copied to ``out``
    in order after it (by the kernel where it can: :func:`_copy`), after ``header()`` when
    the first wrote nothing and they did. ``make_report(stream, header)``: a report whose
    table has its header (True) or not.

    When a part cannot be judged alone (flow records, merged across the whole input), the
    whole must be judged on one CPU: the number of characters already written to ``out``
    is returned, the start of what one CPU writes (:class:`Skip` drops them).

    Why the first part here: the parent waited while its workers judged, and then copied
    their whole output (670 MB for ``-o json`` on the benchmark's million lines) through
    Python; now it judges a part itself, and half the output is never a temporary file.
    """
    first = _Counted(out)
    with ExitStack() as files:
        outputs: list[BinaryIO | None] = [None] + [
            files.enter_context(tempfile.TemporaryFile()) for _ in chunks[1:]]

        def task(index: int, conns: Iterable[Connection | Block | Rows]) -> Tally:
            output = outputs[index]
            assert output is not None
            text = open(output.fileno(), "w", encoding="utf-8",  # noqa: SIM115
                        closefd=False, buffering=1 << 16)
            try:
                return work(conns, make_report(text, False))
            finally:
                text.flush()

        pool = _Pool(chunks, list(range(1, len(chunks))), reader, task, stop, items=True)
        out.flush()
        sys.stderr.flush()
        try:
            pool.start(jobs - 1)
            mine = Reader([], server_port=reader.server_port)
            try:
                total = work(mine.chunk_items(chunks[0]), make_report(first, True))
            except NeedsWholeInput:
                first.flush()
                return first.chars
            total.records, total.skipped = mine.stats.records, dict(mine.stats.skipped)
            first.flush()
            if not pool.finish(jobs):
                return first.chars
        finally:
            pool.close()
        parts = [pool.parts[i] for i in range(1, len(chunks))]
        for part in parts:
            if part.error is None:
                total.add(part.payload)
                total.records += part.records
                for proto, n in part.skipped.items():
                    total.skipped[proto] = total.skipped.get(proto, 0) + n
        # The header goes before the first row of the parts written (up to the first that
        # failed, whose rows before its error are written too).
        last = next((i for i, p in enumerate(parts) if p.error is not None), len(parts) - 1)
        if not first.chars and any(outputs[i + 1].seek(0, os.SEEK_END)  # type: ignore[union-attr]
                                   for i in range(last + 1)):
            out.write(header())
        out.flush()
        for i, part in enumerate(parts):
            output = outputs[i + 1]
            assert output is not None
            _copy(output, out)
            if part.error is not None:
                out.flush()
                raise part.error
        out.flush()
        return total


class _Counted:
    """``out``, counting the characters written to it."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.chars = 0

    def write(self, text: str) -> int:
        self.chars += len(text)
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


class Skip:
    """``out`` less the first ``chars`` characters written to it: a check judged on one CPU
    after a part of it was already written (:func:`judge_parallel`)."""

    def __init__(self, out: TextIO, chars: int) -> None:
        self.out = out
        self.chars = chars

    def write(self, text: str) -> int:
        if self.chars:
            cut = min(self.chars, len(text))
            self.chars -= cut
            text = text[cut:]
            if not text:
                return 0
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def advise_parallel(chunks: list[Chunk], jobs: int, reader: Reader,
                    make_advisor: Callable[[], Any], stop: Callable[[], bool]) -> Any:
    """The advisor of the connections of ``chunks``, read on up to ``jobs`` CPUs; None when
    a part cannot be read alone (flow records): then the whole is for one CPU.

    Why: reading a record (parsing a JSON line, resolving its ends) costs several times what
    the advisor does with it, and advise read on one CPU. The first part is read here, into
    the advisor returned, while forked workers read the others, each into an advisor of its
    own with a journal of the ends it registered and the routes it found, in order; their
    journals are then replayed here in input order and their tallies added
    (:meth:`~podsight.analysis.policy.advisor.Advisor.replay`), which is what one advisor
    reading every record in order does. A worker's error (a record the advisor cannot
    place, a line that cannot be read) is raised after its part's journal, where one CPU
    would have raised it. (Before, the parent only waited, then replayed every part's
    journal, the first one's too: ~0.5 s of the benchmark's advise.)
    """
    def task(index: int, conns: Iterable[Connection | Block | Rows]) -> tuple[Any, ...]:
        part = make_advisor()
        part.journal = []
        error: BaseException | None = None
        try:
            part.add_items(conns)
        except Exception as exc:  # raised by the parent after replaying what came before
            error = exc
        return part.journal, part.tallies(), part.connections, error

    pool = _Pool(chunks, list(range(1, len(chunks))), reader, task, stop, items=True)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pool.start(jobs - 1)
        advisor = make_advisor()
        mine = Reader([], server_port=reader.server_port)
        try:
            advisor.add_items(mine.chunk_items(chunks[0]), stop)
        except NeedsWholeInput:
            return None
        finally:
            _add_stats(reader, mine.stats.records, mine.stats.skipped)
        if not pool.finish(jobs):
            return None
    finally:
        pool.close()
    for i in range(1, len(chunks)):
        part = pool.parts[i]
        _add_stats(reader, part.records, part.skipped)
        if part.payload is not None:
            journal, tallies, connections, error = part.payload
            advisor.replay(journal, tallies, connections)
            if error is not None:
                raise error
        if part.error is not None:
            raise part.error
    return advisor


def _add_stats(reader: Reader, records: int, skipped: dict[str, int]) -> None:
    stats = reader.stats
    stats.records += records
    for proto, n in skipped.items():
        stats.skipped[proto] = stats.skipped.get(proto, 0) + n


def _fork(index: int, chunk: Chunk, reader: Reader,
          task: Callable[[int, Iterable[Any]], Any], stop: Callable[[], bool],
          items: bool) -> _Worker:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        return _Worker(pid, index, read_end)
    # the worker: never returns
    os.close(read_end)
    code = 0
    try:
        mine = Reader([], server_port=reader.server_port)
        conns = _Guarded(mine.chunk_items(chunk) if items else mine.chunk(chunk))
        part = Part()
        result: tuple[str, Any]
        try:
            part.payload = task(index, conns)
            part.error = conns.error
        except NeedsWholeInput:
            part = None  # type: ignore[assignment]
        except KeyboardInterrupt:
            part.error = KeyboardInterrupt()
        except Exception as exc:  # the parent raises it where one CPU would have
            part.error = exc
        if part is not None:
            part.records, part.skipped = mine.stats.records, dict(mine.stats.skipped)
        result = ("ok", part) if part is not None else ("whole", None)
        try:
            payload = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:
            assert part is not None
            payload = pickle.dumps(("ok", Part(error=RunFailure(str(part.error)))))
        view = memoryview(payload)
        while view:
            view = view[os.write(write_end, view):]
    except BaseException:
        code = 1
    finally:
        os._exit(code)


class _Guarded:
    """A part's connections; a reading error ends them and is kept (the task's result so
    far still counts, as it would on one CPU), except one that needs the whole input."""

    def __init__(self, conns: Iterable[Any]) -> None:
        self.conns = conns
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self.conns
        except NeedsWholeInput:
            raise
        except Exception as exc:
            self.error = exc


def _result(worker: _Worker, status: int) -> Part | None:
    try:
        kind, part = pickle.loads(bytes(worker.data))
    except Exception:
        code = os.waitstatus_to_exitcode(status)
        return Part(error=RunFailure(f"a policy check worker ended with status {code}"))
    if kind == "whole":
        return None
    assert isinstance(part, Part)
    return part


def _copy(f: BinaryIO, out: TextIO) -> None:
    """``f`` from its start to ``out``: by ``sendfile`` (in the kernel, no copy through
    Python: to a file, a pipe, /dev/null) where ``out`` has a descriptor that takes it, else
    read and written."""
    out.flush()
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    sent = 0
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):  # StringIO in tests
        fd = -1
    if fd >= 0:
        try:
            while sent < size:
                n = os.sendfile(fd, f.fileno(), sent, min(size - sent, 1 << 30))
                if not n:
                    break
                sent += n
        except OSError as exc:
            # a descriptor sendfile does not write to (O_APPEND, a terminal): the usual way
            if sent or exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                                         errno.EBADF, errno.ESPIPE):
                raise
        if sent == size:
            return
    f.seek(sent)
    shutil.copyfileobj(f, out.buffer if hasattr(out, "buffer") else _Text(out), 1 << 20)


class _Text:
    """A text stream as a binary one (tests write to StringIO)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def write(self, data: bytes) -> int:
        return self.out.write(data.decode("utf-8"))

