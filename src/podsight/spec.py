"""What a gadget declares about itself: its command, its parameters, where its code is.

A gadget is one folder under ``podsight/gadgets/``; its ``__init__.py``
holds a :class:`GadgetSpec` and nothing heavy, so that ``podsight --help``
can list every gadget and its flags without importing numpy, the eBPF
binding or the gadget's own code. The CLI turns the declarations into flags
(``podsight.cli.gadget``); the gadget never sees argparse, only the parsed
values, so a flag travels down the layers and never back up (Inspektor
Gadget's ``gadget.yaml`` params play the same role).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Kind:
    """The type of a parameter's value; ``podsight.cli.args`` has one parser per kind.

    ``lo``/``hi`` bound numbers (sizes in bytes, durations in nanoseconds),
    ``choices`` lists the accepted words of a choice.
    """

    name: str
    lo: int | None = None
    hi: int | None = None
    choices: tuple[str, ...] = ()


FLAG = Kind("flag")
TEXT = Kind("text")
NAMES = Kind("names")  # comma list of names or shell patterns
PORT = Kind("port")
PID = Kind("pid")
CIDRS = Kind("cidrs")  # comma list of CIDRs or addresses
NETNS = Kind("netns")  # comma list of inodes or names under /var/run/netns


def duration(lo_ns: int = 0, hi_ns: int = (1 << 63) - 1) -> Kind:
    """A duration (``5ms``, ``1.5s``, ``2m``), parsed to nanoseconds."""
    return Kind("duration", lo_ns, hi_ns)


def seconds(hi_s: int = 366 * 86400) -> Kind:
    """A positive duration, parsed to float seconds (``30``, ``30s``, ``2m``)."""
    return Kind("seconds", 1, hi_s * 1_000_000_000)


def size(lo: int = 1, hi: int = 1 << 50) -> Kind:
    """A byte count with an optional unit (``4096``, ``500K``, ``50M``, ``1G``)."""
    return Kind("size", lo, hi)


def power_of_two(lo: int, hi: int) -> Kind:
    """A power of two in [lo, hi], with an optional unit (``4M``)."""
    return Kind("pow2", lo, hi)


def integer(lo: int, hi: int) -> Kind:
    return Kind("int", lo, hi)


def choice(*words: str) -> Kind:
    return Kind("choice", choices=words)


@dataclass(frozen=True)
class Param:
    """One flag of one gadget: ``--min-latency 5ms``.

    ``dest`` is the key of the parsed value (default: the long flag with
    dashes as underscores); ``default`` is the value when the flag is absent.
    A name without a leading dash (``("expression",)``) is a positional
    argument of any number of words, handed over as a list.
    ``filter``: the record attribute a user-space filter built from this flag
    tests (``NAMES``: the attribute is one of the names; ``CIDRS``: the
    address attribute is in one of the networks); None for a flag the gadget
    uses itself (most run in the kernel).
    """

    flags: tuple[str, ...]
    help: str
    kind: Kind = TEXT
    default: Any = None
    metavar: str | None = None
    dest: str | None = None
    filter: str | None = None

    @property
    def key(self) -> str:
        if self.dest:
            return self.dest
        long = next((f for f in self.flags if f.startswith("--")), self.flags[0])
        return long.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class TriggerSpec:
    """What a gadget offers other gadgets as a stop trigger (``--until-failed-connect``).

    Any gadget with the ``"triggers"`` flag group gets ``flag [DELAY]``: this
    gadget then runs beside it with ``values`` over its parameters' defaults,
    and the run stops ``DELAY`` (default ``delay``) seconds after the first
    record of a selected pod whose attribute ``attr`` is one of ``matches``.
    """

    flag: str
    help: str
    attr: str
    matches: tuple[str, ...]
    delay: float = 2.0
    values: Mapping[str, Any] = field(default_factory=dict)
    #: How the firing record is told (``{result} connect {src} -> {dst}``), from its
    #: attributes; endpoints print in the usual notation.
    describe: str = ""


@dataclass(frozen=True)
class GadgetSpec:
    """A gadget as the CLI and the pipeline see it before it is imported.

    - ``command``: the words that run it (``("trace", "tcpconnect")``, ``("flows",)``).
    - ``factory``: ``"module:function"``, imported only to run it; the function
      takes the :class:`podsight.pipeline.RunContext` and returns the gadget.
    - ``flag_groups``: shared flag sets the gadget takes beyond its own
      ``params``: ``"rules"`` (netobserv-style filter rules joined with ``or``),
      ``"interfaces"`` (``--interfaces``/``--exclude-interfaces``), ``"capture"``
      (the gadget returns :class:`podsight.pipeline.Frames`: ``-w FILE|-``,
      ``--ring``, ``--ring-size``, ``--force``, ``--max-packets``, ``--comments``,
      ``--tls-keylog``), ``"triggers"`` (every other gadget's :class:`TriggerSpec`).
      Every gadget takes the identity, output and limit flags.
    - ``live``: the live table is the default output on a terminal.
    - ``record_files``: its records can be written (``-o json``, ``--json FILE``,
      ``--sqlite FILE``); False for a gadget whose records are for the live view
      only because its output is a capture file (packets), so the CLI offers none
      of those flags.
    - ``interval``: the gadget reports in intervals (``--interval``), with
      this default in seconds; None for per-event gadgets.
    """

    name: str
    command: tuple[str, ...]
    help: str
    description: str
    factory: str
    params: tuple[Param, ...] = ()
    flag_groups: frozenset[str] = frozenset()
    live: bool = False
    record_files: bool = True
    interval: float | None = None
    noun: str = "events"  # what the summary counts: "3 events", "14 flow records"
    #: The gadget reports records still open at the end ("2 pending" in the summary).
    reports_pending: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: ``-p NAME`` (an exact name, not a pattern) that names no known pod is bad input
    #: (exit 2) instead of a warning that waits for the pod.
    strict_pods: bool = False
    #: Stop triggers this gadget offers to the others (see :class:`TriggerSpec`).
    triggers: tuple[TriggerSpec, ...] = ()
