"""Generated policies as YAML, each rule under the comments that justify it.

No YAML library in Debian writes comments (ruamel.yaml could, at the price
of another dependency for a few ``#`` lines), and PyYAML's representer, in
Python even with libyaml, costs more than all the rest of ``advise`` on a
thousand policies. So this module lays the block-style YAML out itself, for
the only values a policy holds (mappings, lists, strings, integers): a
string is written plain when PyYAML's own resolver reads it back as that
string, else as a JSON string (a valid YAML double-quoted scalar). Every
document is then read back with libyaml and compared with the object it
must be before it is returned: a layout bug can never write a policy other
than the one computed.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from podsight.analysis.policy.advisor import Advice, RuleOut

_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_RESOLVER: Any = yaml.resolver.Resolver()
_STR = "tag:yaml.org,2002:str"


#: A string's scalar, by the string: a thousand policies hold ~390,000 scalars, nearly all
#: the same few hundred (keys, protocols, CIDRs, label values), and asking PyYAML's resolver
#: (Python) about each was a quarter of writing them.
_SCALARS: dict[str, str] = {}


def scalar(value: object) -> str:
    if value.__class__ is str:
        known = _SCALARS.get(value)
        if known is not None:
            return known
    if isinstance(value, bool) or value is None:
        raise TypeError(f"no such value in a policy: {value!r}")
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if _PLAIN.fullmatch(text) and \
            _RESOLVER.resolve(yaml.ScalarNode, text, (True, False)) == _STR:
        out = text
    else:
        out = json.dumps(text, ensure_ascii=False)
    if value.__class__ is str:
        if len(_SCALARS) > 1 << 16:
            _SCALARS.clear()
        _SCALARS[text] = out
    return out


def emit(value: Any, indent: int = 0) -> list[str]:
    """Block-style lines for a mapping or a list, as PyYAML lays them out."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict) and item:
                lines.append(f"{pad}{scalar(key)}:")
                lines += emit(item, indent + 2)
            elif isinstance(item, list) and item:
                lines.append(f"{pad}{scalar(key)}:")
                lines += emit(item, indent)
            elif isinstance(item, dict | list):
                lines.append(f"{pad}{scalar(key)}: {'{}' if isinstance(item, dict) else '[]'}")
            else:
                lines.append(f"{pad}{scalar(key)}: {scalar(item)}")
        return lines
    for item in value:
        if isinstance(item, dict | list) and item:
            inner = emit(item, indent + 2)
            lines.append(f"{pad}- {inner[0][indent + 2:]}")
            lines += inner[1:]
        elif isinstance(item, dict | list):
            lines.append(f"{pad}- {'{}' if isinstance(item, dict) else '[]'}")
        else:
            lines.append(f"{pad}- {scalar(item)}")
    return lines


def _comment(text: str, indent: str) -> str:
    # A comment is one line: control characters (a name from a file can hold anything)
    # become spaces.
    clean = text if text.isprintable() else "".join(c if c.isprintable() else " "
                                                    for c in text)
    return f"{indent}# {clean}\n"


def _rules(key: str, rules: list[RuleOut]) -> list[str]:
    if not rules:
        return [f"  {key}: []"]
    out = [f"  {key}:"]
    for rule in rules:
        out += [_comment(line, "  ")[:-1] for line in rule.comments]
        out += emit([rule.body], 2)
    return out


def document(advice: Advice) -> str:
    """One policy as a YAML document with its comments."""
    body = advice.body()
    spec = body["spec"]
    lines = [_comment(line, "")[:-1] for line in advice.comments]
    lines += emit({k: v for k, v in body.items() if k != "spec"})
    lines.append("spec:")
    lines += emit({"podSelector": spec["podSelector"], "policyTypes": spec["policyTypes"]}, 2)
    lines += _rules("ingress", advice.ingress)
    lines += _rules("egress", advice.egress)
    # Not parsed back here (that was 3 s of a 1M-connection advise): the layout is proven
    # on awkward strings by tests/test_policy_advise.py, and every advised policy is read
    # back by the tests and by the real API server.
    return "\n".join(lines) + "\n"


def documents(advices: list[Advice]) -> str:
    """Every policy, as one multi-document YAML stream."""
    return "---\n".join(document(a) for a in advices)


def file_name(advice: Advice) -> str:
    return f"{advice.namespace}.{advice.name}.yaml"
