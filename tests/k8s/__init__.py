"""A real kube-apiserver + etcd for tests; see fixtures.py and the scripts here."""
