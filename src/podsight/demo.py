"""`make demo`: a simulated cluster, a trace, and the seed scenario, then a clean teardown.

mypod fetches a page from the external web server over port 80 and 443 (both
succeed), then tries another external address, which fails; the trace shows
all three with their latency and result. Run as root: ``python -m podsight.demo``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from podsight.errors import UserError
from podsight.lab import EXTERNAL_UNREACHABLE, EXTERNAL_WEB, Lab

STEPS = [
    ("mypod fetches http://{web}/ from the external web server",
     ["curl", "-sS", "-o", "/dev/null", "-w", "  -> HTTP %{{http_code}}\\n", "http://{web}/"]),
    ("mypod fetches https://{web}/ (TLS, self-signed)",
     ["curl", "-sSk", "-o", "/dev/null", "-w", "  -> HTTP %{{http_code}}\\n", "https://{web}/"]),
    ("mypod tries another external address, {bad}, which is unreachable",
     ["curl", "-sS", "-o", "/dev/null", "--connect-timeout", "5", "http://{bad}/"]),
]


def say(text: str) -> None:
    sys.stderr.write(f"\033[1m==> {text}\033[0m\n" if sys.stderr.isatty() else f"==> {text}\n")
    sys.stderr.flush()


def run() -> int:
    if os.geteuid() != 0:
        raise UserError("the demo builds network namespaces: run it as root (sudo make demo)")
    lab = Lab()
    say("building the lab: a node (this host), pods in network namespaces, an external host")
    lab.up()
    trace: subprocess.Popen[str] | None = None
    try:
        for pod in lab.pods:
            ref = f"p/{pod.namespace}/{pod.name}"
            sys.stderr.write(f"    {ref:<18} {pod.ipv4:<12} netns {pod.netns}\n")
        mypod = lab.pod("mypod")
        say(f"podsight trace tcpconnect --netns {mypod.netns}")
        trace = subprocess.Popen(
            [sys.executable, "-m", "podsight.cli.main", "trace", "tcpconnect",
             "--netns", mypod.netns],
            stderr=subprocess.PIPE, text=True,
        )
        assert trace.stderr is not None
        ready = trace.stderr.readline()
        if "tracing" not in ready:
            raise UserError(f"the trace did not start: {ready.strip() or 'no output'}")
        for title, argv in STEPS:
            fill = {"web": EXTERNAL_WEB, "bad": EXTERNAL_UNREACHABLE}
            say(title.format(**fill))
            lab.exec("mypod", [a.format(**fill) for a in argv], check=False)
            time.sleep(0.3)
        time.sleep(0.3)
        trace.send_signal(signal.SIGINT)
        _, err = trace.communicate(timeout=20)
        sys.stderr.write(err)
        trace = None
    finally:
        if trace is not None:
            trace.kill()
            trace.wait()
        say("tearing the lab down")
        lab.down()
    return 0


def main() -> int:
    try:
        return run()
    except UserError as exc:
        sys.stderr.write(f"podsight: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
