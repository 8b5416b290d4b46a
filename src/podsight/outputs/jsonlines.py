"""One JSON object per line, written a batch at a time.

Gadgets serialize their own events to strings (with cached fragments for
repeated values such as comm and endpoints); this writer only batches the
write and flushes, so that a reader sees whole lines only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import TextIO

from podsight.outputs.stream import write_all


@lru_cache(maxsize=65536)
def json_string(value: str) -> str:
    """A JSON string literal; cached because comms and names repeat."""
    return json.dumps(value, ensure_ascii=False)


class JsonLinesWriter:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, lines: Sequence[str]) -> None:
        if lines:
            write_all(self.stream, "\n".join(lines) + "\n")
