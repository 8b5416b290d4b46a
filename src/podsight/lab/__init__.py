"""The lab: a Kubernetes node simulated with network namespaces, for demos and tests.

``Lab().up()`` builds one node (the root netns, with bridge ``psl0``), five
pods in their own netns (one of them the cluster DNS, see
:mod:`podsight.lab.dns`), two ClusterIP Services and an "external" host, and
writes a Kubernetes-shaped inventory that identity code reads like a real
cluster's. See :mod:`podsight.lab.topology` for the whole picture, and
:mod:`podsight.lab.lab` for the modules that build, check and remove it.
"""

from __future__ import annotations

from podsight.lab.delay import DelayLine, delayed, parse_duration
from podsight.lab.health import HostStatus
from podsight.lab.lab import Lab
from podsight.lab.state import DEFAULT_DIR, DIR_ENV
from podsight.lab.topology import (
    EXTERNAL,
    EXTERNAL_BLACKHOLE,
    EXTERNAL_UNREACHABLE,
    EXTERNAL_WEB,
    PODS,
    SERVICES,
    ExternalHost,
    LabPod,
    LabService,
)

#: The name the brief's callers may use for a status row.
PodStatus = HostStatus

__all__ = [
    "DEFAULT_DIR",
    "DIR_ENV",
    "EXTERNAL",
    "EXTERNAL_BLACKHOLE",
    "EXTERNAL_UNREACHABLE",
    "EXTERNAL_WEB",
    "PODS",
    "SERVICES",
    "DelayLine",
    "ExternalHost",
    "HostStatus",
    "Lab",
    "LabPod",
    "LabService",
    "PodStatus",
    "delayed",
    "parse_duration",
]
