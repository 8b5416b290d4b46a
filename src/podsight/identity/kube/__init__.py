"""The Kubernetes source of identity: pods, services and nodes by IP, kept current by watches.

``KubeCache.connect(kubeconfig, context).start()`` follows the cluster the
way kubectl would reach it; ``wait_synced()`` then ``pod_by_ip(ip)`` and
friends are dict hits, safe to call per event from any thread.
"""

from podsight.identity.kube.cache import KubeCache
from podsight.identity.kube.config import KubeConfig, load_config
from podsight.identity.kube.informer import InformerHealth
from podsight.identity.kube.objects import NodeInfo, ServiceInfo, ServicePort

__all__ = [
    "InformerHealth",
    "KubeCache",
    "KubeConfig",
    "NodeInfo",
    "ServiceInfo",
    "ServicePort",
    "load_config",
]
