"""The seed scenario, replayed for real on the lab (what ``make demo`` ends with): trace
mypod, advise its policy, check it, enforce it, and find the one connection it blocks in
the second trace and in the check. Also: ``advise network-policy`` from a live run."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

from podsight import demoseed
from podsight.lab import EXTERNAL_WEB, Lab, enforce
from podsight.lab.probe import Probe, run
from podsight.lab.system import child_env


def test_seed_scenario(lab: Lab, tmp_path: Path):
    # Before any policy, the address the scenario blocks is reachable: what fails later is
    # the policy's doing.
    web = demoseed.BLOCKED
    (before,) = run(lab.pods, [Probe("default/mypod", "web", web.cluster_ip, web.port, "tcp")],
                    3.0)
    assert before.connected, before

    said: list[str] = []
    out = io.StringIO()
    seed = demoseed.replay(lab, tmp_path, said.append, out)
    assert seed.fetches_before == [0, 0], out.getvalue()

    # advise: one policy, for mypod, allowing the external site on 80 and 443 and nothing else
    assert seed.advise is not None and seed.advise.returncode == 0, seed.advise.stderr
    (path,) = seed.policy_dir.iterdir()
    assert path.name == "default.mypod-network.yaml"
    policy = yaml.safe_load(path.read_text())
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app": "mypod"}}
    assert policy["spec"]["ingress"] == []
    assert policy["spec"]["egress"] == [{
        "to": [{"ipBlock": {"cidr": f"{EXTERNAL_WEB}/32"}}],
        "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 443}]}]
    assert "# to r/203.0.113.10:443/TCP: 1 connection, first " in path.read_text()

    assert seed.check_before is not None and seed.check_before.returncode == 0
    assert "2 connections checked: 2 allowed, 0 denied" in seed.check_before.stderr
    assert seed.apply is not None and seed.apply.returncode == 0, seed.apply.stderr

    # enforced: the same fetches work, the other one fails, as the client gave up
    assert seed.fetches_after == [0, 0], out.getvalue()
    assert seed.blocked_fetch != 0
    rows = sqlite3.connect(seed.after).execute(
        "SELECT daddr, dport, result FROM tcpconnect ORDER BY id").fetchall()
    assert sorted(rows) == sorted([(EXTERNAL_WEB, 80, "ok"), (EXTERNAL_WEB, 443, "ok"),
                                   (web.cluster_ip, web.port, "aborted")])
    assert "aborted" in seed.trace_after

    # check flags exactly that connection
    check = seed.check_after
    assert check is not None and check.returncode == 1, check.stderr
    assert "3 connections checked: 2 allowed, 1 denied" in check.stderr
    lines = check.stdout.splitlines()
    assert len(lines) == 2 and lines[0].split()[:3] == ["SRC", "DST", "PROTO"]
    assert f"s/default/web:{web.port}" in lines[1]
    assert "egress from default/mypod" in lines[1] and "default/web:8080" in lines[1]

    # and the lab is left as it was
    assert enforce.listing(lab) == []


def test_advise_from_a_live_run(lab: Lab, tmp_path: Path):
    """A live tcpconnect run, stopped with Ctrl-C's signal, writes the policy of what mypod
    did while it ran (the pod flags pick the subjects)."""
    out = tmp_path / "live"
    proc = subprocess.Popen(
        [sys.executable, "-m", "podsight.cli.main", "advise", "network-policy", "--gadget",
         "tcpconnect", "-p", "mypod", "--output-dir", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        deadline = time.monotonic() + 30
        while "tracing" not in line and time.monotonic() < deadline and line:
            line = proc.stderr.readline()
        assert "tracing" in line, line
        for port in (80, 443):
            scheme = "https" if port == 443 else "http"
            got = lab.exec("mypod", ["curl", "-sSk", "-o", "/dev/null",
                                     f"{scheme}://{EXTERNAL_WEB}/"], check=False)
            assert got.returncode == 0
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    policy = yaml.safe_load((out / "default.mypod-network.yaml").read_text())
    assert policy["spec"]["egress"] == [{
        "to": [{"ipBlock": {"cidr": f"{EXTERNAL_WEB}/32"}}],
        "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 443}]}]
    assert sorted(p.name for p in out.iterdir()) == ["default.mypod-network.yaml"]
    assert "2 events, 0 lost" in err


def test_advise_from_a_live_flows_run_with_timeout(lab: Lab, tmp_path: Path):
    """flows sees both directions and UDP: the cluster DNS query of frontend becomes the DNS
    rule, its call to the web Service a rule to the web pods on the target port."""
    if not lab.nameserver:
        import pytest

        pytest.skip("the lab runs without cluster DNS")
    out = tmp_path / "live"
    proc = subprocess.Popen(
        [sys.executable, "-m", "podsight.cli.main", "advise", "network-policy", "-n", "shop",
         "--timeout", "4", "--output-dir", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while line and "capturing" not in line:
            line = proc.stderr.readline()
        assert "capturing" in line, line
        lab.exec("frontend", [sys.executable, "-m", "podsight.lab.dnsquery", lab.nameserver,
                              "web.default.svc.cluster.local"], check=True,
                 capture_output=True, env=child_env())
        lab.exec("frontend", ["curl", "-sS", "-o", "/dev/null", "http://10.96.0.10/"],
                 check=True)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped: --max-time reached" in err
    policy = yaml.safe_load((out / "shop.frontend-network.yaml").read_text())
    egress = policy["spec"]["egress"]
    assert egress[0]["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert {"protocol": "UDP", "port": 53} in egress[0]["ports"]
    web = [r for r in egress if r["to"][0].get("podSelector") == {"matchLabels": {"app": "web"}}]
    assert web and web[0]["ports"] == [{"protocol": "TCP", "port": 8080}], json.dumps(egress)
    assert os.listdir(out) == ["shop.frontend-network.yaml"]
