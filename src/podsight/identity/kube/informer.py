"""List-then-watch loops that keep a local copy of one resource current.

The same semantics as client-go's reflector, which every Kubernetes
controller relies on, because anything weaker loses events in ways that show
up as wrong names on the wire:

- list (paginated, consistent read), then watch from the list's
  resourceVersion with bookmarks, so a reconnect resumes where it stopped;
- 410 Gone, as an HTTP status or as an ERROR event inside the stream, means
  the resourceVersion was compacted away: relist, and let the sink's
  ``replace`` drop objects that vanished meanwhile;
- any other failure: record it (health), back off exponentially with jitter
  up to a cap, and resume the watch from the last resourceVersion seen.

Losing the API after the first sync, and getting it back, is reported once
each through ``on_health`` (not per retry): the cache turns it into one line
for the user, since names then come from a cache that may go stale.

One daemon thread per resource keeps each loop a plain sequence of blocking
calls. ``close()`` cancels the in-flight request, whose socket it owns, so
threads end within milliseconds instead of at the next server timeout.

The informer keeps no objects itself: it hands decoded records to a
:class:`Sink` (the cache), so each pod is stored once.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from podsight.errors import UserError
from podsight.identity.kube.api import JSON, Call, Cancelled, Gone, KubeAPI, KubeAPIError
from podsight.identity.kube.objects import Key, Raw, key_of

R = TypeVar("R")

PAGE_SIZE = 500
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
METADATA_ITEM = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


@dataclass(frozen=True)
class Resource:
    """Which collection to follow, and how much of each object is needed."""

    plural: str  # "pods"; also the RBAC resource name shown in errors
    group_version: str = "v1"  # "v1", "apps/v1", "batch/v1"
    metadata_only: bool = False  # PartialObjectMetadata: ownerReferences without the spec
    required: bool = True  # if forbidden, fail (True) or run degraded (False)

    @property
    def path(self) -> str:
        base = "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"
        return f"{base}/{self.plural}"

    @property
    def display(self) -> str:
        group = self.group_version.rpartition("/")[0]
        return f"{self.plural}.{group}" if group else self.plural


@dataclass(frozen=True)
class Sink(Generic[R]):
    """Where decoded objects go. ``replace`` gets the full set after every (re)list."""

    decode: Callable[[Raw], R]
    replace: Callable[[dict[Key, R]], None]
    upsert: Callable[[Key, R], None]
    delete: Callable[[Key], None]


@dataclass(frozen=True)
class InformerHealth:
    """A snapshot for ``podsight`` status output and for tests."""

    resource: str
    synced: bool
    connected: bool
    resource_version: str
    lists: int  # successful (re)lists, including the first
    relists_on_gone: int  # how many of them a 410 forced
    events: int
    errors: int  # failed lists and watches, each retry counted
    last_error: str | None
    last_error_age: float | None  # seconds since last_error, None if never
    degraded: bool  # an optional resource we are not allowed to read


class Informer(Generic[R]):
    """Follows one resource and feeds a :class:`Sink`; see the module docstring."""

    def __init__(
        self,
        resource: Resource,
        sink: Sink[R],
        api: KubeAPI | None = None,
        *,
        watch_timeout: float = 300.0,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        page_size: int = PAGE_SIZE,
        on_state: Callable[[], None] | None = None,
        on_health: Callable[[Informer[R], UserError | None], None] | None = None,
    ) -> None:
        self.resource = resource
        self._sink = sink
        self._api = api
        self._watch_timeout = watch_timeout
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._page_size = page_size
        self._on_state = on_state or (lambda: None)
        self._on_health = on_health or (lambda informer, error: None)
        self._failing = False  # lost the API after syncing, not watching again yet
        self._stop = threading.Event()
        self._synced = threading.Event()
        self._thread: threading.Thread | None = None
        self._call_lock = threading.Lock()
        self._call: Call | None = None
        self.resource_version = ""
        self.connected = False
        self.degraded = False
        self.lists = 0
        self.relists_on_gone = 0
        self.events = 0
        self.errors = 0
        self.last_error: UserError | None = None
        self._last_error_at: float | None = None
        self.error_before_sync: UserError | None = None

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self._api is None:
            raise RuntimeError("Informer.start() needs an API client")
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name=f"podsight-informer-{self.resource.plural}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to end and cut its request; :meth:`join` waits for it."""
        self._stop.set()
        with self._call_lock:
            if self._call is not None:
                self._call.cancel()

    def join(self, timeout: float) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def close(self, timeout: float = 1.0) -> None:
        self.stop()
        self.join(timeout)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def wait_synced(self, timeout: float) -> bool:
        return self._synced.wait(timeout)

    def health(self) -> InformerHealth:
        err_at = self._last_error_at
        return InformerHealth(
            resource=self.resource.display,
            synced=self.synced,
            connected=self.connected,
            resource_version=self.resource_version,
            lists=self.lists,
            relists_on_gone=self.relists_on_gone,
            events=self.events,
            errors=self.errors,
            last_error=str(self.last_error) if self.last_error else None,
            last_error_age=None if err_at is None else time.monotonic() - err_at,
            degraded=self.degraded,
        )

    # ------------------------------------------------ the paths the loop takes
    # (public so the benchmark and tests drive exactly the code the thread runs)
    def apply_list_page(self, body: bytes | Raw, into: dict[Key, R]) -> tuple[str, str]:
        """Decode one List page into ``into``; return (resourceVersion, continue token)."""
        doc = json.loads(body) if isinstance(body, bytes | bytearray | str) else body
        decode = self._sink.decode
        for item in doc.get("items") or ():
            into[key_of(item)] = decode(item)
        meta = doc.get("metadata") or {}
        return str(meta.get("resourceVersion", "")), str(meta.get("continue", "") or "")

    def apply_list(self, items: dict[Key, R], resource_version: str) -> None:
        """Install a complete listing: the sink drops whatever is not in it."""
        self._sink.replace(items)
        self.resource_version = resource_version
        self.lists += 1
        self._synced.set()
        self._on_state()

    def apply_list_body(self, body: bytes | Raw) -> str:
        """One-page convenience (tests, benchmark): decode and install a full List."""
        items: dict[Key, R] = {}
        rv, _ = self.apply_list_page(body, items)
        self.apply_list(items, rv)
        return rv

    def apply_watch_line(self, line: bytes | str) -> None:
        """Apply one watch event; raise :class:`Gone` for a 410 ERROR event."""
        event = json.loads(line)
        self.apply_watch_event(event)

    def apply_watch_event(self, event: Raw) -> None:
        kind = event.get("type")
        obj: Raw = event.get("object") or {}
        if kind == "ERROR":
            code = int(obj.get("code") or 0)
            if code == 410:
                raise Gone(str(obj.get("message", "410 Gone")))
            if self._api is None:
                raise KubeAPIError(f"watch {self.resource.display}: {obj.get('message')}", code)
            raise self._api.status_error(code, str(obj.get("reason", "")), dict(obj), "watch",
                                         self.resource.display)
        md = obj.get("metadata") or {}
        if kind in ("ADDED", "MODIFIED"):
            self._sink.upsert(key_of(obj), self._sink.decode(obj))
        elif kind == "DELETED":
            self._sink.delete(key_of(obj))
        elif kind != "BOOKMARK":
            raise ValueError(f"unknown watch event type {kind!r}")
        rv = md.get("resourceVersion")
        if rv:
            self.resource_version = str(rv)
        self.events += 1

    # ------------------------------------------------------------------ loop
    def _run(self) -> None:
        backoff = self._initial_backoff
        need_list = True
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if need_list:
                    self._list()
                    need_list = False
                    backoff = self._initial_backoff
                got_events = self._watch()
                # a watch that ends at once with nothing in it (a proxy closing
                # idle streams, say) must not turn into a busy loop
                if not got_events and time.monotonic() - started < 1.0:
                    self._stop.wait(self._jitter(backoff))
                    backoff = min(backoff * 2, self._max_backoff)
                else:
                    backoff = self._initial_backoff
            except Cancelled:
                break
            except Gone:
                need_list = True
                self.relists_on_gone += 1
                if time.monotonic() - started < 1.0:  # Gone right after a list: do not spin
                    self._stop.wait(self._jitter(backoff))
                    backoff = min(backoff * 2, self._max_backoff)
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._record_error(exc)
                self._stop.wait(self._jitter(backoff))
                backoff = min(backoff * 2, self._max_backoff)

    def _jitter(self, backoff: float) -> float:
        return backoff * random.uniform(0.8, 1.2)

    def _record_error(self, exc: Exception) -> None:
        err = exc if isinstance(exc, UserError) else UserError(
            f"{self.resource.display}: {type(exc).__name__}: {' '.join(str(exc).split())}"
        )
        self.last_error = err
        self._last_error_at = time.monotonic()
        self.errors += 1
        if self.synced and not self.degraded and not self._failing:
            self._failing = True
            self._on_health(self, err)
        if isinstance(err, KubeAPIError) and err.status in (403, 404) \
                and not self.resource.required and not self.synced:
            # e.g. RBAC allows pods but not replicasets: run without workload
            # names rather than not at all; keep retrying in the background
            self.degraded = True
            self._sink.replace({})
            self._synced.set()
        transient = isinstance(err, KubeAPIError) and (err.status == 429 or err.status >= 500)
        if not self.synced and not transient:
            # what wait_synced(fail_fast=True) raises at once; an overloaded or
            # starting server (429, 5xx) gets the timeout to recover instead
            self.error_before_sync = err
        self._on_state()

    def _begin(self) -> Call:
        call = Call()
        with self._call_lock:
            if self._stop.is_set():
                raise Cancelled
            self._call = call
        return call

    def _end(self) -> None:
        with self._call_lock:
            self._call = None

    def _list(self) -> None:
        assert self._api is not None
        res = self.resource
        accept = METADATA_LIST if res.metadata_only else JSON
        items: dict[Key, R] = {}
        params: dict[str, str | int] = {"limit": self._page_size}
        rv = ""
        while True:
            call = self._begin()
            try:
                resp = self._api.open(res.path, params, call=call, verb="list",
                                      resource=res.display, accept=accept, gzip=True)
                try:
                    body = resp.read_body()
                finally:
                    resp.close()
            except Gone:
                if "continue" not in params:
                    raise
                # the continue token expired (compaction mid-list): one full list
                items.clear()
                params = {}
                continue
            finally:
                self._end()
            rv, cont = self.apply_list_page(body, items)
            del body
            if not cont:
                break
            params = {"limit": self._page_size, "continue": cont}
        self.degraded = False
        self.apply_list(items, rv)

    def _watch(self) -> bool:
        """Follow the watch until the server ends it; True if any event arrived."""
        assert self._api is not None
        res = self.resource
        timeout = max(1, int(self._watch_timeout * random.uniform(1.0, 1.2)))
        params: dict[str, str | int] = {
            "watch": 1,
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout,
        }
        accept = METADATA_ITEM if res.metadata_only else JSON
        call = self._begin()
        got = False
        try:
            resp = self._api.open(res.path, params, call=call, verb="watch",
                                  resource=res.display, accept=accept, read_timeout=timeout + 30)
            try:
                self.connected = True
                if self._failing:
                    self._failing = False
                    self._on_health(self, None)
                if self.last_error is not None:
                    self._on_state()
                for line in resp.lines():
                    self.apply_watch_line(line)
                    got = True
            finally:
                self.connected = False  # before any backoff sleep: health must not lie
                resp.close()
        finally:
            self._end()
        return got


def describe(informers: list[Informer[Any]]) -> str:
    """One line per informer, for debugging output."""
    out = []
    for inf in informers:
        h = inf.health()
        state = "synced" if h.synced else "syncing"
        if h.degraded:
            state = "degraded"
        out.append(f"{h.resource}: {state} rv={h.resource_version} events={h.events} "
                   f"lists={h.lists} error={h.last_error or '-'}")
    return "\n".join(out)
