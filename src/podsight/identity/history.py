"""Who held an address, a network namespace or a cgroup's container, and from when.

Why: an event is named when it is printed, and that can be long after it
happened (flows are harvested once per ``--interval``, a connect is reported
once its outcome is known). By then the pod that made it may be gone and a
new pod may hold its IP. So every source of identity keeps, beside the
current state it always had in its hot dicts, a short past: for each key that
changed while podsight watched, its holders and the CLOCK_BOOTTIME nanosecond
at which podsight learned of each change -- the clock of kernel event
timestamps (``bpf_ktime_get_boot_ns()``), so an event is named by the holder
at its own time.

Bounded: only keys that changed have a past, a key's past is forgotten
:data:`KEEP_NS` after its last change (an older event falls back to the
oldest holder still known), and it keeps at most :data:`PER_KEY` holders.
A cluster at rest costs nothing.

Every change is also put on the source's :class:`ChangeFeed` (a token such
as ``("ip", "10.0.0.7")``), which a resolver reads once per batch to drop
exactly the answers it memoised for those keys.

Ordering contract (the informer threads write while the event thread reads,
without a lock on the read path): a source calls :meth:`Timeline.changed`
*before* it updates its current state, and a reader reads the current state
*before* the past (:meth:`Timeline.held`). A reader then never pairs a new
current state with a past that lacks the change. The stamp, the past and the
feed token are written under the feed's lock, and :meth:`ChangeFeed.read`
takes its "now" under that lock, so a change stamped at or before that "now"
is always in what the read returns.
"""

from __future__ import annotations

import operator
import threading
import time
from bisect import bisect_right
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: How long a key's past is kept after its last change (five minutes: longer than any
#: flows interval or connect timeout an event can wait through before it is printed).
KEEP_NS = 300 * 1_000_000_000
#: At most this many holders per key (an IP that flaps keeps its latest ones).
PER_KEY = 16
#: Tokens a feed keeps for readers that fall behind (a resolver reads once per batch);
#: one further behind, after a relist say, drops everything it derived and starts over.
FEED_WINDOW = 1 << 13

#: What changed: (kind, key), e.g. ("ip", "10.0.0.7"), ("netns", 4026532001),
#: ("uid", pod UID), ("cid", container ID), ("pod", (namespace, name)).
Token = tuple[str, Hashable]

_SINCE = operator.itemgetter(0)


def boot_ns() -> int:
    """Now, on the clock of kernel event timestamps (CLOCK_BOOTTIME, nanoseconds)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


class ChangeFeed:
    """The keys a source changed, in order, for any number of readers to catch up with.

    Each reader keeps its own position (:meth:`read` returns the next one). The
    feed holds the last :data:`FEED_WINDOW` tokens; a reader further behind gets
    None and must drop everything it derived from the source.
    """

    def __init__(self, window: int = FEED_WINDOW) -> None:
        self.lock = threading.Lock()
        self._window = window
        self._tokens: list[Token] = []
        self._base = 0  # position of self._tokens[0]

    @property
    def position(self) -> int:
        """Where a new reader starts: after everything so far."""
        with self.lock:
            return self._base + len(self._tokens)

    def append(self, token: Token) -> None:
        """Add one token; the caller holds :attr:`lock` (it stamps the change under it)."""
        self._tokens.append(token)
        if len(self._tokens) > 2 * self._window:
            drop = len(self._tokens) - self._window
            del self._tokens[:drop]
            self._base += drop

    def note(self, token: Token) -> None:
        """Add one token for a change that has no past to record (a name, a label)."""
        with self.lock:
            self.append(token)

    def read(self, after: int) -> tuple[int, int, list[Token] | None]:
        """``(now, position, tokens since position after)``: every change stamped at or
        before ``now`` is in the tokens. Tokens are None when ``after`` fell out of the
        window."""
        with self.lock:
            now = boot_ns()
            end = self._base + len(self._tokens)
            start = after - self._base
            if start < 0:
                return now, end, None
            return now, end, self._tokens[start:]


class Timeline(Generic[K, V]):
    """The past holders of keys of one kind (the IPs of pods, say).

    A key's past is a tuple of ``(since_ns, holder)`` pairs, oldest first; the
    first one's ``since`` is 0 (from before podsight knew), the last one is the
    current holder. ``holder`` None means nobody held the key then. The tuple
    is replaced whole on every change, so readers need no lock.
    """

    def __init__(self, feed: ChangeFeed, kind: str, *, keep_ns: int = KEEP_NS,
                 per_key: int = PER_KEY) -> None:
        self.feed = feed
        self.kind = kind
        self.keep_ns = keep_ns
        self.per_key = max(2, per_key)
        #: False until the source's first full listing: an initial state has no past.
        self.recording = True
        self._past: dict[K, tuple[tuple[int, V | None], ...]] = {}
        self._last: dict[K, int] = {}  # key -> stamp of its latest change, oldest first

    def __len__(self) -> int:
        return len(self._past)

    def changed(self, key: K, old: V | None, new: V | None, *, same: bool = False,
                stamp: int | None = None) -> int:
        """``key`` is now held by ``new`` (it was ``old``); call it *before* updating the
        source's current state. ``same``: the same holder with new details (labels, a
        workload): its latest interval takes the new value, no new interval starts.

        ``stamp`` (boot ns) defaults to now; a past stays in order whatever it says.
        Returns the stamp recorded, 0 if none was.
        """
        feed = self.feed
        with feed.lock:
            feed.append((self.kind, key))
            past = self._past.get(key)
            if same or not self.recording:
                if past is not None:
                    self._past[key] = (*past[:-1], (past[-1][0], new))
                return 0
            now = boot_ns() if stamp is None else stamp
            if past is None:
                past = ((0, old),)
            elif now < past[-1][0]:
                now = past[-1][0]
            past = (*past, (now, new))
            if len(past) > self.per_key:
                kept = past[-self.per_key:]
                past = ((0, kept[0][1]), *kept[1:])
            self._past[key] = past
            self._last.pop(key, None)
            self._last[key] = now
            self._prune(now)
            return now

    def held(self, key: K, current: V | None, at_ns: int) -> tuple[int, V | None]:
        """``(since, holder)`` of ``key`` at ``at_ns``; ``current`` is the source's current
        holder, read by the caller *before* this call. ``since`` is when that holder's
        interval began (0: before anything podsight saw change)."""
        past = self._past.get(key)
        if past is None:
            return 0, current
        return past[max(0, bisect_right(past, at_ns, key=_SINCE) - 1)]

    def since(self, key: K) -> int:
        """When ``key`` last changed holder, 0 if not within the kept past."""
        past = self._past.get(key)
        return 0 if past is None else past[-1][0]

    def _prune(self, now: int) -> None:
        """Forget keys whose last change is older than ``keep_ns`` (oldest first, so this
        costs one look at the front per change)."""
        limit = now - self.keep_ns
        stale = []
        for key, last in self._last.items():
            if last >= limit:
                break
            stale.append(key)
        for key in stale:
            del self._last[key]
            self._past.pop(key, None)
