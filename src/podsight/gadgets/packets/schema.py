"""packets writes no records: its output is the capture file (pcapng), whose blocks the
kernel builds. The schema is empty, so that table, JSON and SQLite outputs have nothing to
write and the pipeline's identity stage has nothing to name per packet."""

from __future__ import annotations

from typing import Any

from podsight.schema import Schema, Sides
from podsight.timefmt import Clock


def schema(clock: Clock) -> Schema[Any]:
    return Schema(fields=[], sides=Sides(time="ts_ns"))
