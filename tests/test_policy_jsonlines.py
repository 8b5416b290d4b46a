"""The fast JSON lines reader (msgspec, only the fields a check needs) reads every file as the
reference reader does (orjson into dicts, line by line: what stdin goes through): the same
connections, hints, counts and one-line errors, whatever the lines hold. Records are written
by the gadgets' own schemas and outputs, then edited the ways files get edited. No root."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from policy_records import SYN, connect, flow, pod_ep, write_json

from podsight.analysis.policy import jsonlines
from podsight.analysis.policy.records import Chunk, Reader, split
from podsight.errors import UserError
from podsight.identity.endpoint import Endpoint

WEB = pod_ep("10.244.0.3", "shop", "web-a", {"app": "web"}, workload=("Deployment", "web"))
WEB2 = pod_ep("10.244.0.3", "shop", "web-a", {"app": "web", "canary": "yes"},
              workload=("Deployment", "web"))  # the same pod, relabelled
MY = pod_ep("10.244.0.2", "default", "mypod", {"run": "mypod"})
OTHER_NS = pod_ep("10.244.1.3", "other", "web-a", {"app": "web"})  # same name, other ns
SVC = Endpoint.for_service("10.96.0.10", "shop", "web")
NODE = Endpoint.for_node("172.18.0.2", "lab-node")


def tcpconnect_lines(tmp_path: Path) -> list[str]:
    records = [
        connect(MY, WEB, "10.244.0.2", 40000, "10.244.0.3", 8080),
        connect(MY, WEB2, "10.244.0.2", 40001, "10.244.0.3", 8080, at=1000),
        connect(MY, WEB, "10.244.0.2", 40002, "10.244.0.3", 8080, at=2000),
        connect(MY, OTHER_NS, "10.244.0.2", 40003, "10.244.1.3", 80, result="refused"),
        connect(MY, SVC, "10.244.0.2", 40004, "10.96.0.10", 80),
        connect(NODE, MY, "172.18.0.2", 40005, "10.244.0.2", 80),
        connect(MY, None, "10.244.0.2", 40006, "2001:db8::7", 443, result="timeout"),
        connect(None, None, "198.51.100.1", 1, "198.51.100.2", 2),
    ]
    return write_json(tmp_path / "t.json", "tcpconnect", records).read_text().splitlines()


def flow_lines(tmp_path: Path) -> list[str]:
    records = [flow(MY, WEB, "10.244.0.2", 40010, "10.244.0.3", 8080, flags=SYN),
               flow(WEB, MY, "10.244.0.3", 8080, "10.244.0.2", 40010),
               flow(MY, None, "10.244.0.2", 0, "198.51.100.9", 0, proto=1)]  # ICMP: skipped
    return write_json(tmp_path / "f.json", "flows", records).read_text().splitlines()


def bare(**fields: Any) -> str:
    record = {"ip": 4, "proto": "tcp", "saddr": "10.244.0.2", "sport": 1,
              "daddr": "10.244.0.3", "dport": 80, **fields}
    return json.dumps(record)


def reference(text: str) -> tuple[list[Any], Any, str]:
    """What the reference reader makes of ``text`` (read as stdin is)."""
    reader = Reader(["-"], stdin=io.StringIO(text))
    return _drain(reader)


def fast(path: Path) -> tuple[list[Any], Any, str]:
    return _drain(Reader([str(path)]))


def _drain(reader: Reader) -> tuple[list[Any], Any, str]:
    out: list[Any] = []
    error = ""
    try:
        out.extend(reader)
    except UserError as exc:
        error = str(exc)
    return out, reader.stats, error


def same(tmp_path: Path, text: str) -> tuple[list[Any], Any, str]:
    path = tmp_path / "in.json"
    path.write_bytes(text.encode())
    got, want = fast(path), reference(text)
    assert got[0] == want[0]
    assert (got[1].records, got[1].skipped, got[1].flows_merged) == \
        (want[1].records, want[1].skipped, want[1].flows_merged)
    assert got[2] == want[2].replace("<stdin>", str(path))
    return got


def test_gadget_records_read_alike(tmp_path: Path):
    lines = tcpconnect_lines(tmp_path) + flow_lines(tmp_path)
    conns, stats, error = same(tmp_path, "\n".join(lines) + "\n")
    assert not error and stats.records == len(lines) and stats.skipped == {"icmp": 1}
    web = [c.dst for c in conns[:3]]
    assert web[0] == web[2] != web[1] and dict(web[1].labels) == {"app": "web", "canary": "yes"}
    assert conns[3].dst.namespace == "other" and conns[3].result == "refused"
    assert [c.dst.kind if c.dst else None for c in conns[4:8]] == ["service", "pod", None, None]
    assert conns[5].src.kind == "node" and conns[-1].proto == "tcp"  # the merged flow


@pytest.mark.parametrize("text", [
    # odd but valid: read by the reference reader, line by line
    bare(result=3) + "\n" + bare(proto="TCP") + "\n" + bare(ip=None) + "\n",
    bare(time=5) + "\n\n   \n" + bare(sport=65535, dport=0),  # blank lines, no last newline
    bare() + "\r\n" + bare(saddr="::ffff:10.0.0.1", daddr="2001:db8::1", ip=6) + "\r\n",
    bare(src={"kind": "pod", "namespace": "a", "pod": "p", "labels": {"x": "1"}}) + "\n"
    + bare(src={"kind": "pod", "namespace": "a", "pod": "p", "labels": {"x": "2"}}) + "\n"
    + bare(src={"kind": "pod", "namespace": "b", "pod": "p", "labels": None}) + "\n"
    + bare(src={"kind": "pod", "namespace": "a", "pod": "p", "labels": {"x": "1"}}) + "\n"
    + bare(src="a string", dst={"kind": 7}) + "\n",
    bare(src={"kind": "pod", "pod": "é", "labels": {"ü": "ß"}}) + "\n",  # UTF-8, not ASCII
    # bad: the same one-line error at the same line, after the same connections
    bare() + "\n" + bare(sport=70000) + "\n",
    bare() + "\n" + bare(saddr="10.0.0.300") + "\n",
    bare() + "\n" + bare(proto="icmp") + "\n",
    bare() + "\n" + bare(ip=6) + "\n",
    bare() + "\n" + bare(daddr="2001:db8::1") + "\n",
    bare() + "\n" + bare(sport=True) + "\n",
    bare() + "\n" + '{"saddr": "10.0.0.1"}' + "\n",
    bare() + "\n" + "[1, 2]" + "\n",
    bare() + "\n" + "not json" + "\n",
    bare() + "\n" + '{"saddr": "10.0.0.1", "sport": 1, "daddr": "10.0.0.2", "dport": 2}\n',
], ids=lambda t: t[:40])
def test_odd_and_bad_lines_read_alike(tmp_path: Path, text: str):
    same(tmp_path, text)


def test_lines_longer_than_a_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(jsonlines, "BLOCK", 64)
    lines = tcpconnect_lines(tmp_path) * 3
    conns, stats, error = same(tmp_path, "\n".join(lines) + "\n")
    assert len(conns) == stats.records == len(lines) and not error


def test_a_byte_that_is_not_utf8_is_named_by_its_offset(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(jsonlines, "BLOCK", 256)  # the bad byte is blocks into the file
    good = (bare() + "\n").encode() * 20
    path = tmp_path / "bad.json"
    path.write_bytes(good + b'{"saddr": "\xff"}\n' + good)
    conns, _, error = fast(path)
    assert error == (f"--from {path}: not UTF-8 text (byte {len(good) + 11}); give JSON "
                     "lines or a SQLite file")
    assert len(conns) == 20  # the lines before it were read


def test_a_part_names_the_line_of_its_error(tmp_path: Path):
    text = (bare() + "\n") * 899 + bare(sport=-1) + "\n" + (bare() + "\n") * 100
    path = tmp_path / "in.json"
    path.write_text(text)
    parts = split(str(path), 2)
    assert parts is not None and len(parts) == 2 and parts[1].start > 0
    reader = Reader([])
    with pytest.raises(UserError, match=rf"^{path}:900: -1 is not a port"):
        list(reader.chunk(Chunk(str(path), parts[1].start, parts[1].end)))
