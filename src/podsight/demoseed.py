"""The seed workflow of Inspektor Gadget's tcpconnect guide, done by podsight on the lab.

The guide traces a pod's connects, writes a restrictive NetworkPolicy by hand,
applies it, and checks that the allowed traffic still works while other
traffic now fails. Here every step is a podsight command, and one more step
makes it safe: the policy is checked against the recorded traffic before it
is enforced.

1. ``trace tcpconnect`` on mypod while it fetches the external site over
   HTTP (80) and HTTPS (443): both work;
2. ``advise network-policy`` writes mypod's policy from that trace;
3. ``policy check`` on the same trace: everything allowed (exit 0);
4. ``lab policy apply``: the lab enforces it (nftables, as a CNI would);
5. trace again: the same fetches still work, and a fetch from mypod to
   another address (the web Service) now fails: the client gives up after
   3 s, as the guide's ``wget -T 3`` does, and the trace says ``aborted``;
6. ``policy check`` on the second trace flags exactly that connection
   (exit 1); ``lab policy delete --all`` puts the lab back.

Used by ``make demo`` (:mod:`podsight.demo`) and by tests/test_policy_seed.py.
"""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from podsight.errors import UserError
from podsight.lab import EXTERNAL_WEB, Lab
from podsight.lab.topology import SERVICES

BLOCKED = next(s for s in SERVICES if s.ref == "default/web")
#: The guide's wget -T 3: the client's own connect timeout.
CLIENT_TIMEOUT = 3
FETCHES = [
    ("mypod fetches http://{web}/", ["curl", "-sS", "-o", "/dev/null", "-w",
                                     "  -> HTTP %{{http_code}}\\n", "http://{web}/"]),
    ("mypod fetches https://{web}/", ["curl", "-sSk", "-o", "/dev/null", "-w",
                                      "  -> HTTP %{{http_code}}\\n", "https://{web}/"]),
]
BLOCKED_FETCH = (
    f"mypod fetches http://{BLOCKED.cluster_ip}/ (the web Service), giving up after "
    f"{CLIENT_TIMEOUT} s",
    ["curl", "-sS", "-o", "/dev/null", "--connect-timeout", str(CLIENT_TIMEOUT),
     f"http://{BLOCKED.cluster_ip}/"])


class SeedFailed(UserError):
    exit_code = 1


@dataclass
class Seed:
    """What each step did, for the demo to show and a test to check."""

    policy_dir: Path
    before: Path
    after: Path
    fetches_before: list[int] = field(default_factory=list)  # exit codes of the fetches
    fetches_after: list[int] = field(default_factory=list)
    blocked_fetch: int = 0
    advise: subprocess.CompletedProcess[str] | None = None
    check_before: subprocess.CompletedProcess[str] | None = None
    apply: subprocess.CompletedProcess[str] | None = None
    check_after: subprocess.CompletedProcess[str] | None = None
    trace_after: str = ""


def podsight(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "podsight.cli.main", *argv],
                          capture_output=True, text=True, timeout=300)


def replay(lab: Lab, workdir: Path, say: Callable[[str], None], out: TextIO,
           ready_timeout: float = 30.0) -> Seed:
    """Run the scenario on a lab that is up (the default one); undo the policy at the end."""
    from podsight.lab import enforce

    inventory = str(lab.inventory_path)
    seed = Seed(workdir / "policies", workdir / "before.db", workdir / "after.db")
    fill = {"web": EXTERNAL_WEB}
    say("the seed scenario: trace mypod, write its NetworkPolicy from what it did, check it, "
        "enforce it")
    seed.fetches_before = _traced(lab, seed.before, [(t, a) for t, a in FETCHES], fill, say, out,
                                  ready_timeout)[0]
    seed.advise = _show(say, out, "advise", "network-policy", "--from", str(seed.before),
                        "--objects", inventory, "--output-dir", str(seed.policy_dir))
    for path in sorted(seed.policy_dir.glob("*.yaml")):
        out.write(path.read_text())
    seed.check_before = _show(say, out, "policy", "check", "--policies", str(seed.policy_dir),
                              "--from", str(seed.before), "--objects", inventory)
    seed.apply = _show(say, out, "lab", "policy", "apply", str(seed.policy_dir))
    try:
        codes, trace = _traced(lab, seed.after, [*FETCHES, BLOCKED_FETCH], fill, say, out,
                               ready_timeout)
        seed.fetches_after, seed.blocked_fetch = codes[:-1], codes[-1]
        seed.trace_after = trace
        seed.check_after = _show(say, out, "policy", "check", "--policies",
                                 str(seed.policy_dir), "--from", str(seed.after), "--objects",
                                 inventory)
    finally:
        say("podsight lab policy delete --all")
        enforce.delete_all(lab)
    return seed


def _show(say: Callable[[str], None], out: TextIO, *argv: str
          ) -> subprocess.CompletedProcess[str]:
    say("podsight " + shlex.join(argv))
    proc = podsight(*argv)
    out.write(proc.stdout + proc.stderr + f"  (exit status {proc.returncode})\n")
    out.flush()
    return proc


def _traced(lab: Lab, db: Path, steps: list[tuple[str, list[str]]], fill: dict[str, str],
            say: Callable[[str], None], out: TextIO, ready_timeout: float
            ) -> tuple[list[int], str]:
    """Run ``steps`` in mypod under ``trace tcpconnect --sqlite db``; their exit codes and
    what the trace printed."""
    from podsight.demo import _await_ready, _stop

    argv = ["trace", "tcpconnect", "--netns", lab.pod("mypod").netns, "--sqlite", str(db)]
    say("podsight " + shlex.join(argv))
    proc = subprocess.Popen([sys.executable, "-m", "podsight.cli.main", *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    codes: list[int] = []
    try:
        early = _await_ready(proc, "podsight " + shlex.join(argv), "tracing", ready_timeout)
        for title, step in steps:
            say(title.format(**fill))
            done = lab.exec("mypod", [a.format(**fill) for a in step], check=False,
                            capture_output=True, text=True)
            out.write(done.stdout + done.stderr)
            codes.append(done.returncode)
        # Every outcome is in the ring buffer once the fetch returned (the kernel reports an
        # abort in the close() that ends it); Ctrl-C's final drain reads them all.
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        _stop(proc)
    text = stdout.decode(errors="replace")
    out.write(text + (early + stderr).decode(errors="replace"))
    if proc.returncode != 0:
        raise SeedFailed(f"podsight {shlex.join(argv)} exited {proc.returncode}")
    return codes, text
