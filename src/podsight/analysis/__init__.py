"""Analyses over the records of one or more gadgets: the traffic graph."""
