"""`podsight lab` tests that need no root: names, durations and the CLI's answers to bad input.

They run anywhere (``pytest -m 'not root'``); everything that builds or uses
the lab is in test_lab.py. Bad input must be one line, ``podsight: error:
...``, with exit status 2 for usage and 1 for a failure at run time, and the
tests read the message, not only its shape.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from podsight.errors import UserError
from podsight.lab import Lab, parse_duration
from podsight.lab.system import child_env


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podsight.cli.main", "lab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed command printed, without its ``podsight: error:`` prefix."""
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("podsight: error: "), proc.stderr
    return lines[0].removeprefix("podsight: error: ")


def test_pod_refs_resolve_by_name_or_namespace_and_name():
    lab = Lab()
    assert lab.pod("mypod").ref == "default/mypod"
    assert lab.pod("shop/backend").netns == "psl-shop-backend"
    with pytest.raises(UserError, match="unknown lab pod"):
        lab.pod("nosuch")
    with pytest.raises(UserError, match="unknown lab pod"):
        lab.pod("shop/web")


def test_names_fit_the_kernel_and_share_the_prefix():
    lab = Lab()
    for pod in lab.pods:
        assert len(pod.veth) <= 15 and pod.veth.startswith("psl")
        assert pod.netns.startswith("psl-")
    assert lab.external.link.startswith("psl") and len(lab.external.link) <= 15


@pytest.mark.parametrize(("text", "seconds"), [("50ms", 0.05), ("1s", 1.0), ("1.5s", 1.5),
                                               ("200us", 0.0002)])  # fmt: skip
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["50", "5x", "-1s", "0ms", "2h", "", "61s"])
def test_parse_duration_rejects(text):
    with pytest.raises(UserError):
        parse_duration(text)


def test_cli_bad_duration_is_one_line_exit_2():
    proc = cli("delay", "mypod", "5x")
    assert proc.returncode == 2
    assert "5x" in one_error_line(proc)
