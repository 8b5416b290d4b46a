"""podsight: see what pods say on the wire (connects, flows, packets, policies)."""

__version__ = "0.1.0"
