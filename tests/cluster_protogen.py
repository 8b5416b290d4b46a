"""Generate podsight's agent protobuf module (src/podsight/cluster/agent_pb2.py, .pyi).

Run ``python tests/cluster_protogen.py`` after editing src/podsight/cluster/agent.proto;
test_cluster_proto checks that the committed module is exactly what this produces. Same
pattern (and the same protoc wrapper) as the containerd stubs in identity_local_protogen.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from identity_local_protogen import HEADERS, SRC, _protoc

PROTO = "podsight/cluster/agent.proto"
GENERATED = ("podsight/cluster/agent_pb2.py", "podsight/cluster/agent_pb2.pyi")


def generate() -> dict[str, str]:
    """The generated files' text, keyed by their path under src/."""
    with tempfile.TemporaryDirectory(prefix="podsight-protogen-") as out:
        _protoc([f"-I{SRC}", f"--python_out={out}", f"--pyi_out={out}", str(SRC / PROTO)])
        return {rel: HEADERS[Path(rel).suffix] + (Path(out) / rel).read_text()
                for rel in GENERATED}


def main() -> int:
    for rel, text in generate().items():
        (SRC / rel).write_text(text)
        print(f"wrote src/{rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
