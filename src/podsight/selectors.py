"""Pod selectors as kubectl users type them: -n, -p, -c, --node lists and -l label selectors.

Lists are comma separated; an item starting with ``!`` excludes. A list with
only exclusions means "everything but these". Label selectors follow the
Kubernetes syntax: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``, ``k notin (a,b)``,
``k`` (exists) and ``!k`` (does not exist), joined by commas (all must hold).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from podsight.errors import UserError

_KEY = r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_RE = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s+\(([^()]*)\)\s*$")
_EQ_RE = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_EXISTS_RE = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


@dataclass(frozen=True)
class NameList:
    """``a,b,!c``: included names (empty = any) and excluded names; a name with ``*``,
    ``?`` or ``[`` is a shell pattern (``checkout-*``)."""

    include: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, flag: str, value: str | None) -> NameList:
        if value is None:
            return cls()
        inc: set[str] = set()
        exc: set[str] = set()
        for raw in value.split(","):
            item = raw.strip()
            if not item:
                continue
            if item.startswith("!"):
                name = item[1:].strip()
                if not name:
                    raise UserError(f"{flag} {value!r}: '!' needs a name after it")
                exc.add(name)
            else:
                inc.add(item)
        if not inc and not exc:
            raise UserError(f"{flag} needs at least one name")
        return cls(frozenset(inc), frozenset(exc))

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude)

    @property
    def exact(self) -> frozenset[str]:
        """Included names that are not patterns."""
        return frozenset(n for n in self.include if not _is_pattern(n))

    def __call__(self, name: str) -> bool:
        if self.include and name not in self.include and not any(
                _is_pattern(p) and fnmatch.fnmatchcase(name, p) for p in self.include):
            return False
        return name not in self.exclude and not any(
            _is_pattern(p) and fnmatch.fnmatchcase(name, p) for p in self.exclude)


def _is_pattern(name: str) -> bool:
    """``checkout-*``, ``web-?``, ``db-[0-9]``: a shell pattern, matched with fnmatch."""
    return any(c in name for c in "*?[")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # in | notin | exists | !exists
    values: frozenset[str] = frozenset()

    def __call__(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "in":
            return labels.get(self.key) in self.values
        # notin (and !=) also match objects without the key, as in Kubernetes.
        return labels.get(self.key) not in self.values


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise UserError(f"invalid label selector {text!r}: unbalanced ')'")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise UserError(f"invalid label selector {text!r}: unbalanced '('")
    parts.append("".join(cur))
    return parts


@dataclass(frozen=True)
class LabelSelector:
    requirements: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, value: str | None) -> LabelSelector:
        if value is None:
            return cls()
        reqs: list[Requirement] = []
        for part in _split_top_level(value):
            if not part.strip():
                raise UserError(f"invalid label selector {value!r}: empty requirement")
            if m := _SET_RE.match(part):
                vals = [v.strip() for v in m[3].split(",")]
                if any(not re.fullmatch(_VALUE, v) for v in vals):
                    raise UserError(f"invalid label selector {value!r}: bad value in {part!r}")
                reqs.append(Requirement(m[1], m[2], frozenset(vals)))
            elif m := _EQ_RE.match(part):
                op = "notin" if m[2] == "!=" else "in"
                reqs.append(Requirement(m[1], op, frozenset([m[3]])))
            elif m := _EXISTS_RE.match(part):
                reqs.append(Requirement(m[2], "!exists" if m[1] else "exists"))
            else:
                raise UserError(f"invalid label selector {value!r}: cannot parse {part.strip()!r}")
        return cls(tuple(reqs))

    @property
    def active(self) -> bool:
        return bool(self.requirements)

    def __call__(self, labels: Mapping[str, str]) -> bool:
        return all(r(labels) for r in self.requirements)


@dataclass(frozen=True)
class PodSelector:
    """Everything the identity flags say about which pods (and the host) to trace."""

    namespaces: NameList = field(default_factory=NameList)
    pods: NameList = field(default_factory=NameList)
    containers: NameList = field(default_factory=NameList)
    nodes: NameList = field(default_factory=NameList)
    labels: LabelSelector = field(default_factory=LabelSelector)
    all_namespaces: bool = False
    host: bool = False

    @property
    def selects_pods(self) -> bool:
        """True when any pod flag was given: then only matching pods (and --host) are traced."""
        return (self.namespaces.active or self.pods.active or self.containers.active
                or self.labels.active or self.nodes.active or self.all_namespaces)

    def matches(self, namespace: str, name: str, labels: Mapping[str, str], node: str,
                containers: Iterable[str] = ()) -> bool:
        if not self.all_namespaces and not self.namespaces(namespace):
            return False
        if not self.pods(name) or not self.labels(labels):
            return False
        if self.nodes.active and not self.nodes(node):
            return False
        if self.containers.active:
            return any(self.containers(c) for c in containers)
        return True
