"""Fixtures shared by the whole test suite.

Keep each fixture small and documented: a test file should be readable
without opening this one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from podsight.lab import Lab


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """The netns lab, built once per test session and always torn down at its end.

    Session-scoped because building it takes about half a second and every
    end-to-end test wants it. It is torn down even when a test (or ``up``
    itself) fails, so a red run never leaves namespaces, veths or the nft
    guard behind. A lab that was already up before the session is taken down
    too: tests must start from, and leave, a known machine.
    """
    if os.geteuid() != 0:
        pytest.skip("the lab needs root (CAP_NET_ADMIN)")
    for tool in ("ip", "nft", "openssl"):
        if shutil.which(tool) is None:
            pytest.skip(f"the lab needs {tool}")
    instance = Lab()
    try:
        instance.up()
        yield instance
    finally:
        instance.down()
