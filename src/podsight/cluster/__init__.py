"""Cluster mode: ``podsight agent`` (one per node) and the client that merges nodes.

- :mod:`.endpoints`: the plain data the client takes (:class:`NodeEndpoint`) and the
  address rules of the agent (loopback or the pod IP only);
- :mod:`.auth`: TokenReview + SubjectAccessReview against the API server;
- :mod:`.session`: one gadget run on the agent, its records sent in batches;
- :mod:`.server`: the gRPC service and the health endpoints (``podsight agent``);
- :mod:`.merge`: sequence accounting and the time-ordered merge of node streams;
- :mod:`.client` and :mod:`.sinks`: running a gadget on every node, writing the outputs.

The protocol is ``agent.proto`` (compiled to ``agent_pb2``); see docs/cluster.md.
"""
