"""Cluster mode: ``podsight agent`` (one per node) and the client that merges nodes.

- :mod:`.endpoints`: the plain data the client takes (:class:`NodeEndpoint`) and the
  address rules of the agent (loopback or the pod IP only);
- :mod:`.auth`: TokenReview + SubjectAccessReview against the API server;
- :mod:`.session`: one gadget run on the agent, its records sent in batches
  (:mod:`.batches`), with table cells and SQLite values by the gadget's schema when
  asked (:mod:`.schemarows`);
- :mod:`.server`: the gRPC service and the health endpoints (``podsight agent``);
- :mod:`.merge`: sequence accounting and the time-ordered merge of node streams;
- :mod:`.client` and :mod:`.sinks`: running a gadget on every node, writing the outputs;
- :mod:`.serve`: ``kubectl podsight serve``, the merged streams behind the local graph
  server;
- :mod:`.cli`, :mod:`.deploy`, :mod:`.deployment`, :mod:`.kubectl`, :mod:`.portforward`:
  ``kubectl-podsight`` itself, ``deploy``/``undeploy``/``agents``, and finding the agent
  pods and reaching each through an API server port-forward.

The protocol is ``agent.proto`` (compiled to ``agent_pb2``); see docs/cluster.md.
"""
