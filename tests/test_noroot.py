"""Everything not marked ``root`` passes as an unprivileged user: ``pytest -m 'not root'``
runs anywhere. This test runs those tests as nobody (uid 65534, no capabilities)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

HERE = Path(__file__).resolve().parent
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"]


def python_for_nobody() -> tuple[str, dict[str, str]]:
    """Debian's Python, with this tree and this environment's packages on its path: the
    interpreter running the tests may live where nobody cannot reach (a pyenv under /root)."""
    paths = [str(HERE.parent / "src"), sysconfig.get_paths()["purelib"],
             sysconfig.get_paths()["platlib"]]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/nonexistent",
           "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": os.pathsep.join(paths)}
    return "/usr/bin/python3", env


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
def test_everything_not_marked_root_passes_as_nobody():
    python, env = python_for_nobody()
    argv = [*NOBODY, python, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
            "-m", "not root", str(HERE)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd="/", timeout=900)
    assert proc.returncode == 0, proc.stdout[:6000] + proc.stderr[-2000:]
    passed = [line for line in proc.stdout.splitlines() if line.startswith("PASSED")]
    for name in ("test_layout_agrees_with_the_objects_btf",
                 "test_loading_without_privilege_is_permission_denied",
                 "test_templates_write_what_the_encoder_writes", "test_bad_input_is_one_line"):
        assert any(name in line for line in passed), name
    assert "SKIPPED" not in proc.stdout, proc.stdout[-4000:]
