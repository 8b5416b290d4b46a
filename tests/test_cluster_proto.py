"""The committed agent protobuf module is what agent.proto compiles to."""

from __future__ import annotations

from cluster_protogen import SRC, generate


def test_agent_stubs_are_current() -> None:
    for rel, text in generate().items():
        assert (SRC / rel).read_text() == text, (
            f"src/{rel} is stale: run `python tests/cluster_protogen.py`")
