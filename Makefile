# podsight — `make demo` and `make test` are the two commands a newcomer runs.
# Both start with `make setup`, which installs what podsight needs at run time
# (Debian packages) and a virtualenv in .venv with podsight in it.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PODSIGHT := $(VENV)/bin/podsight

# Run time: libbpf, libpcap (compiles packets filter expressions), iproute2, nftables/iptables for the lab, curl+openssl for the demo.
RUNTIME_DEBS := libbpf1 libpcap0.8 iproute2 nftables iptables curl openssl procps dnsmasq-base
# Tests and benchmarks use real tools as oracles and load generators.
# bpftool: the leak check after every test session lists BPF links with it.
# tmux: the live view's end-to-end tests drive the real command in it (send-keys, capture-pane).
# containerd, runc, containernetworking-plugins (bridge, host-local), etcd-server: the real
# Kubernetes node of tests/k8s/node; debootstrap: the agent image's root filesystem.
TEST_DEBS := tshark tcpdump bpftrace bpftool iperf3 ethtool sqlite3 iputils-ping gcc libc6-dev tmux \
	containerd runc busybox-static podman golang-github-containerd-containerd-dev \
	prometheus chromium \
	containernetworking-plugins etcd-server debootstrap
# Rebuilding the eBPF objects (make bpf) needs a compiler and libbpf headers.
BPF_DEBS := clang llvm libbpf-dev linux-libc-dev

BPF_SRCS := $(wildcard src/podsight/gadgets/*/*.bpf.c)
BPF_OBJS := $(BPF_SRCS:.c=.o)
BPF_CFLAGS := -g -O2 -target bpf -Wall -Werror \
	-I/usr/include/$(shell $(CC) -dumpmachine 2>/dev/null || echo x86_64-linux-gnu) \
	-fdebug-prefix-map=$(CURDIR)=. -ffile-prefix-map=$(CURDIR)=.

.PHONY: setup setup-test k8s-apiserver k8s-node demo test lint bpf bpf-check clean

define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "make setup: run as root to install $$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -m venv $(VENV) || { echo "make setup: '$(PYTHON) -m venv' failed (apt-get install python3-venv)" >&2; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

setup:
	$(call apt_install,$(RUNTIME_DEBS))
	@$(MAKE) -s $(VENV)/.installed

setup-test: setup
	$(call apt_install,$(TEST_DEBS) $(BPF_DEBS))

demo: setup
	$(PY) -m podsight.demo

# A real kube-apiserver + etcd on loopback for the identity tests, built once from
# Debian's kubernetes source package (cached in ~/.cache/podsight-k8s; 0.2 s when built).
k8s-apiserver:
	tests/k8s/build-apiserver.sh

# A real single-node Kubernetes 1.20 (kubelet, scheduler, controller-manager from the same
# source; Debian's containerd + runc + CNI bridge) for the cluster-mode tests, and the base
# layer of the agent image (debootstrap + podsight's dependencies). Cached in the same place;
# 0.2 s when built. The tests add the podsight wheel layer per run (tests/k8s/node/README.md).
k8s-node: k8s-apiserver $(VENV)/.installed
	tests/k8s/node/build-node.sh
	PYTHON=$(CURDIR)/$(PY) tests/k8s/node/build-agent-image.sh --base-only

test: setup-test k8s-apiserver k8s-node
	$(MAKE) -s bpf-check
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q tests

lint: setup-test
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

# Compiled objects are committed so that users need no compiler.
bpf: $(BPF_OBJS)

src/podsight/gadgets/%.bpf.o: src/podsight/gadgets/%.bpf.c src/podsight/gadgets/include/*.h
	clang $(BPF_CFLAGS) -c $< -o $@

# CI: the committed objects must be exactly what their sources compile to.
bpf-check:
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; status=0; \
	for src in $(BPF_SRCS); do \
		obj=$${src%.c}.o; \
		clang $(BPF_CFLAGS) -c $$src -o $$tmp/out.o || exit 1; \
		if ! cmp -s $$tmp/out.o $$obj; then echo "$$obj is not up to date with $$src: run 'make bpf' and commit it" >&2; status=1; fi; \
	done; exit $$status

clean:
	rm -rf $(VENV) build dist src/*.egg-info
