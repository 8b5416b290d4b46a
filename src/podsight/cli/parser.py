"""The argument parser class every podsight command uses: usage errors are one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``podsight: error: ...``, exit 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Flags whose value is optional (``nargs="?"``) -> what a value of theirs looks
        #: like. argparse gives such a flag the next word whatever it is, so
        #: ``--until-failed-connect 'tcp port 80'`` would take the filter expression as
        #: its DELAY; a next word that is not a value of the flag is left as a positional.
        self.optional_values: dict[str, Callable[[str], bool]] = {}

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None
                         ) -> tuple[argparse.Namespace, list[str]]:
        if args is not None and self.optional_values:
            args = self._detach_valueless(list(args))
        return super().parse_known_args(args, namespace)

    def _detach_valueless(self, words: list[str]) -> list[str]:
        """Move each optional-value flag that is followed by a word not its value to the
        end (before any ``--``), where argparse gives it its ``const``."""
        kept: list[str] = []
        moved: list[str] = []
        for i, word in enumerate(words):
            if word == "--":
                kept.extend(words[i:])
                break
            looks = self.optional_values.get(word)
            nxt = words[i + 1] if i + 1 < len(words) else None
            if looks is not None and nxt is not None and nxt != "--" \
                    and not nxt.startswith("-") and not looks(nxt):
                moved.append(word)
            else:
                kept.append(word)
        if not moved:
            return words
        at = kept.index("--") if "--" in kept else len(kept)
        return kept[:at] + moved + kept[at:]

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"podsight: error: {message}\n")
        sys.exit(2)
