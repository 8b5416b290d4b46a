"""Cluster mode, the user's side: ``kubectl podsight ...``.

This package deploys the agent DaemonSet (:mod:`.deploy`), finds the agent
pods and reaches them through the API server's pod port-forward
(:mod:`.portforward`), and talks to Kubernetes through the user's own
``kubectl`` (:mod:`.kubectl`): a kubectl plugin always has one, with the
user's credentials, plugins and proxies already set up.
"""

from __future__ import annotations

#: The label every object ``deploy`` creates carries; ``undeploy`` deletes by it.
PART_OF = "app.kubernetes.io/part-of"
PART_OF_VALUE = "podsight"
LABEL_SELECTOR = f"{PART_OF}={PART_OF_VALUE}"
#: The agent pods' own label (the DaemonSet's selector).
AGENT_SELECTOR = "app.kubernetes.io/name=podsight-agent"
NAMESPACE = "podsight"
DAEMONSET = "podsight-agent"
#: The agent's gRPC port, on the pod's loopback (deploy/daemonset.yaml).
AGENT_PORT = 9473
