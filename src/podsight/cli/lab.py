"""``podsight lab``: build, inspect, use and tear down the netns-based simulated cluster.

Bad input is one line and exit status 2 (an unknown pod, a bad duration, no
command), checked before anything needs root; a failure while running is one
line and exit status 1 (no root, the lab not up, a tool failing); ``lab
exec`` passes on its command's exit status, or the shell's 127/126 for a
command that could not start. The lab itself is imported only when a
subcommand runs, so ``podsight --help`` does not pay for it.
"""

from __future__ import annotations

import argparse
import errno
import functools
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from podsight.errors import UserError

if TYPE_CHECKING:
    from podsight.lab import Lab

#: What argparse takes for a negative number rather than an option: ``-5ms`` included,
#: so that a negative DURATION gets its own error instead of "DURATION is required".
#: (Python 3.13's own pattern; 3.11's matches only bare numbers like ``-5``.)
_NEGATIVE_VALUE = re.compile(r"-\.?\d")

Handler = Callable[[argparse.Namespace], int]


def _duration(text: str) -> float:
    """argparse type for DURATION: a bad value is argparse's one-line error, exit 2."""
    from podsight.lab.delay import parse_duration

    try:
        return parse_duration(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(groups: Any) -> None:
    lab = groups.add_parser(
        "lab",
        help="a simulated Kubernetes node made of network namespaces",
        description=(
            "Build a small simulated cluster on this machine: the root netns plays the node, "
            "five pods live in their own network namespaces on bridge psl0 (one of them, "
            "kube-system/coredns, is the cluster DNS behind 10.96.0.53, served by dnsmasq), "
            "and an external host (203.0.113.10, http and https) sits behind the node. "
            "Nothing is ever routed out of the machine. Needs root."
        ),
    )
    commands = lab.add_subparsers(dest="lab_command", metavar="COMMAND")
    commands.required = True

    p = commands.add_parser("up", help="build the lab (a no-op if it is already up)")
    p.add_argument("--topology", metavar="FILE",
                   help="build the lab's pods from a kind: List of Namespace and Pod objects "
                        "(kubectl get namespaces,pods -A -o yaml): labels, podIP, and a server "
                        "on every container port over TCP and UDP")
    p.set_defaults(func=_one_line(_up))

    p = commands.add_parser("down", help="remove everything the lab made")
    p.set_defaults(func=_one_line(_down))

    p = commands.add_parser("status", help="show the lab's pods and the external host")
    p.set_defaults(func=_one_line(_status))

    p = commands.add_parser(
        "exec",
        help="run a command inside a pod's network namespace",
        description=(
            "Run CMD inside POD's network namespace; exits with CMD's exit code "
            "(127: CMD not found, 126: CMD not executable, 128+N: CMD killed by signal N)."
        ),
    )
    p.add_argument("pod", metavar="POD", help="pod name or namespace/name")
    p.add_argument("command", metavar="CMD", nargs=argparse.REMAINDER, help="-- command...")
    p.set_defaults(func=_one_line(_exec))

    p = commands.add_parser(
        "delay",
        help="delay TCP packets a pod sends (until Ctrl-C)",
        description=(
            "Hold every TCP packet POD sends for DURATION before it goes out (NFQUEUE; this "
            "kernel has no netem). Runs in the foreground until Ctrl-C, then cleans up."
        ),
    )
    p.add_argument("pod", metavar="POD", help="pod name or namespace/name")
    p.add_argument("duration", metavar="DURATION", type=_duration, help="e.g. 50ms, 1s")
    p.set_defaults(func=_one_line(_delay))
    p._negative_number_matcher = _NEGATIVE_VALUE

    from podsight.cli.labpolicy import register as register_policy

    register_policy(commands, _one_line)


def _one_line(handler: Handler) -> Handler:
    """An OS error the lab did not foresee (a state directory it cannot write, ...) is one
    line and exit status 1, like every other runtime failure, not a traceback."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except BrokenPipeError:
            raise  # `podsight lab status | head`: the CLI's own business
        except OSError as exc:
            from podsight.lab.errors import LabError

            what = f"{exc.filename}: " if exc.filename else ""
            reason = exc.strerror or errno.errorcode.get(exc.errno or 0) or str(exc)
            raise LabError(f"{what}{reason}") from exc

    return run


def _lab(pod: str | None = None) -> Lab:
    """The lab, once ``pod`` (if given) names one of its pods and we are root.

    The pod is checked first: a typo is a usage error whoever types it.
    """
    from podsight.lab import Lab
    from podsight.lab.system import require_root

    lab = Lab()
    if pod is not None:
        lab.pod(pod)
    require_root()
    return lab


def _up(args: argparse.Namespace) -> int:
    topology = None
    if args.topology is not None:
        from podsight.lab.topologyfile import load

        topology = load(args.topology)  # bad input is exit 2, before anything needs root
        if topology.skipped:
            kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(topology.skipped.items()))
            sys.stderr.write(f"note: {args.topology}: skipped {kinds} (a lab topology is "
                             "Namespaces and Pods)\n")
    lab = _lab()
    if lab.is_up() and lab.built_from(topology):
        sys.stderr.write("lab was already up: nothing to do\n")
    lab.up(topology)
    reason = lab.dns_off_reason
    if reason:
        sys.stderr.write(f"note: the lab runs without cluster DNS: {reason}\n")
    _print_status(lab)
    return 0


def _down(args: argparse.Namespace) -> int:
    _lab().down()
    sys.stderr.write("lab is down\n")
    return 0


def _status(args: argparse.Namespace) -> int:
    _print_status(_lab())
    return 0


def _print_status(lab: Lab) -> None:
    from podsight.lab import EXTERNAL_BLACKHOLE, EXTERNAL_UNREACHABLE

    header = ("NAMESPACE", "POD", "NETNS", "IP", "IPV6", "VETH", "STATE")
    statuses = lab.status()
    rows = [header] + [
        (r.namespace, r.name, r.netns, r.ipv4, r.ipv6, r.veth, r.state) for r in statuses
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    out = sys.stdout
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)]
        out.write("  ".join([*cells, row[-1]]) + "\n")
    ext = lab.external
    out.write(
        f"\nnode {lab.node_name}: bridge psl0 10.244.0.1 fd00:244::1\n"
        f"external {ext.web}: http :{ext.http_port}, https :{ext.https_port} (self-signed); "
        f"{EXTERNAL_UNREACHABLE} unreachable; {EXTERNAL_BLACKHOLE} blackhole\n"
    )
    for svc in lab.services:
        protocols = "" if svc.protocols == ("TCP",) else "/" + "+".join(svc.protocols).lower()
        out.write(
            f"service {svc.ref}: {svc.cluster_ip}:{svc.port}{protocols} -> "
            f"{svc.target}:{svc.target_port}\n"
        )
    if lab.nameserver:
        out.write(
            f"dns kube-system/coredns (dnsmasq): pods use nameserver {lab.nameserver}; "
            f"names <svc>.<ns>.svc.cluster.local, <pod>.<ns>.pod.cluster.local "
            f"(all in {lab.dns_hosts_path}), NXDOMAIN for any other\n"
        )
    elif lab.dns_off_reason:
        out.write(f"dns off: {lab.dns_off_reason}\n")
    problems = lab.problems()
    if not problems:
        out.write(f"inventory {lab.inventory_path}\nlab is up\n")
    elif all(r.state == "Absent" for r in statuses):
        out.write("lab is down (run: podsight lab up)\n")
    else:
        out.write(f"lab is degraded: {problems[0]} (podsight lab up rebuilds it)\n")
    out.flush()


def _exec(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UserError("lab exec needs a command: podsight lab exec POD -- CMD...")
    lab = _lab(args.pod)
    sys.stdout.flush()
    proc: subprocess.CompletedProcess[Any] = lab.exec(args.pod, command)
    # Killed by signal N: the shell's 128+N, not Python's -N (which would exit as 256-N).
    return 128 - proc.returncode if proc.returncode < 0 else int(proc.returncode)


def _delay(args: argparse.Namespace) -> int:
    from podsight.lab.delay import delayed, format_duration
    from podsight.lab.errors import LabError
    from podsight.lab.system import first_line, netns_exists

    lab = _lab(args.pod)
    pod = lab.pod(args.pod)
    if not netns_exists(pod.netns):
        raise LabError(f"lab pod {pod.ref} is not running (run: podsight lab up)")
    with delayed(pod.netns, args.duration) as line:
        sys.stderr.write(
            f"delaying TCP sent by {pod.ref} by {format_duration(args.duration)}"
            " (Ctrl-C to stop)\n"
        )
        sys.stderr.flush()
        try:
            while line.alive():
                time.sleep(0.2)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the normal way to stop
            return 0
        why = ""
        if line.process.stderr is not None:
            why = first_line(line.process.stderr.read().decode(errors="replace"))
    raise LabError(f"delay helper exited: {why or 'no reason given'}")
