"""Analyses over what podsight records: NetworkPolicy advice and checks (:mod:`.policy`)."""
