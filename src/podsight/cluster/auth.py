"""Who may use an agent: a bearer token checked by the API server.

The caller's token (gRPC metadata ``authorization: Bearer ...``) goes to a
``TokenReview``; the user it names must then be allowed, by a
``SubjectAccessReview``, the verb ``use`` on the resource ``agents`` of the API group
``podsight.io`` named after the node. No such resource exists: RBAC matches rules by
their strings, so a ClusterRole rule ``{apiGroups: [podsight.io], resources: [agents],
verbs: [use]}`` grants it, with ``resourceNames`` to grant some nodes only; and nobody
gets it by accident from a built-in role (``cluster-admin`` aside). Why not mTLS: the
cluster already knows every user and group, and ``kubectl`` already holds a token; a CA
for the agents would be one more secret to rotate.

Answers are cached for :data:`CACHE_SECONDS` per token (allowed and refused alike), as
the API server's own webhook authenticator does, so a client reconnecting does not
cost two API calls each time.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from podsight.identity.kube.config import KubeConfig

CACHE_SECONDS = 10.0
GROUP, RESOURCE, VERB = "podsight.io", "agents", "use"


class Refused(Exception):
    """The caller may not use the agent; ``unauthenticated`` tells 401 from 403."""

    def __init__(self, message: str, *, unauthenticated: bool) -> None:
        super().__init__(message)
        self.unauthenticated = unauthenticated


class Authorizer(Protocol):
    def check(self, authorization: str | None) -> str:
        """The caller's user name, or raise :class:`Refused`."""


class NoAuth:
    """``--auth none``: anyone who can connect (loopback only: tests, simulated nodes)."""

    def check(self, authorization: str | None) -> str:
        return "anonymous"


@dataclass
class _Answer:
    user: str
    refused: Refused | None
    until: float


class KubernetesAuth:
    """TokenReview + SubjectAccessReview against the API server of ``config``."""

    def __init__(self, config: KubeConfig, node: str, timeout: float = 10.0) -> None:
        self.config = config
        self.node = node
        self.timeout = timeout
        self._cache: dict[str, _Answer] = {}
        self._lock = threading.Lock()

    def check(self, authorization: str | None) -> str:
        token = _bearer(authorization)
        now = time.monotonic()
        with self._lock:
            answer = self._cache.get(token)
        if answer is None or answer.until < now:
            answer = self._ask(token, now)
            with self._lock:
                if len(self._cache) > 1024:
                    self._cache.clear()
                self._cache[token] = answer
        if answer.refused is not None:
            raise answer.refused
        return answer.user

    def _ask(self, token: str, now: float) -> _Answer:
        until = now + CACHE_SECONDS
        review = self._post("/apis/authentication.k8s.io/v1/tokenreviews", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token}})
        status = review.get("status", {})
        if not status.get("authenticated"):
            why = status.get("error") or "the API server did not accept the token"
            return _Answer("", Refused(f"unauthenticated: {why}", unauthenticated=True), until)
        user = status.get("user", {})
        name = str(user.get("username", ""))
        spec: dict[str, Any] = {
            "user": name, "groups": user.get("groups", []),
            "resourceAttributes": {"group": GROUP, "resource": RESOURCE, "verb": VERB,
                                   "name": self.node}}
        if user.get("uid"):
            spec["uid"] = user["uid"]
        if user.get("extra"):
            spec["extra"] = user["extra"]
        sar = self._post("/apis/authorization.k8s.io/v1/subjectaccessreviews", {
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": spec})
        if not sar.get("status", {}).get("allowed"):
            return _Answer(name, Refused(
                f"forbidden: {name} may not {VERB} {RESOURCE}.{GROUP} {self.node!r} (grant it "
                f"with a ClusterRole rule apiGroups [{GROUP}], resources [{RESOURCE}], "
                f"verbs [{VERB}])", unauthenticated=False), until)
        return _Answer(name, None, until)

    def probe(self) -> None:
        """At start: can the agent's own credentials create TokenReviews? (readiness)."""
        self._post("/apis/authentication.k8s.io/v1/tokenreviews", {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": "podsight-readiness-probe"}})

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        from podsight.identity.kube.api import KubeAPIError, status_message

        cfg = self.config
        conn: http.client.HTTPConnection
        if cfg.scheme == "https":
            conn = http.client.HTTPSConnection(cfg.host, cfg.port, timeout=self.timeout,
                                               context=cfg.ssl_context())
        else:
            conn = http.client.HTTPConnection(cfg.host, cfg.port, timeout=self.timeout)
        try:
            conn.request("POST", cfg.path_prefix + path, body=json.dumps(body).encode(),
                         headers={"Content-Type": "application/json",
                                  "Accept": "application/json", **cfg.headers()})
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise KubeAPIError(f"the Kubernetes API at {cfg.server} is unreachable: "
                               f"{exc}") from None
        finally:
            conn.close()
        if resp.status not in (200, 201):
            what = path.rsplit("/", 1)[-1]
            raise KubeAPIError(f"the Kubernetes API at {cfg.server} refused to create {what} "
                               f"({resp.status}): {status_message(data) or resp.reason}",
                               resp.status, resp.reason)
        out: dict[str, Any] = json.loads(data)
        return out


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Refused("unauthenticated: no bearer token (metadata 'authorization: Bearer "
                      "...')", unauthenticated=True)
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Refused("unauthenticated: the authorization metadata is not 'Bearer TOKEN'",
                      unauthenticated=True)
    return token
