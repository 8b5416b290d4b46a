"""NetworkPolicy analysis: read policies, judge observed connections, write least-privilege ones.

- :mod:`.policies` reads manifests (files, directories, Lists) and checks them as the API
  server would; :mod:`.model` is what a policy means.
- :mod:`.world` says who is who (pods, namespaces, Services, nodes); :mod:`.records` reads
  what trace tcpconnect and flows recorded as connections; :mod:`.ends` resolves both ends.
- :mod:`.checker` judges a connection (``podsight policy check``); :mod:`.advisor` and
  :mod:`.render` write policies from connections (``podsight advise network-policy``).
"""

from podsight.analysis.policy.advisor import Advice, Advisor
from podsight.analysis.policy.checker import ALLOWED, DENIED, Checker, Side, Verdict
from podsight.analysis.policy.model import NetworkPolicy
from podsight.analysis.policy.policies import InvalidPolicy, PolicySet, load
from podsight.analysis.policy.records import Connection, Hint, Reader
from podsight.analysis.policy.world import Pod, Service, Unknown, World

__all__ = [
    "ALLOWED",
    "DENIED",
    "Advice",
    "Advisor",
    "Checker",
    "Connection",
    "Hint",
    "InvalidPolicy",
    "NetworkPolicy",
    "Pod",
    "PolicySet",
    "Reader",
    "Service",
    "Side",
    "Unknown",
    "Verdict",
    "World",
    "load",
]
