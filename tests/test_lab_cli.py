"""`podsight lab` tests that need no root: names, durations and the CLI's answers to bad input.

They run anywhere (``pytest -m 'not root'``); everything that builds or uses
the lab is in test_lab.py. Bad input must be one line, ``podsight: error:
...``, with exit status 2 for usage and 1 for a failure at run time, and the
tests read the message, not only its shape.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest
from importcheck import assert_light, lab_side_imports, podsight_imports

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


def test_cli_negative_duration_is_called_negative():
    # argparse took "-5ms" for an option and asked for a missing DURATION.
    proc = cli("delay", "mypod", "-5ms")
    assert proc.returncode == 2
    assert one_error_line(proc) == (
        "argument DURATION: invalid duration '-5ms': negative (a delay is more than 0, at most 60s)"
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("1e999ms", "invalid duration '1e999ms' (a number and us, ms or s: e.g. 50ms, 1.5s)"),
        ("99999999999h", "invalid duration '99999999999h' (a number and us, ms or s: "),
        ("99999999999s", "duration '99999999999s' out of range (more than 0, at most 60s)"),
        ("9" * 400 + "ms", "out of range (more than 0, at most 60s)"),
        ("0ms", "duration '0ms' out of range"),
        ("nan", "invalid duration 'nan'"),
    ],
)
def test_cli_bad_durations_are_usage_errors(text, says):
    proc = cli("delay", "mypod", text)
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert line.startswith("argument DURATION: ") and says in line, line


@pytest.mark.parametrize("args", [["exec", "nosuch", "--", "true"], ["delay", "nosuch", "50ms"]])
def test_cli_unknown_pod_is_a_usage_error_for_anyone(args):
    """Checked before root is: a typo is a usage error whoever types it."""
    proc = run_unprivileged(args) if os.geteuid() == 0 else cli(*args)
    assert proc.returncode == 2
    assert one_error_line(proc) == (
        "unknown lab pod 'nosuch' (lab pods: default/mypod, default/web, shop/frontend, "
        "shop/backend, kube-system/coredns)"
    )


def test_cli_exec_without_a_command_is_a_usage_error():
    proc = cli("exec", "mypod", "--")
    assert proc.returncode == 2
    assert one_error_line(proc) == "lab exec needs a command: podsight lab exec POD -- CMD..."


@pytest.mark.parametrize(
    "args", [["up"], ["down"], ["status"], ["exec", "mypod", "--", "true"], ["delay", "web", "1s"]]
)
def test_cli_without_root_is_one_line_exit_1(args):
    """Not root is a failure at run time (exit 1), not a usage error (exit 2)."""
    proc = run_unprivileged(args) if os.geteuid() == 0 else cli(*args)
    assert proc.returncode == 1
    assert one_error_line(proc) == "podsight lab needs root (CAP_NET_ADMIN)"


def run_unprivileged(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``podsight lab ARGS`` as user nobody, from root.

    This interpreter may live where nobody cannot read it (a pyenv under
    /root); then a system python of the same version runs podsight with our
    source and site-packages on its path.
    """
    nobody = {"user": 65534, "group": 65534, "extra_groups": []}
    argv = ["-m", "podsight.cli.main", "lab", *args]
    try:
        return subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                              timeout=60, env=child_env(), **nobody)  # fmt: skip
    except PermissionError:
        pass
    python = shutil.which(f"python{sys.version_info[0]}.{sys.version_info[1]}",
                          path="/usr/local/bin:/usr/bin:/bin")  # fmt: skip
    assert python, "no python that user nobody can run"
    site = sysconfig.get_paths()["purelib"]
    env = child_env({"PYTHONPATH": os.pathsep.join([child_env()["PYTHONPATH"], site])})
    return subprocess.run([python, *argv], capture_output=True, text=True, timeout=60,
                          env=env, **nobody)  # fmt: skip


@pytest.mark.parametrize("args", [["--help"], ["lab", "--help"], ["lab", "delay", "web", "-5ms"]])
def test_podsight_help_and_lab_import_neither_numpy_nor_ebpf(args):
    proc, modules = podsight_imports(*args)
    assert proc.returncode == (2 if "-5ms" in args else 0), proc.stderr
    assert "podsight.cli.lab" in modules
    assert_light(modules)


@pytest.mark.parametrize(
    "args", [["--help"], ["exec", "nosuch", "--", "true"], ["delay", "web", "-5ms"]]
)
def test_lab_side_imports_neither_numpy_nor_ebpf(args):
    proc, modules = lab_side_imports(*args)
    assert proc.returncode == (0 if args == ["--help"] else 2), proc.stderr
    if args != ["--help"]:
        assert "podsight.lab.lab" in modules  # the lab itself ran, not only its parser
    assert_light(modules)
