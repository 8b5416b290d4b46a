"""What the API server checks in names, labels, selectors and ports, and kubectl's strictness.

Written from ``k8s.io/apimachinery/pkg/util/validation`` (qualified names, label
values, DNS names, IANA service names) and
``pkg/apis/networking/validation`` (ports, peers, ipBlocks, policyTypes), so
that ``policy check`` refuses a policy exactly when ``kubectl apply`` would:
the tests send every bad input of their table to a real kube-apiserver too.
Unknown fields are refused, as kubectl's default ``--validate=strict`` does.

Errors are collected with their field path (``spec.ingress[0].from[1]``)
and the API server's wording ("Required value", "Unsupported value", ...).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from podsight.analysis.policy.documents import type_name

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


class Problems:
    """Errors found in one object, each with its field path."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.items.append(f"{path}: {message}")

    def __bool__(self) -> bool:
        return bool(self.items)

    def summary(self) -> str:
        first = self.items[0]
        more = len(self.items) - 1
        return first if not more else f"{first} (and {more} more)"


def dns1123_label(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _DNS1123_LABEL.match(value):
        return ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
                "or '-', and must start and end with an alphanumeric character")
    return None


def dns1123_subdomain(value: str) -> str | None:
    if len(value) > 253:
        return "must be no more than 253 characters"
    if not _DNS1123_SUBDOMAIN.match(value):
        return ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character")
    return None


def qualified_name(value: str) -> str | None:
    """A label key: ``[prefix/]name``, the prefix a DNS subdomain, the name 63 characters."""
    prefix, slash, name = value.rpartition("/")
    if slash and not prefix:
        return "prefix part must be non-empty"
    if value.count("/") > 1:
        return "a qualified name must consist of an optional DNS subdomain prefix and a name"
    if slash and dns1123_subdomain(prefix) is not None:
        return f"prefix part {dns1123_subdomain(prefix)}"
    if not name:
        return "name part must be non-empty"
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not _QUALIFIED_NAME.match(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', and must "
                "start and end with an alphanumeric character")
    return None


def label_value(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _LABEL_VALUE.match(value):
        return ("a valid label must be an empty string or consist of alphanumeric characters, "
                "'-', '_' or '.', and must start and end with an alphanumeric character")
    return None


def port_name(value: str) -> str | None:
    """IANA_SVC_NAME, what a named port must be."""
    if len(value) > 15:
        return "must be no more than 15 characters"
    if not _PORT_NAME.match(value):
        return "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
    if "--" in value:
        return "must not contain consecutive hyphens"
    if not any(c.isalpha() for c in value):
        return "must contain at least one letter (a-z)"
    return None


def port_number(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "must be between 1 and 65535, inclusive"


# -- shapes (what kubectl's schema check and the API server's decoder refuse) ------------------

def mapping(problems: Problems, path: str, value: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    """``value`` as a mapping with only ``allowed`` keys; {} (and a problem) otherwise."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(path, f"expected an object, found {type_name(value)}")
        return {}
    for key in value:
        if key not in allowed:
            problems.add(f"{path}.{key}" if path else str(key), "unknown field")
    return value


def listing(problems: Problems, path: str, value: Any) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        problems.add(path, f"expected a list, found {type_name(value)}")
        return []
    return value


def string(problems: Problems, path: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        problems.add(path, f"expected a string, found {type_name(value)}")
        return None
    return value


def integer(problems: Problems, path: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        problems.add(path, f"expected an integer, found {type_name(value)}")
        return None
    return value


def labels(problems: Problems, path: str, value: Any,
           check_value: Callable[[str], str | None] = label_value) -> dict[str, str]:
    """A ``matchLabels`` or ``metadata.labels`` map: valid keys and values."""
    out: dict[str, str] = {}
    if value is None:
        return out
    if not isinstance(value, Mapping):
        problems.add(path, f"expected an object, found {type_name(value)}")
        return out
    for key, val in value.items():
        if not isinstance(key, str):
            problems.add(path, f"label key {key!r} is not a string")
            continue
        why = qualified_name(key)
        if why:
            problems.add(path, f"Invalid value: {key!r}: {why}")
        if not isinstance(val, str):
            problems.add(f"{path}.{key}", f"expected a string, found {type_name(val)}")
            continue
        why = check_value(val)
        if why:
            problems.add(f"{path}.{key}", f"Invalid value: {val!r}: {why}")
        out[key] = val
    return out
