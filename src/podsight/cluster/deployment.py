"""What ``kubectl podsight deploy`` puts on a cluster, by name: the one place that knows.

Every object carries ``app.kubernetes.io/part-of=podsight`` (``undeploy`` deletes
by it); the agent pods carry ``app.kubernetes.io/name=podsight-agent`` (the
DaemonSet's selector, and how discovery finds them). deploy/*.yaml must agree.
"""

from __future__ import annotations

from podsight.cluster.endpoints import DEFAULT_PORT

PART_OF = "app.kubernetes.io/part-of"
PART_OF_VALUE = "podsight"
LABEL_SELECTOR = f"{PART_OF}={PART_OF_VALUE}"
AGENT_SELECTOR = "app.kubernetes.io/name=podsight-agent"
NAMESPACE = "podsight"
DAEMONSET = "podsight-agent"
#: The agent's gRPC port on the pod's loopback (deploy/daemonset.yaml's --listen).
AGENT_PORT = DEFAULT_PORT
