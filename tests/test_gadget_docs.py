"""docs/<gadget>.md is the contract for each gadget's output: every JSON key is in it, and
its SQLite table is exactly what the gadget's schema declares. No root needed."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from podsight.gadgets import specs
from podsight.timefmt import Clock

DOCS = Path(__file__).resolve().parent.parent / "docs"
SPECS = specs()


def schema_of(name: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(f"podsight.gadgets.{name}.schema").schema(Clock())


def section(text: str, title: str) -> str:
    return text.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_every_json_key_is_documented_and_nothing_else(spec):
    doc = (DOCS / f"{spec.name}.md").read_text()
    documented: set[str] = set()
    for line in section(doc, "JSON").splitlines():
        if line.startswith("| `"):
            documented.update(re.findall(r"`([a-z_0-9]+)`", line.split("|")[1]))
    keys = {f.name for f in schema_of(spec.name).json_fields}
    assert keys - documented == set(), f"document these keys in docs/{spec.name}.md"
    assert documented - keys == set(), f"docs/{spec.name}.md lists keys the gadget never writes"


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_sqlite_table_is_the_schema(spec):
    doc = (DOCS / f"{spec.name}.md").read_text()
    rows = [line for line in section(doc, "SQLite").splitlines() if line.startswith("| `")]
    expected = [f"| `{c.name}` | {c.sql_type} | {c.doc} |"
                for c in schema_of(spec.name).sql_columns]
    assert rows == expected, (f"docs/{spec.name}.md's SQLite table is out of date; it should "
                              "read:\n" + "\n".join(expected))


def test_every_gadget_has_its_page_and_folder():
    for spec in SPECS:
        folder = Path(importlib.import_module(f"podsight.gadgets.{spec.name}").__file__).parent
        assert (folder / "README.md").exists(), f"{folder}/README.md is missing"
        assert (DOCS / f"{spec.name}.md").exists()
