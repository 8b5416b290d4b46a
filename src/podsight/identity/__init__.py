"""Who is behind an address or a network namespace: pod, service, node, or raw.

One layer shared by every gadget (no gadget resolves identity itself). Hot
path lookups are dict hits; sources refresh their caches from watches or file
changes, never per event.
"""

from podsight.identity.endpoint import Endpoint, PodInfo
from podsight.identity.resolver import Resolver

__all__ = ["Endpoint", "PodInfo", "Resolver"]
