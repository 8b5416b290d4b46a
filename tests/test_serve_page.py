"""The service-map page of `podsight serve` in headless Chromium: it loads with no network
beyond podsight itself and shows the lab's nodes; the screenshot is kept as an artifact."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conns import Server, exchange
from servehelp import Serve

pytestmark = pytest.mark.root

PORT = 7070
ARTIFACTS = Path(os.environ.get("PODSIGHT_ARTIFACTS", Path(__file__).parent / "artifacts"))


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with every proxy and DNS lookup pointed nowhere except loopback:
    the page cannot load anything from the network."""
    exe = shutil.which("chromium")
    assert exe, "chromium is missing: run 'make setup-test'"
    return subprocess.run(
        [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-extensions", "--disable-background-networking",
         "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
         "--virtual-time-budget=8000", "--window-size=1280,800", *args],
        capture_output=True, text=True, timeout=120, check=False)


def test_page_draws_the_lab_offline_and_keeps_a_screenshot(lab):
    web = lab.pod("web")
    with Server(lab, "web", PORT), Serve("-n", "default") as s:
        exchange(lab, "mypod", web.ipv4, PORT, req=10, resp=10, count=3)
        s.wait_edge(f"p/default/mypod->p/default/web:{PORT}", connections=3)
        status, html = s.get("/")
        assert status == 200
        # Everything the page loads comes from podsight itself.
        assert b"http://" not in html and b"https://" not in html and b"//cdn" not in html
        dom = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and 'data-loaded="yes"' not in dom:
            dom = chromium("--dump-dom", s.base + "/").stdout
        assert 'data-loaded="yes"' in dom, dom[-2000:]
        assert "mypod (default)" in dom and "web (default)" in dom
        assert "p/default/mypod → p/default/web:7070 3 conns" in dom
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "service-map.png"
        shot.unlink(missing_ok=True)
        chromium(f"--screenshot={shot}", s.base + "/")
        assert shot.exists() and shot.stat().st_size > 10_000
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
