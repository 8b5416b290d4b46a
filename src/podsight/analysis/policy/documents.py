"""Reading Kubernetes manifests: a file or a directory of YAML and JSON documents.

The formats people have at hand: one object per file, several YAML documents
(``---``), a ``kind: List`` (or ``NetworkPolicyList``, ``PodList``, ...) as
``kubectl get ... -o yaml|json`` prints it, JSON or YAML. A directory means
every ``*.yaml``, ``*.yml`` and ``*.json`` in it, in name order, not
recursive; an empty directory holds no objects.

Anything unreadable is bad input: one line naming the file (and the line for
YAML), exit status 2. A key given twice in one mapping is refused, as
kubectl refuses it (PyYAML would silently keep the last one, and a policy
whose second ``ingress:`` replaced the first is a policy nobody wrote).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from podsight.errors import UserError

SUFFIXES = (".yaml", ".yml", ".json")

_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_Base):  # type: ignore[misc]
    """PyYAML's safe loader (the C parser when built), refusing duplicate keys."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            # Keys are plain scalars nearly always: compare their text (and tag) without
            # constructing them twice; anything else is constructed to compare.
            if isinstance(key_node, yaml.ScalarNode):
                key: Any = (key_node.tag, key_node.value)
            else:
                key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                duplicate = False
            if duplicate:
                shown = key[1] if isinstance(key_node, yaml.ScalarNode) else key
                raise yaml.constructor.ConstructorError(
                    None, None, f"mapping key {shown!r} is given twice", key_node.start_mark)
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        """A node's tag, as PyYAML's resolver says, memoised on (kind, text, implicit).

        Why: the C parser asks the Python resolver for every scalar (regular expressions by
        its first character); 1,000 policies have ~134,000 scalars, mostly the same keys and
        values, and the answers cost ~0.1 s of start-up. The resolver's tables are the
        class's (no path resolvers): the tag is a function of the three alone."""
        if self.yaml_path_resolvers:
            return super().resolve(kind, value, implicit)
        key = (kind, value, implicit)
        tag = _RESOLVED.get(key)
        if tag is None:
            tag = super().resolve(kind, value, implicit)
            if len(_RESOLVED) > 1 << 14:
                _RESOLVED.clear()
            _RESOLVED[key] = tag
        return tag


#: (node kind, text, implicit) -> tag (:meth:`_StrictLoader.resolve`)
_RESOLVED: dict[tuple[Any, Any, Any], Any] = {}


_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
#: Scalars whose constructor is a plain function of the node (no generator, no state).
_PLAIN = frozenset({"tag:yaml.org,2002:null", "tag:yaml.org,2002:bool",
                    "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"})


class _Odd(Exception):
    """A document :func:`_build` does not take: PyYAML's constructor builds it."""


def _load_all(text: str) -> Iterator[Any]:
    """``yaml.load_all(text, Loader=_StrictLoader)``, with each document's plain nodes
    (strings, numbers, booleans, nulls, lists and mappings, no aliases, no merge keys)
    built by :func:`_build` instead of PyYAML's constructor.

    Why: 1,000 policies took ~0.6 s to load, more than half of it in PyYAML's Python
    constructor (a generator and a memo entry per mapping, a method lookup per node), paid
    before a check reads its first record. Anything else in a document (an alias, a
    ``<<`` key, a tag, a key given twice, an unhashable key) has the whole document built by
    the constructor, which gives the same objects and the same errors as before.
    """
    loader = _StrictLoader(text)
    try:
        constructors = loader.yaml_constructors
        while loader.check_node():
            node = loader.get_node()
            try:
                yield _build(node, constructors, loader, set())
            except _Odd:
                yield loader.construct_document(node)
    finally:
        loader.dispose()


def _build(node: Any, constructors: Any, loader: Any, seen: set[int]) -> Any:
    cls = node.__class__
    tag = node.tag
    if cls is yaml.ScalarNode:
        if tag == _STR:
            return node.value
        if tag in _PLAIN:
            return constructors[tag](loader, node)
        raise _Odd
    if id(node) in seen:  # an alias: the constructor shares the object
        raise _Odd
    seen.add(id(node))
    if cls is yaml.SequenceNode and tag == _SEQ:
        return [_build(item, constructors, loader, seen) for item in node.value]
    if cls is not yaml.MappingNode or tag != _MAP:
        raise _Odd
    mapping: dict[Any, Any] = {}
    keys: set[Any] = set()
    for key_node, value_node in node.value:
        if key_node.__class__ is not yaml.ScalarNode:
            raise _Odd
        text = (key_node.tag, key_node.value)
        if text in keys or key_node.tag not in _KEY_TAGS:  # twice, or a merge key: odd
            raise _Odd
        keys.add(text)
        mapping[_build(key_node, constructors, loader, seen)] = _build(
            value_node, constructors, loader, seen)
    return mapping


_KEY_TAGS = frozenset({_STR} | _PLAIN)


@dataclass(frozen=True)
class Document:
    """One object and where it came from (``file``, ``file#2`` for the 2nd document, or
    ``file: items[3]`` for an item of a List)."""

    source: str
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        kind = self.obj.get("kind")
        return kind if isinstance(kind, str) else ""


def files_of(path: str, what: str) -> list[Path]:
    """The files ``path`` stands for: itself, or a directory's manifests (not recursive)."""
    p = Path(path)
    try:
        if p.is_dir():
            return sorted(f for f in p.iterdir() if f.suffix in SUFFIXES and f.is_file())
        os.stat(p)
    except FileNotFoundError:
        raise UserError(f"{what} {path}: no such file or directory") from None
    except PermissionError:
        raise UserError(f"{what} {path}: permission denied") from None
    return [p]


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except PermissionError:
        raise UserError(f"cannot read {path}: permission denied") from None
    except IsADirectoryError:
        raise UserError(f"cannot read {path}: is a directory") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"cannot read {path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None


def parse(text: str, source: str) -> list[Any]:
    """Every document of ``text`` (JSON or YAML), ``None`` for empty ones."""
    stripped = text.lstrip()
    if source.endswith(".json") or stripped.startswith(("{", "[")):
        try:
            return [json.loads(text)]
        except json.JSONDecodeError as exc:
            if source.endswith(".json"):
                raise UserError(f"{source}: line {exc.lineno}: not valid JSON ({exc.msg})"
                                ) from None
            # YAML that happens to start with a flow mapping: let YAML read it.
    try:
        return list(_load_all(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f": line {mark.line + 1}" if mark is not None else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise UserError(f"{source}{where}: not valid YAML ({problem})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{source}: not valid YAML ({' '.join(str(exc).split())})") from None


def documents(path: str, what: str) -> list[Document]:
    """Every object in ``path`` (a file or a directory), Lists expanded."""
    out: list[Document] = []
    for file in files_of(path, what):
        out.extend(documents_of(read_text(file), str(file)))
    return out


def documents_of(text: str, source: str) -> Iterator[Document]:
    docs = parse(text, source)
    for n, doc in enumerate(docs, 1):
        where = source if len(docs) == 1 else f"{source}#{n}"
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise UserError(f"{where}: expected a Kubernetes object (a mapping), found "
                            f"{_type_name(doc)}")
        kind = doc.get("kind")
        if isinstance(kind, str) and kind.endswith("List") and "items" in doc:
            items = doc.get("items")
            if items is None:
                continue
            if not isinstance(items, list):
                raise UserError(f"{where}: items: expected a list, found {_type_name(items)}")
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    raise UserError(f"{where}: items[{i}]: expected a Kubernetes object, "
                                    f"found {_type_name(item)}")
                yield Document(f"{where}: items[{i}]", item)
        else:
            yield Document(where, doc)


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return type(value).__name__


type_name = _type_name
