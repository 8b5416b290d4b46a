"""`make demo`: a simulated cluster, two gadgets on it, then a clean teardown.

1. ``trace tcpconnect``: mypod fetches a page from the external web server
   over port 80 and 443 (both succeed), then tries another external address,
   which fails; the trace shows all three with their latency and result.
2. ``flows --enable-all``: shop/frontend resolves a Service name and a name
   that does not exist through the cluster DNS, then calls the web Service;
   the flows show bytes, packets, TCP flags, RTT and the DNS answers.

A lab that was already up is left up (the demo did not build it).
Run as root: ``python -m podsight.demo``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from podsight.errors import UserError
from podsight.lab import EXTERNAL_UNREACHABLE, EXTERNAL_WEB, Lab
from podsight.lab.topology import SERVICES

WEB_SERVICE_IP = next(s.cluster_ip for s in SERVICES if s.ref == "default/web")
DNS_SERVICE_IP = next(s.cluster_ip for s in SERVICES if s.ref == "kube-system/kube-dns")

TRACE_STEPS = [
    ("mypod fetches http://{web}/ from the external web server",
     ["curl", "-sS", "-o", "/dev/null", "-w", "  -> HTTP %{{http_code}}\\n", "http://{web}/"]),
    ("mypod fetches https://{web}/ (TLS, self-signed)",
     ["curl", "-sSk", "-o", "/dev/null", "-w", "  -> HTTP %{{http_code}}\\n", "https://{web}/"]),
    ("mypod tries another external address, {bad}, which is unreachable",
     ["curl", "-sS", "-o", "/dev/null", "--connect-timeout", "5", "http://{bad}/"]),
]

FLOWS_STEPS = [
    ("frontend resolves web.default.svc.cluster.local (NOERROR)",
     [sys.executable, "-m", "podsight.lab.dnsquery", "{dns}", "web.default.svc.cluster.local"]),
    ("frontend resolves nothing-here.example over TCP (NXDOMAIN)",
     [sys.executable, "-m", "podsight.lab.dnsquery", "--tcp", "{dns}", "nothing-here.example"]),
    ("frontend calls the web Service, http://{svc}/",
     ["curl", "-sS", "-o", "/dev/null", "-w", "  -> HTTP %{{http_code}}\\n", "http://{svc}/"]),
]


def say(text: str) -> None:
    sys.stderr.write(f"\033[1m==> {text}\033[0m\n" if sys.stderr.isatty() else f"==> {text}\n")
    sys.stderr.flush()


def gadget(lab: Lab, pod: str, argv: list[str], ready_word: str,
           steps: list[tuple[str, list[str]]], fill: dict[str, str]) -> None:
    """Start a podsight command, run the steps in ``pod``, stop it with Ctrl-C's signal."""
    say("podsight " + " ".join(argv))
    proc = subprocess.Popen([sys.executable, "-m", "podsight.cli.main", *argv],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        ready = proc.stderr.readline()
        while ready.startswith("podsight: no pod interfaces"):
            ready = proc.stderr.readline()
        if ready_word not in ready:
            raise UserError(f"podsight {argv[0]} did not start: {ready.strip() or 'no output'}")
        for title, step in steps:
            say(title.format(**fill))
            lab.exec(pod, [a.format(**fill) for a in step], check=False,
                     stdout=subprocess.DEVNULL if step[0] == sys.executable else None)
            time.sleep(0.3)
        time.sleep(1.2)  # one more flows interval
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        sys.stderr.write(err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run() -> int:
    if os.geteuid() != 0:
        raise UserError("the demo builds network namespaces: run it as root (sudo make demo)")
    lab = Lab()
    was_up = lab.is_up()
    say("building the lab: a node (this host), pods in network namespaces, an external host")
    lab.up()
    try:
        for pod in lab.pods:
            ref = f"p/{pod.namespace}/{pod.name}"
            sys.stderr.write(f"    {ref:<24} {pod.ipv4:<12} netns {pod.netns}\n")
        mypod = lab.pod("mypod")
        fill = {"web": EXTERNAL_WEB, "bad": EXTERNAL_UNREACHABLE, "dns": DNS_SERVICE_IP,
                "svc": WEB_SERVICE_IP}
        gadget(lab, "mypod", ["trace", "tcpconnect", "--netns", mypod.netns], "tracing",
               TRACE_STEPS, fill)
        gadget(lab, "frontend", ["flows", "--enable-all", "--no-tui", "-n", "shop",
                                 "-o", "columns=src,dst,proto,bytes,packets,flags,rtt,dns"],
               "capturing flows", FLOWS_STEPS, fill)
    finally:
        if not was_up:
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
