"""The argument parser class every podsight command uses: usage errors are one line."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``podsight: error: ...``, exit 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"podsight: error: {message}\n")
        sys.exit(2)
