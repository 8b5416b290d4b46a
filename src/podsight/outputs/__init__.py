"""Outputs shared by all gadgets: table, JSON lines (more come: sqlite, pcapng, prometheus)."""
