"""Generated policies as YAML, each rule under the comments that justify it.

PyYAML writes every value (quoting, escaping); this module only lays the
documents out so that comment lines can stand above each rule, which no
YAML library in Debian writes (ruamel.yaml could, at the price of another
dependency for a few ``#`` lines). Every document is read back and compared
with the object it must be before it is returned: a layout bug can never
write a policy other than the one computed.
"""

from __future__ import annotations

import textwrap
from typing import Any

import yaml

from podsight.analysis.policy.advisor import Advice, RuleOut


def _dump(value: Any) -> str:
    text: str = yaml.safe_dump(value, sort_keys=False, default_flow_style=False,
                               width=1 << 16)
    return text


def _comment(text: str, indent: str) -> str:
    # A comment is one line: control characters (a newline in a label value cannot
    # occur, but a name from a file can hold anything) become spaces.
    clean = "".join(c if c.isprintable() else " " for c in text)
    return f"{indent}# {clean}\n"


def _rules(key: str, rules: list[RuleOut]) -> str:
    if not rules:
        return f"  {key}: []\n"
    out = f"  {key}:\n"
    for rule in rules:
        out += "".join(_comment(line, "  ") for line in rule.comments)
        out += textwrap.indent(_dump([rule.body]), "  ")
    return out


def document(advice: Advice) -> str:
    """One policy as a YAML document with its comments."""
    body = advice.body()
    head = {k: v for k, v in body.items() if k != "spec"}
    spec = body["spec"]
    text = "".join(_comment(line, "") for line in advice.comments)
    text += _dump(head)
    text += "spec:\n"
    text += textwrap.indent(_dump({"podSelector": spec["podSelector"],
                                   "policyTypes": spec["policyTypes"]}), "  ")
    text += _rules("ingress", advice.ingress)
    text += _rules("egress", advice.egress)
    if yaml.safe_load(text) != body:  # the layout must not change what is written
        raise AssertionError(f"rendering {advice.namespace}/{advice.name} changed it")
    return text


def documents(advices: list[Advice]) -> str:
    """Every policy, as one multi-document YAML stream."""
    return "---\n".join(document(a) for a in advices)


def file_name(advice: Advice) -> str:
    return f"{advice.namespace}.{advice.name}.yaml"
