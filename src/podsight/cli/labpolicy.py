"""``podsight lab policy apply|delete|list`` and ``podsight lab probe``.

NetworkPolicies enforced by the lab as a CNI would (:mod:`podsight.lab.enforce`),
and a truth table of who reaches whom (:mod:`podsight.lab.probe`). Bad input
(an invalid policy, a bad port list) is exit status 2 before anything needs
root; a lab that is not up is exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from podsight.cli import args as A
from podsight.errors import UserError

Handler = Callable[[argparse.Namespace], int]
MAX_PROBE_TIMEOUT_NS = 60 * 1_000_000_000


def register(commands: Any, one_line: Callable[[Handler], Handler]) -> None:
    policy = commands.add_parser(
        "policy", help="enforce NetworkPolicies in the lab (nftables), as a CNI would",
        description="Apply NetworkPolicies to the lab's pods: compiled to nftables rules on the "
                    "node, so connections they do not allow are dropped (TCP connects time "
                    "out). Traffic between a pod and the node is always allowed.")
    what = policy.add_subparsers(dest="policy_command", metavar="COMMAND")
    what.required = True
    p = what.add_parser("apply", help="add the policies in PATH (a file or a directory)")
    p.add_argument("path", metavar="PATH",
                   help="NetworkPolicies: a file (one, several documents, or a List) or a "
                        "directory of *.yaml, *.yml, *.json")
    p.set_defaults(func=one_line(_apply))
    p = what.add_parser("delete", help="remove policies from the lab")
    p.add_argument("--all", action="store_true", required=True,
                   help="remove every policy (the only way, for now)")
    p.set_defaults(func=one_line(_delete))
    p = what.add_parser("list", help="the policies in force and the pods they isolate")
    p.set_defaults(func=one_line(_list))

    p = commands.add_parser(
        "probe", help="who can reach whom: every lab pod to every lab pod, in parallel",
        description="Connect from every lab pod to every lab pod on each port and protocol, "
                    "all at once, and print a truth table (or -o json: one object per probe).")
    p.add_argument("--ports", type=_ports, metavar="PORT[,PORT]",
                   help="ports to probe (default: every container port of the lab's pods)")
    p.add_argument("--protocols", type=_protocols, default=("tcp", "udp"), metavar="tcp,udp",
                   help="protocols (default tcp,udp; this kernel has no SCTP sockets)")
    p.add_argument("--timeout", type=lambda v: A.seconds(v, hi=MAX_PROBE_TIMEOUT_NS),
                   default=1.0, metavar="DURATION",
                   help="how long a probe waits for an answer (default 1s)")
    p.add_argument("--ip", type=_families, default=(4,), metavar="4|6|4,6",
                   help="address families to probe (default 4)")
    p.add_argument("-o", "--output", choices=("columns", "json"), default="columns",
                   help="columns: truth tables (default); json: one object per probe")
    p.set_defaults(func=one_line(_probe))


def _ports(value: str) -> tuple[int, ...]:
    items = [v for v in value.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError("needs at least one port")
    return tuple(dict.fromkeys(A.port(v) for v in items))


def _protocols(value: str) -> tuple[str, ...]:
    items = [v.strip().lower() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in ("tcp", "udp")]
    if bad or not items:
        why = " (this kernel has no SCTP sockets)" if "sctp" in bad else ""
        raise argparse.ArgumentTypeError(f"invalid protocols {value!r}: tcp, udp{why}")
    return tuple(dict.fromkeys(items))


def _families(value: str) -> tuple[int, ...]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items or any(v not in ("4", "6") for v in items):
        raise argparse.ArgumentTypeError(f"invalid --ip {value!r}: 4, 6 or 4,6")
    return tuple(dict.fromkeys(int(v) for v in items))


def _lab() -> Any:
    from podsight.lab import Lab
    from podsight.lab.system import require_root

    require_root()
    return Lab()


def _apply(args: argparse.Namespace) -> int:
    from podsight.analysis.policy.policies import load
    from podsight.lab import Lab, enforce

    load(args.path, "lab policy apply")  # bad input first: exit 2, before root
    new, applied = enforce.apply(Lab(), args.path)
    refs = {p.ref for p in new.policies}
    for a in applied:
        if a.policy.ref in refs:
            pods = ", ".join(a.pods) or "no pod"
            sys.stdout.write(f"networkpolicy {a.policy.ref} applied (isolates {pods})\n")
    if new.skipped:
        sys.stderr.write(f"note: {args.path}: skipped {new.skipped_text()} (not "
                         "NetworkPolicies)\n")
    if not new.policies:
        sys.stderr.write(f"note: {args.path}: no NetworkPolicy in it; nothing changed\n")
    return 0


def _delete(args: argparse.Namespace) -> int:
    from podsight.lab import enforce

    count = enforce.delete_all(_lab())
    sys.stderr.write(f"{count} polic{'ies' if count != 1 else 'y'} deleted; the lab's pods are "
                     "not isolated any more\n")
    return 0


def _list(args: argparse.Namespace) -> int:
    from podsight.lab import enforce

    rows = [("NAMESPACE", "NAME", "TYPES", "ISOLATES")]
    for a in enforce.listing(_lab()):
        types = ",".join(sorted(a.policy.types))
        rows.append((a.policy.namespace, a.policy.name, types, ", ".join(a.pods) or "-"))
    if len(rows) == 1:
        sys.stderr.write("no policies applied to the lab\n")
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        sys.stdout.write("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True))
                         + "  " + r[3] + "\n")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from podsight.lab import probe
    from podsight.lab.errors import LabError

    lab = _lab()
    if not lab.is_up():
        raise LabError("the lab is not up (run: podsight lab up)")
    pods = lab.pods
    ports = args.ports or tuple(sorted({n for p in pods for _, n, _ in p.ports}
                                       | {n for p in pods for n in (p.http_port, p.dns_port)
                                          if n}))
    if not ports:
        raise UserError("the lab's pods have no container ports: give --ports")
    results = probe.run(pods, probe.all_pairs(pods, ports, args.protocols, args.ip),
                        args.timeout)
    if args.output == "json":
        for r in results:
            sys.stdout.write(json.dumps(r.json(), separators=(",", ":")) + "\n")
    else:
        sys.stdout.write(probe.table(results, pods))
    return 0
