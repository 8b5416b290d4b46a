"""Analyses over what podsight records: NetworkPolicy advice and checks (:mod:`.policy`)
and the traffic graph over the records of one or more gadgets (:mod:`.graph`)."""
