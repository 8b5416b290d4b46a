"""Generate podsight's containerd protobuf module, and read containerd's own .proto files.

Run ``python tests/identity_local_protogen.py`` after editing
src/podsight/identity/local/containerd_api.proto; the test suite checks that the
committed module is exactly what this produces. Needs grpcio-tools (protoc as a
Python package), a development dependency only: the generated code needs just
protobuf at run time.
"""

from __future__ import annotations

import re
import sys
import tempfile
from importlib import resources
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PROTO = "podsight/identity/local/containerd_api.proto"
GENERATED = ("podsight/identity/local/containerd_api_pb2.py",
             "podsight/identity/local/containerd_api_pb2.pyi")

# Debian's golang-github-containerd-containerd-dev ships containerd's API here.
UPSTREAM_API = Path("/usr/share/gocode/src/github.com/containerd/containerd/api")
UPSTREAM_PROTOS = (
    "services/version/v1/version.proto",
    "services/namespaces/v1/namespace.proto",
    "services/containers/v1/containers.proto",
    "services/tasks/v1/tasks.proto",
)

# protoc's output is not lint-clean (long lines, typing.Union, bare Mapping in the
# stubs); these headers exempt exactly the generated files and nothing else.
HEADERS = {
    ".py": "# ruff: noqa\n",
    ".pyi": '# ruff: noqa\n# mypy: disable-error-code="type-arg"\n',
}


def _protoc(args: list[str]) -> None:
    from grpc_tools import protoc  # type: ignore[import-untyped]

    include = str(resources.files("grpc_tools") / "_proto")
    code = protoc.main(["protoc", f"-I{include}", *args])
    if code != 0:
        raise RuntimeError(f"protoc {' '.join(args)} failed with {code}")


def generate() -> dict[str, str]:
    """The generated files' text, keyed by their path under src/."""
    with tempfile.TemporaryDirectory(prefix="podsight-protogen-") as out:
        _protoc([f"-I{SRC}", f"--python_out={out}", f"--pyi_out={out}", str(SRC / PROTO)])
        result = {}
        for rel in GENERATED:
            text = (Path(out) / rel).read_text()
            result[rel] = HEADERS[Path(rel).suffix] + text
        return result


def upstream_descriptors() -> tuple[dict[str, object], dict[str, tuple[str, str]]]:
    """containerd's own API, compiled from Debian's .proto files.

    gogoproto options are stripped first (they change Go code only, not the wire).
    Returns messages and enums (DescriptorProto / EnumDescriptorProto) by full name,
    like ``containerd.v1.types.Process``, and methods by gRPC path
    (``/containerd.services.tasks.v1.Tasks/List``) -> (input type, output type).
    """
    from google.protobuf import descriptor_pb2

    with tempfile.TemporaryDirectory(prefix="podsight-upstream-") as tmp:
        root = Path(tmp) / "github.com/containerd/containerd/api"
        for path in UPSTREAM_API.rglob("*.proto"):
            text = path.read_text()
            text = re.sub(r'import weak "gogoproto/gogo.proto";', "", text)
            text = re.sub(r"\[\s*\(gogoproto\.[^\]]*\]", "", text)
            text = re.sub(r"option \(gogoproto\.[^;]*;", "", text)
            dest = root / path.relative_to(UPSTREAM_API)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(text)
        out = Path(tmp) / "set.pb"
        _protoc([f"-I{tmp}", "--include_imports", f"--descriptor_set_out={out}",
                 *(str(root / rel) for rel in UPSTREAM_PROTOS)])
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    messages: dict[str, object] = {}
    methods: dict[str, tuple[str, str]] = {}

    def add(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}"
        messages[name] = message
        for nested in message.nested_type:
            add(name, nested)

    for file in fds.file:
        for message in file.message_type:
            add(file.package, message)
        for enum in file.enum_type:
            messages[f"{file.package}.{enum.name}"] = enum
        for service in file.service:
            for method in service.method:
                path = f"/{file.package}.{service.name}/{method.name}"
                methods[path] = (method.input_type.lstrip("."), method.output_type.lstrip("."))
    return messages, methods


def main() -> int:
    for rel, text in generate().items():
        (SRC / rel).write_text(text)
        print(f"wrote src/{rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
