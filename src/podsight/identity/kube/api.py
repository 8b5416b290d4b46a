"""A small raw-JSON client for list and watch, built so another thread can cut it off.

Why not the official client's ``ApiClient``: it hides the socket, so a thread
blocked in a watch read cannot be woken, and ``close()`` could not promise to
return within a second. Here each request owns its socket from the first
``connect()``; :meth:`Call.cancel` shuts it down from any thread, which makes
every blocking step (connect, TLS handshake, waiting for headers, reading a
watch stream) return at once. Bodies are returned as bytes for the caller to
``json.loads``: the 40k-pod hot path never builds model objects.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import select
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlencode

from podsight.errors import UserError
from podsight.identity.kube.config import KubeConfig

USER_AGENT = "podsight/0.1"
CONNECT_TIMEOUT = 10.0
JSON = "application/json"


class KubeAPIError(UserError):
    """The API answered with an error status; ``retryable`` says if waiting may help."""

    def __init__(self, message: str, status: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason

    @property
    def retryable(self) -> bool:
        return self.status == 0 or self.status == 429 or self.status >= 500

    @property
    def permanent(self) -> bool:
        """Errors only the user can fix (credentials, RBAC, missing API)."""
        return self.status in (401, 403, 404)


class Unreachable(KubeAPIError):
    """No HTTP answer at all: refused, timed out, TLS failure, connection dropped."""


class Gone(Exception):
    """410 Gone: the resourceVersion was compacted away; the caller must relist."""


class Cancelled(Exception):
    """The call was cancelled from another thread (shutdown)."""


class Call:
    """One in-flight request; :meth:`cancel` may be called from any thread, at any time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.cancelled = False

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.cancelled:
                _shutdown(sock)
        self.check()

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._sock is not None:
                _shutdown(self._sock)


def _shutdown(sock: socket.socket) -> None:
    """Wake a thread blocked on ``sock`` without closing the fd under it.

    The base-class method is called even for an ``SSLSocket``: its own
    ``shutdown`` drops the TLS object, which would race the reading thread.
    """
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Response:
    """A successful response; iterate lines (watch) or read the whole body (list)."""

    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse,
                 call: Call) -> None:
        self._conn = conn
        self._resp = resp
        self._call = call

    def read_body(self) -> bytes:
        try:
            body = self._resp.read()
        except (OSError, http.client.HTTPException) as exc:
            self._call.check()
            raise Unreachable(f"connection to the Kubernetes API dropped: {_why(exc)}") from None
        if self._resp.getheader("Content-Encoding", "") == "gzip":
            body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
        return body

    def lines(self) -> Iterator[bytes]:
        """Newline-delimited watch events, as the server sends them, without the newline."""
        buf = b""
        read1 = self._resp.read1
        while True:
            try:
                chunk = read1(65536)
            except (OSError, http.client.HTTPException) as exc:
                self._call.check()
                raise Unreachable(f"watch connection dropped: {_why(exc)}") from None
            if not chunk:
                self._call.check()
                if buf.strip():
                    yield buf
                return
            buf += chunk
            if b"\n" not in chunk:
                continue
            *complete, buf = buf.split(b"\n")
            for line in complete:
                if line:
                    yield line

    def close(self) -> None:
        try:
            self._resp.close()
        finally:
            self._conn.close()


class KubeAPI:
    """Opens list and watch requests against one API server."""

    def __init__(self, config: KubeConfig, *, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.config = config
        self.connect_timeout = connect_timeout
        self._ssl: ssl.SSLContext | None = None

    def open(
        self,
        path: str,
        params: Mapping[str, str | int] | None = None,
        *,
        call: Call,
        verb: str,
        resource: str,
        accept: str = JSON,
        read_timeout: float = 60.0,
        gzip: bool = False,
    ) -> Response:
        """GET ``path``; raise :class:`Gone` on 410 and a one-line error otherwise.

        ``verb`` and ``resource`` only name the request in error messages
        ("forbidden to watch replicasets"), which is what a user needs to fix RBAC.
        """
        cfg = self.config
        url = cfg.path_prefix + path + ("?" + urlencode(params) if params else "")
        headers = {"Accept": accept, "User-Agent": USER_AGENT, **cfg.headers()}
        if gzip:
            headers["Accept-Encoding"] = "gzip"
        sock = self._connect(call, read_timeout)
        conn = http.client.HTTPConnection(cfg.host, cfg.port, timeout=read_timeout)
        conn.sock = sock
        try:
            conn.request("GET", url, headers=headers)
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            call.check()
            raise Unreachable(self._unreachable(exc)) from None
        if resp.status == 200:
            return Response(conn, resp, call)
        try:
            body = resp.read()
        except (OSError, http.client.HTTPException):
            body = b""
        finally:
            conn.close()
        call.check()
        if resp.status == 410:
            raise Gone(status_message(body) or "410 Gone")
        raise self.status_error(resp.status, resp.reason, body, verb, resource)

    def status_error(self, status: int, reason: str, body: bytes | dict[str, Any], verb: str,
                     resource: str) -> KubeAPIError:
        """Turn an error status into the one sentence the user needs."""
        server = self.config.server
        message = status_message(body)
        if status == 401:
            text = (f"the Kubernetes API at {server} rejected the credentials from "
                    f"{self.config.source} (401 Unauthorized) to {verb} {resource}")
        elif status == 403:
            text = f"the Kubernetes API at {server} forbids {verb} {resource} (403)"
            if message:
                text += f": {message}"
        elif status == 404:
            text = f"the Kubernetes API at {server} has no {resource} (404 Not Found for {verb})"
        else:
            text = f"the Kubernetes API at {server} failed to {verb} {resource}: {status} {reason}"
            if message:
                text += f": {message}"
        return KubeAPIError(" ".join(text.split()), status, reason)

    def _connect(self, call: Call, read_timeout: float) -> socket.socket:
        """TCP connect (polled so cancel works) and TLS handshake on a socket ``call`` owns."""
        cfg = self.config
        try:
            infos = socket.getaddrinfo(cfg.host, cfg.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise Unreachable(self._unreachable(exc)) from None
        last: OSError = OSError(errno.ECONNREFUSED, "connection refused")
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                call.attach(sock)
                self._tcp_connect(sock, addr, call)
                break
            except OSError as exc:
                sock.close()
                call.check()
                last = exc
            except BaseException:
                sock.close()
                raise
        else:
            raise Unreachable(self._unreachable(last))
        if cfg.scheme != "https":
            sock.settimeout(read_timeout)
            return sock
        try:
            if self._ssl is None:
                self._ssl = cfg.ssl_context()
            sock.settimeout(self.connect_timeout)
            tls = self._ssl.wrap_socket(sock, server_hostname=cfg.tls_server_name or cfg.host,
                                        do_handshake_on_connect=False)
            call.attach(tls)
            tls.do_handshake()
            tls.settimeout(read_timeout)
            return tls
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            call.check()
            raise Unreachable(self._unreachable(exc)) from None
        except BaseException:
            sock.close()
            raise

    def _tcp_connect(self, sock: socket.socket, addr: Any, call: Call) -> None:
        sock.setblocking(False)
        err = sock.connect_ex(addr)
        deadline = time.monotonic() + self.connect_timeout
        while err in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
            call.check()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(errno.ETIMEDOUT, "connect timed out")
            _, writable, _ = select.select([], [sock], [], min(left, 0.1))
            if writable:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, _strerror(err))
        sock.setblocking(True)

    def _unreachable(self, exc: BaseException) -> str:
        return f"cannot reach the Kubernetes API at {self.config.server}: {_why(exc)}"


def status_message(body: bytes | dict[str, Any]) -> str:
    """The ``message`` of a Kubernetes ``Status`` body, if there is one."""
    try:
        status = body if isinstance(body, dict) else json.loads(body)
    except ValueError:
        return ""
    if isinstance(status, dict):
        return " ".join(str(status.get("message", "")).split())
    return ""


def _why(exc: BaseException) -> str:
    """'connection refused', 'timed out', ...: the words a user recognises."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host ({exc.strerror})"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.errno is not None:
        return _strerror(exc.errno)
    if isinstance(exc, http.client.RemoteDisconnected | http.client.IncompleteRead):
        return "the server closed the connection"
    return " ".join(str(exc).split()) or type(exc).__name__


def _strerror(code: int) -> str:
    import os

    return os.strerror(code).lower()
