"""The gadgets podsight knows: one line each. A gadget is one folder under this package
whose ``__init__.py`` defines ``SPEC`` (see docs/adding-a-gadget.md)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from podsight.spec import GadgetSpec

REGISTRY = (
    "podsight.gadgets.tcpconnect",
    "podsight.gadgets.flows",
    "podsight.gadgets.packets",
    "podsight.gadgets.tcplife",
)


def specs() -> list[GadgetSpec]:
    """Every registered gadget's declaration (imports nothing heavy)."""
    return [importlib.import_module(name).SPEC for name in REGISTRY]
