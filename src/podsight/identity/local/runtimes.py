"""Container runtimes on this host, asked what runs: docker, podman, containerd.

Like Inspektor Gadget's container collection: each runtime is asked over its
local socket for its running containers, and each container's init pid gives its
network namespace and cgroup from /proc. The cgroup path already names the
container (see cgroups.py); the runtime adds what only it knows: names, images and
the Kubernetes labels kubelet's CRI puts on every container
(``io.kubernetes.pod.name`` and friends), which name a pod even with no API server.

Runtimes are polled in the background (``list_containers`` costs a few requests
per runtime), never per event. A runtime whose socket is missing is simply not
installed; one whose socket does not answer is reported as a warning in the
listing, never raised: identity must not stop a trace because dockerd hangs.
"""

from __future__ import annotations

import enum
import http.client
import json
import os
import socket
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import quote

from podsight.identity.local.processes import read_cgroup_path, read_ns

if TYPE_CHECKING:
    import grpc
    from google.protobuf.message import Message

# Labels kubelet (through CRI: containerd, cri-dockerd, CRI-O) sets on every container.
POD_NAME_LABEL = "io.kubernetes.pod.name"
POD_NAMESPACE_LABEL = "io.kubernetes.pod.namespace"
POD_UID_LABEL = "io.kubernetes.pod.uid"
CONTAINER_NAME_LABEL = "io.kubernetes.container.name"
# Pod sandboxes ("pause" containers) hold the pod's namespaces and run no workload.
SANDBOX_LABELS = {"io.cri-containerd.kind": "sandbox", "io.kubernetes.docker.type": "podsandbox"}

DOCKER_SOCKET = "/var/run/docker.sock"
PODMAN_SOCKET = "/run/podman/podman.sock"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"


@dataclass(frozen=True)
class ContainerInfo:
    """One running container as its runtime and /proc describe it.

    ``name`` is the Kubernetes container name when kubelet labelled the container,
    else the runtime's own name (docker/podman name, nerdctl name), else the ID.
    ``namespace`` is the runtime's namespace (containerd: ``k8s.io``, ``moby``, ...),
    not the pod's. ``pid`` is the container's init process on the host, 0 if the
    runtime did not say (a container built from a cgroup path alone).
    """

    runtime: str
    id: str
    name: str
    pid: int
    netns: int = 0
    pod_namespace: str = ""
    pod_name: str = ""
    pod_uid: str = ""
    image: str = ""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False, compare=False)
    cgroup_path: str = ""
    namespace: str = ""
    sandbox: bool = False

    @property
    def in_pod(self) -> bool:
        return bool(self.pod_uid or self.pod_name)


class RuntimeState(enum.StrEnum):
    OK = "ok"
    ABSENT = "absent"  # no socket: the runtime is not installed or not running
    UNREACHABLE = "unreachable"  # a socket that refuses, times out or talks nonsense


@dataclass(frozen=True)
class RuntimeListing:
    """What one poll of one runtime found; ``warning`` says why a listing is partial or empty."""

    runtime: str
    endpoint: str
    state: RuntimeState
    containers: tuple[ContainerInfo, ...] = ()
    warning: str = ""


class RuntimeClient(Protocol):
    """Anything that can list a runtime's running containers."""

    runtime: str
    endpoint: str

    def list_containers(self) -> RuntimeListing: ...

    def close(self) -> None: ...


def socket_present(path: str) -> bool:
    """A unix socket exists at ``path`` (a stale file from a dead daemon still counts)."""
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def container_info(
    runtime: str,
    container_id: str,
    pid: int,
    labels: Mapping[str, str],
    *,
    name: str = "",
    image: str = "",
    namespace: str = "",
) -> ContainerInfo:
    """A ContainerInfo from what a runtime said, completed from /proc for its init pid."""
    labels = dict(labels)
    return ContainerInfo(
        runtime=runtime,
        id=container_id,
        name=labels.get(CONTAINER_NAME_LABEL) or name or container_id,
        pid=pid,
        netns=read_ns(pid, "net") if pid > 0 else 0,
        pod_namespace=labels.get(POD_NAMESPACE_LABEL, ""),
        pod_name=labels.get(POD_NAME_LABEL, ""),
        pod_uid=labels.get(POD_UID_LABEL, ""),
        image=image,
        labels=labels,
        cgroup_path=read_cgroup_path(pid) if pid > 0 else "",
        namespace=namespace,
        sandbox=any(labels.get(k) == v for k, v in SANDBOX_LABELS.items()),
    )


# --- docker and podman: the Docker Engine HTTP API on a unix socket ----------------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket: http.client does the protocol, we only connect."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ApiError(Exception):
    """The runtime answered, but not with what we asked for."""


class DockerClient:
    """Docker's Engine API, which podman also serves (its compat API) on its own socket.

    Lists running containers (``GET /containers/json``), then inspects each for its
    init pid, which the list does not carry.
    """

    def __init__(
        self, socket_path: str = DOCKER_SOCKET, *, runtime: str = "docker", timeout: float = 2.0
    ) -> None:
        self.runtime = runtime
        self.endpoint = socket_path
        self.timeout = timeout

    def list_containers(self) -> RuntimeListing:
        if not socket_present(self.endpoint):
            return RuntimeListing(self.runtime, self.endpoint, RuntimeState.ABSENT)
        conn = _UnixHTTPConnection(self.endpoint, self.timeout)
        try:
            summaries = self._get(conn, "/containers/json")
            if not isinstance(summaries, list):
                raise ApiError("GET /containers/json: not a list")
            containers = []
            for summary in summaries:
                info = self._inspect(conn, summary)
                if info is not None:
                    containers.append(info)
        except (OSError, http.client.HTTPException, ApiError, ValueError, TypeError,
                AttributeError) as e:  # the last three: JSON of an unexpected shape
            return RuntimeListing(
                self.runtime, self.endpoint, RuntimeState.UNREACHABLE,
                warning=f"{self.runtime} at {self.endpoint}: {_describe(e)}",
            )
        finally:
            conn.close()
        return RuntimeListing(self.runtime, self.endpoint, RuntimeState.OK, tuple(containers))

    def _inspect(
        self, conn: _UnixHTTPConnection, summary: Mapping[str, Any]
    ) -> ContainerInfo | None:
        container_id = str(summary.get("Id", ""))
        if not container_id:
            return None
        try:
            detail = self._get(conn, f"/containers/{quote(container_id)}/json")
        except ApiError:  # removed between list and inspect
            return None
        state = detail.get("State") or {}
        pid = int(state.get("Pid") or 0)
        if not state.get("Running", pid > 0):
            return None
        config = detail.get("Config") or {}
        labels = config.get("Labels") or summary.get("Labels") or {}
        name = str(detail.get("Name") or _first(summary.get("Names"))).lstrip("/")
        image = str(config.get("Image") or summary.get("Image") or "")
        return container_info(
            self.runtime, container_id, pid, {str(k): str(v) for k, v in labels.items()},
            name=name, image=image,
        )

    def _get(self, conn: _UnixHTTPConnection, path: str) -> Any:
        conn.request("GET", path, headers={"Accept": "application/json"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            message = body.decode("utf-8", "replace").strip()[:200]
            raise ApiError(f"GET {path}: HTTP {response.status} {message}")
        return json.loads(body)

    def close(self) -> None:
        """Nothing held between polls: each listing opens and closes one connection."""


class PodmanClient(DockerClient):
    """Podman's service (``podman system service``) through its Docker-compatible API."""

    def __init__(self, socket_path: str = PODMAN_SOCKET, *, timeout: float = 2.0) -> None:
        super().__init__(socket_path, runtime="podman", timeout=timeout)


def _first(value: object) -> str:
    if isinstance(value, list) and value:
        return str(value[0])
    return ""


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "no answer (timed out)"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (daemon not running?)"
    if isinstance(error, PermissionError):
        return "permission denied"
    return f"{type(error).__name__}: {error}"


# --- containerd: its gRPC API ---------------------------------------------------------

_Response = TypeVar("_Response", bound="Message")

# The four calls podsight makes (tests check them against containerd's own .proto files).
VERSION_METHOD = "/containerd.services.version.v1.Version/Version"
NAMESPACES_METHOD = "/containerd.services.namespaces.v1.Namespaces/List"
CONTAINERS_METHOD = "/containerd.services.containers.v1.Containers/List"
TASKS_METHOD = "/containerd.services.tasks.v1.Tasks/List"


class ContainerdClient:
    """containerd's own gRPC API (the one ``ctr`` and nerdctl use), in every namespace.

    Kubernetes' containers live in the ``k8s.io`` namespace, docker's in ``moby``;
    listing all namespaces finds both and anything run with ``ctr`` or nerdctl.
    A container's pid comes from its task; containers without a running task are
    left out. The channel is kept between polls and reconnects by itself.
    """

    runtime = "containerd"

    def __init__(
        self,
        socket_path: str = CONTAINERD_SOCKET,
        *,
        timeout: float = 2.0,
        namespaces: Iterable[str] | None = None,
    ) -> None:
        self.endpoint = socket_path
        self.timeout = timeout
        self._namespaces = tuple(namespaces) if namespaces is not None else None
        self._channel: grpc.Channel | None = None

    def _call(
        self, method: str, request: Message, response_type: type[_Response], namespace: str = ""
    ) -> _Response:
        """One unary call; the namespace travels as gRPC metadata, as containerd expects."""
        import grpc

        if self._channel is None:
            self._channel = grpc.insecure_channel(f"unix://{self.endpoint}")
        stub: grpc.UnaryUnaryMultiCallable[Message, _Response] = self._channel.unary_unary(
            method,
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=response_type.FromString,
        )
        metadata = (("containerd-namespace", namespace),) if namespace else None
        return stub(request, timeout=self.timeout, metadata=metadata)

    def version(self) -> tuple[str, str]:
        """(version, revision) of the daemon: the cheapest call that proves it answers."""
        from google.protobuf import empty_pb2

        from podsight.identity.local import containerd_api_pb2 as api

        reply = self._call(VERSION_METHOD, empty_pb2.Empty(), api.VersionResponse)
        return reply.version, reply.revision

    def namespaces(self) -> list[str]:
        """containerd namespaces (``k8s.io``, ``moby``, ``default``, ...)."""
        from podsight.identity.local import containerd_api_pb2 as api

        reply = self._call(
            NAMESPACES_METHOD, api.ListNamespacesRequest(), api.ListNamespacesResponse
        )
        return [ns.name for ns in reply.namespaces]

    def tasks(self, namespace: str) -> dict[str, int]:
        """container id -> pid of the running (or paused) task, in one namespace."""
        from podsight.identity.local import containerd_api_pb2 as api

        reply = self._call(
            TASKS_METHOD, api.ListTasksRequest(), api.ListTasksResponse, namespace
        )
        live = (api.RUNNING, api.PAUSED, api.PAUSING)
        # A task's id is its container's id; containerd 1.x leaves container_id empty.
        return {
            t.container_id or t.id: t.pid for t in reply.tasks if t.status in live and t.pid > 0
        }

    def list_containers(self) -> RuntimeListing:
        if not socket_present(self.endpoint):
            return RuntimeListing(self.runtime, self.endpoint, RuntimeState.ABSENT)
        import grpc

        from podsight.identity.local import containerd_api_pb2 as api

        try:
            namespaces = self._namespaces or self.namespaces()
            found: list[ContainerInfo] = []
            for namespace in namespaces:
                pids = self.tasks(namespace)
                if not pids:
                    continue
                reply = self._call(
                    CONTAINERS_METHOD,
                    api.ListContainersRequest(), api.ListContainersResponse, namespace,
                )
                for c in reply.containers:
                    pid = pids.get(c.id, 0)
                    if pid:
                        nerdctl_name = c.labels.get("nerdctl/name", "")
                        found.append(container_info(
                            self.runtime, c.id, pid, c.labels, name=nerdctl_name,
                            image=c.image, namespace=namespace,
                        ))
        except grpc.RpcError as e:
            return RuntimeListing(
                self.runtime, self.endpoint, RuntimeState.UNREACHABLE,
                warning=f"containerd at {self.endpoint}: {_describe_rpc(e)}",
            )
        return RuntimeListing(self.runtime, self.endpoint, RuntimeState.OK, tuple(found))

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def _describe_rpc(error: grpc.RpcError) -> str:
    """RpcErrors raised by calls are also grpc.Call, which has code() and details()."""
    code = getattr(error, "code", None)
    details = getattr(error, "details", None)
    name = str(getattr(code(), "name", "ERROR")) if callable(code) else "ERROR"
    if name == "DEADLINE_EXCEEDED":
        return "no answer (timed out)"
    return f"{name}: {details() if callable(details) else error}"


def default_clients(timeout: float = 2.0) -> list[RuntimeClient]:
    """Clients for every runtime at its standard socket (absent ones cost one stat a poll).

    Docker first: dockerd runs its containers through containerd (namespace ``moby``),
    so both list them, and docker's listing has the names people gave them.
    """
    return [
        DockerClient(timeout=timeout),
        PodmanClient(timeout=timeout),
        ContainerdClient(timeout=timeout),
    ]
