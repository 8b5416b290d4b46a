"""The field registry: how an event's fields are named in tables, JSON and ``-o columns=``.

Each gadget declares its fields once (in its own folder); outputs know
nothing about any gadget and only walk :class:`Field` lists.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from podsight.errors import UserError

RowT = TypeVar("RowT")


@dataclass(frozen=True)
class Field(Generic[RowT]):
    """One column: its ``-o columns=`` / JSON name, table header, width and text getter."""

    name: str
    header: str
    width: int
    text: Callable[[RowT], str]
    right: bool = False
    default: bool = True


def select_fields(
    fields: Sequence[Field[Any]], spec: str | None, *, extra: Sequence[str] = ()
) -> list[Field[Any]]:
    """The default columns (plus ``extra``), or those named in ``columns=a,b,c``."""
    by_name = {f.name: f for f in fields}
    if not spec:
        return [f for f in fields if f.default or f.name in extra]
    chosen: list[Field[Any]] = []
    for name in (n.strip().lower() for n in spec.split(",")):
        if not name:
            continue
        if name not in by_name:
            known = ", ".join(by_name)
            raise UserError(f"unknown column {name!r} (columns: {known})")
        chosen.append(by_name[name])
    if not chosen:
        raise UserError("-o columns= needs at least one column name")
    return chosen
