"""docs/flows.md is the contract for flows output: every column and key is in it."""

from __future__ import annotations

import re
from pathlib import Path

from podsight.gadgets.flows.fields import SQL_COLUMNS

DOC = Path(__file__).resolve().parent.parent / "docs" / "flows.md"
JSON_KEYS = ["start", "end", "ip", "proto", "saddr", "sport", "daddr", "dport", "src", "dst",
             "bytes", "packets", "tcp_flags", "dscp", "interfaces", "icmp", "rtt", "drops", "dns"]


def documented_names(section: str) -> set[str]:
    """Backquoted names in the first cell of each table row of one section."""
    text = DOC.read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for line in body.splitlines():
        if line.startswith("| `"):
            names.update(re.findall(r"`([a-z_0-9]+)`", line.split("|")[1]))
    return names


def test_every_sqlite_column_is_documented_with_its_type():
    documented = documented_names("SQLite")
    missing = [c.name for c in SQL_COLUMNS if c.name not in documented]
    assert not missing, f"document these columns in docs/flows.md: {missing}"
    text = DOC.read_text()
    for c in SQL_COLUMNS:
        assert f"| `{c.name}` | {c.sql_type} |" in text, c.name


def test_every_json_key_is_documented():
    documented = documented_names("JSON")
    assert not [k for k in JSON_KEYS if k not in documented]


def test_json_keys_list_matches_the_writer():
    """A record with every optional part serializes to exactly the documented keys, in order."""
    import json

    from podsight.gadgets.flows.dns import DnsAnswer
    from podsight.gadgets.flows.fields import to_json
    from podsight.gadgets.flows.records import Drops, FlowRecord, Rtt
    from podsight.timefmt import Clock

    record = FlowRecord(
        ip=4, saddr="10.0.0.1", daddr="10.0.0.2", sport=0, dport=0, proto=1, bytes=98,
        packets=1, first_ns=1, last_ns=2, tcp_flags=0, dscp=0, icmp_type=8, icmp_code=0,
        interfaces=[("eth0", "egress")], rtt=Rtt(1, 2, 1, 2),
        drops=Drops(1, 98, "NETFILTER_DROP", 4026531840, "eth0"),
        dns=[DnsAnswer(1, "a.example", "A", "NOERROR", 1000, 3, 0)],
    )
    assert list(json.loads(to_json(record, Clock()))) == JSON_KEYS
