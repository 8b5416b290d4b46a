"""The containerd protobuf subset podsight ships: generated as committed, and wire-compatible
with containerd's own API (field numbers and types checked against its .proto files)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from identity_local_protogen import GENERATED, SRC, UPSTREAM_API, generate, upstream_descriptors

from podsight.identity.local import containerd_api_pb2 as api
from podsight.identity.local import runtimes

# podsight's message -> containerd's, by full name.
UPSTREAM_NAME = {
    "VersionResponse": "containerd.services.version.v1.VersionResponse",
    "Namespace": "containerd.services.namespaces.v1.Namespace",
    "Namespace.LabelsEntry": "containerd.services.namespaces.v1.Namespace.LabelsEntry",
    "ListNamespacesRequest": "containerd.services.namespaces.v1.ListNamespacesRequest",
    "ListNamespacesResponse": "containerd.services.namespaces.v1.ListNamespacesResponse",
    "Container": "containerd.services.containers.v1.Container",
    "Container.LabelsEntry": "containerd.services.containers.v1.Container.LabelsEntry",
    "Container.Runtime": "containerd.services.containers.v1.Container.Runtime",
    "ListContainersRequest": "containerd.services.containers.v1.ListContainersRequest",
    "ListContainersResponse": "containerd.services.containers.v1.ListContainersResponse",
    "Process": "containerd.v1.types.Process",
    "Status": "containerd.v1.types.Status",
    "ListTasksRequest": "containerd.services.tasks.v1.ListTasksRequest",
    "ListTasksResponse": "containerd.services.tasks.v1.ListTasksResponse",
}
PACKAGE = api.DESCRIPTOR.package


def upstream_or_skip():
    if not UPSTREAM_API.is_dir():
        pytest.skip("containerd's .proto files not installed "
                    "(apt-get install golang-github-containerd-containerd-dev)")
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools not installed")
    return upstream_descriptors()


def test_generated_module_is_up_to_date() -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools not installed")
    for rel, text in generate().items():
        assert (SRC / rel).read_text() == text, (
            f"src/{rel} is stale: run `python tests/identity_local_protogen.py`"
        )
    assert sorted(GENERATED) == sorted(generate())


def ours(full_name: str) -> str:
    return full_name.lstrip(".").removeprefix(PACKAGE + ".")


def test_subset_is_wire_compatible_with_containerd() -> None:
    upstream, _ = upstream_or_skip()
    checked = 0
    for mine in (*api.DESCRIPTOR.message_types_by_name.values(),):
        stack = [mine]
        while stack:
            message = stack.pop()
            stack.extend(message.nested_types)
            theirs = upstream[UPSTREAM_NAME[ours(message.full_name)]]
            their_fields = {f.name: f for f in theirs.field}
            for field in message.fields:
                their = their_fields[field.name]
                where = f"{message.full_name}.{field.name}"
                assert field.number == their.number, where
                checked += 1
                assert field.type == their.type, where
                assert field.is_repeated == (their.label == their.LABEL_REPEATED), where
                if field.message_type is not None:
                    assert UPSTREAM_NAME[ours(field.message_type.full_name)] == \
                        their.type_name.lstrip("."), where
                if field.enum_type is not None:
                    assert UPSTREAM_NAME[ours(field.enum_type.full_name)] == \
                        their.type_name.lstrip("."), where
    assert checked == 23  # every field of the subset was compared
    their_status = {v.name: v.number for v in upstream["containerd.v1.types.Status"].value}
    assert {v.name: v.number for v in api.Status.DESCRIPTOR.values} == their_status


def test_methods_exist_with_these_messages() -> None:
    _, methods = upstream_or_skip()
    calls = {
        runtimes.VERSION_METHOD: ("google.protobuf.Empty", api.VersionResponse),
        runtimes.NAMESPACES_METHOD: (api.ListNamespacesRequest, api.ListNamespacesResponse),
        runtimes.CONTAINERS_METHOD: (api.ListContainersRequest, api.ListContainersResponse),
        runtimes.TASKS_METHOD: (api.ListTasksRequest, api.ListTasksResponse),
    }
    for path, (request, response) in calls.items():
        their_in, their_out = methods[path]
        want_in = request if isinstance(request, str) else UPSTREAM_NAME[request.DESCRIPTOR.name]
        assert their_in == want_in, path
        assert their_out == UPSTREAM_NAME[response.DESCRIPTOR.name], path


def test_generated_files_exist() -> None:
    for rel in GENERATED:
        assert (SRC / rel).is_file()
        assert Path(SRC / rel).read_text().startswith("# ruff: noqa\n")
