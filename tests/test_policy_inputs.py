"""Bad input to policy check, advise network-policy and the lab's policy commands: one line,
the right exit status (2), no traceback, nothing written. No root needed: everything here
is refused before anything touches the machine."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from policy_bad import BAD
from policy_cases import LAB

GOOD = """apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: ok, namespace: default}
spec: {podSelector: {}}
"""
RECORD = {"ip": 4, "proto": "tcp", "saddr": "10.244.0.10", "sport": 1, "daddr": "10.244.0.11",
          "dport": 80}


def podsight(*argv: str, stdin: str | None = None, cwd: Path | None = None
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "podsight.cli.main", *argv], input=stdin,
                          capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**os.environ, "KUBECONFIG": ""})


def one_line(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("podsight: error: "), proc.stderr
    return lines[0]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "records.json").write_text(json.dumps(RECORD) + "\n")
    (tmp_path / "objects.yaml").write_text(yaml.safe_dump(LAB))
    (tmp_path / "good.yaml").write_text(GOOD)
    return tmp_path


@pytest.mark.parametrize(("case", "text", "message", "oracle"), BAD, ids=[b[0] for b in BAD])
def test_invalid_policies_are_refused(files: Path, case, text, message, oracle):
    path = files / f"{case}.yaml"
    path.write_text(text)
    proc = podsight("policy", "check", "--policies", str(path), "--from",
                    str(files / "records.json"), "--objects", str(files / "objects.yaml"))
    line = one_line(proc)
    assert message in line and str(path) in line, line
    assert proc.stdout == ""


def test_a_bad_policy_in_a_directory_names_its_file(files: Path):
    d = files / "policies"
    d.mkdir()
    (d / "a.yaml").write_text(GOOD)
    (d / "b.yml").write_text(BAD[0][1])
    line = one_line(podsight("policy", "check", "--policies", str(d), "--from",
                             str(files / "records.json")))
    assert f"{d}/b.yml" in line


def test_lab_policy_apply_refuses_a_bad_policy_before_needing_root(files: Path):
    path = files / "bad.yaml"
    path.write_text(BAD[0][1])
    line = one_line(podsight("lab", "policy", "apply", str(path)))
    assert "Unsupported value: 'tcp'" in line


def cli_cases(d: Path) -> list[tuple[list[str], str]]:
    rec, obj, good = str(d / "records.json"), str(d / "objects.yaml"), str(d / "good.yaml")
    (d / "garbage.json").write_text("{not json\n")
    (d / "array.json").write_text("[1, 2]\n")
    (d / "noproto.json").write_text(json.dumps({**RECORD, "proto": None}) + "\n")
    (d / "icmp.json").write_text(json.dumps({**RECORD, "proto": "icmp"}) + "\n")
    (d / "badaddr.json").write_text(json.dumps({**RECORD, "saddr": "10.0.0.300"}) + "\n")
    (d / "badport.json").write_text(json.dumps({**RECORD, "dport": 70000}) + "\n")
    (d / "mixed.json").write_text(json.dumps({**RECORD, "daddr": "fd00::1"}) + "\n")
    (d / "wrongip.json").write_text(json.dumps({**RECORD, "ip": 6}) + "\n")
    (d / "nosport.json").write_text(json.dumps({k: v for k, v in RECORD.items()
                                                if k != "sport"}) + "\n")
    (d / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    sqlite3.connect(d / "other.db").execute("CREATE TABLE t (x)").connection.commit()
    (d / "objects-bad.yaml").write_text("kind: Pod\nmetadata: {name: x}\nstatus: {podIP: nope}\n")
    (d / "topo-hostnet.yaml").write_text(yaml.safe_dump(
        {"kind": "Pod", "metadata": {"name": "x"}, "spec": {"hostNetwork": True}}))
    (d / "topo-ip.yaml").write_text(yaml.safe_dump(
        {"kind": "Pod", "metadata": {"name": "x"}, "status": {"podIP": "10.1.2.3"}}))
    (d / "topo-ip6.yaml").write_text(yaml.safe_dump(
        {"kind": "Pod", "metadata": {"name": "x"},
         "status": {"podIPs": [{"ip": "10.244.0.9"}, {"ip": "fd00:244::1"}]}}))
    (d / "topo-twice.yaml").write_text(yaml.safe_dump_all(
        [{"kind": "Pod", "metadata": {"name": "x"}}] * 2))
    (d / "topo-sameip.yaml").write_text(yaml.safe_dump_all(
        [{"kind": "Pod", "metadata": {"name": n}, "status": {"podIP": "10.244.0.9"}}
         for n in ("a", "b")]))
    (d / "topo-empty.yaml").write_text(yaml.safe_dump({"kind": "Namespace",
                                                       "metadata": {"name": "a"}}))
    (d / "topo-port.yaml").write_text(yaml.safe_dump(
        {"kind": "Pod", "metadata": {"name": "x"},
         "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 0}]}]}}))
    (d / "exists").mkdir()
    (d / "exists" / "default.server-network.yaml").write_text("x")
    check = ["policy", "check", "--policies", good]
    return [
        (["policy", "check", "--from", rec], "the following arguments are required: --policies"),
        (["policy", "check", "--policies", good], "required: --from"),
        ([*check, "--from", str(d / "nope.json")], "no such file"),
        ([*check, "--from", str(d)], "is a directory"),
        (["policy", "check", "--policies", str(d / "nope"), "--from", rec], "no such file"),
        ([*check, "--from", str(d / "garbage.json")], "garbage.json:1: not a JSON object"),
        ([*check, "--from", str(d / "array.json")], "array.json:1: not a JSON object"),
        ([*check, "--from", str(d / "noproto.json")], "no \"proto\""),
        ([*check, "--from", str(d / "icmp.json")], "NetworkPolicy covers tcp, udp and sctp"),
        ([*check, "--from", str(d / "badaddr.json")], "'10.0.0.300' is not an IP address"),
        ([*check, "--from", str(d / "badport.json")], "70000 is not a port"),
        ([*check, "--from", str(d / "mixed.json")], "are not of one IP version"),
        ([*check, "--from", str(d / "wrongip.json")], "\"ip\": 6 but saddr"),
        ([*check, "--from", str(d / "nosport.json")], "no 'sport'"),
        ([*check, "--from", str(d / "binary.json")], "not UTF-8"),
        ([*check, "--from", str(d / "other.db")], "without a tcpconnect or flows table"),
        ([*check, "--from", rec, "--objects", str(d / "objects-bad.yaml")],
         "'nope' is not an IP address"),
        ([*check, "--from", rec, "--objects", obj, "--kubeconfig", "/x"], "exclude each other"),
        ([*check, "--from", rec, "--diff", str(d / "nope")], "--diff"),
        ([*check, "--from", rec, "-o", "yaml"], "invalid choice: 'yaml'"),
        ([*check, "--from", rec, "--kubeconfig", "/nonexistent/kubeconfig"], "does not exist"),
        (["advise", "network-policy", "--from", rec, "--aggregate-cidr", "33"],
         "invalid number '33'"),
        (["advise", "network-policy", "--from", rec, "--aggregate-cidr", "24,129"],
         "invalid number '129'"),
        (["advise", "network-policy", "--from", rec, "--aggregate-cidr", "24,64,1"], "N or N,M"),
        (["advise", "network-policy", "--from", rec, "--output-dir", str(d / "a" / "b")],
         "no such directory"),
        (["advise", "network-policy", "--from", rec, "--output-dir", good], "not a directory"),
        (["advise", "network-policy", "--from", rec, "--objects", obj, "--output-dir",
          "/proc/podsight-no"], "--output-dir /proc/podsight-no: cannot create it"),
        (["advise", "network-policy", "--from", rec, "--timeout", "0"], "must be positive"),
        (["advise", "network-policy", "--from", str(d / "garbage.json")], "not a JSON object"),
        (["advise", "network-policy", "--from", rec, "--objects", obj, "-l", "app in (x"],
         "unbalanced"),
        (["advise", "network-policy", "--from", rec, "--objects", obj, "--output-dir",
          str(d / "exists")], "exists: remove it or use --overwrite"),
        (["advise"], "required: WHAT"),
        (["policy"], "required: COMMAND"),
        (["lab", "up", "--topology", str(d / "topo-hostnet.yaml")], "host-network"),
        (["lab", "up", "--topology", str(d / "topo-ip.yaml")], "lab pods live in 10.244.0"),
        (["lab", "up", "--topology", str(d / "topo-ip6.yaml")], "fd00:244::9"),
        (["lab", "up", "--topology", str(d / "topo-twice.yaml")], "is given twice"),
        (["lab", "up", "--topology", str(d / "topo-sameip.yaml")], "also default/a's address"),
        (["lab", "up", "--topology", str(d / "topo-empty.yaml")], "no Pod objects"),
        (["lab", "up", "--topology", str(d / "topo-port.yaml")], "must be between 1 and 65535"),
        (["lab", "up", "--topology", str(d / "nope.yaml")], "no such file"),
        (["lab", "policy", "apply", str(d / "nope.yaml")], "no such file"),
        (["lab", "policy", "delete"], "required: --all"),
        (["lab", "probe", "--ports", "0"], "invalid port '0'"),
        (["lab", "probe", "--ports", ","], "needs at least one port"),
        (["lab", "probe", "--protocols", "sctp"], "no SCTP sockets"),
        (["lab", "probe", "--timeout", "0"], "must be positive"),
        (["lab", "probe", "--timeout", "2m"], "at most"),
        (["lab", "probe", "--ip", "5"], "invalid --ip '5'"),
    ]


def test_bad_command_lines(tmp_path: Path):
    (tmp_path / "records.json").write_text(json.dumps(RECORD) + "\n")
    (tmp_path / "objects.yaml").write_text(yaml.safe_dump(LAB))
    (tmp_path / "good.yaml").write_text(GOOD)
    cases = cli_cases(tmp_path)
    assert len(cases) >= 40
    failures = []
    for argv, message in cases:
        proc = podsight(*argv, stdin="")
        try:
            line = one_line(proc)
            assert message in line, line
            assert proc.stdout == ""
        except AssertionError as exc:
            failures.append(f"{' '.join(argv)}: {exc}")
    assert not failures, "\n".join(failures)
    # refused whole: the other policy was not written either
    assert [p.name for p in (tmp_path / "exists").iterdir()] == ["default.server-network.yaml"]
    assert (tmp_path / "exists" / "default.server-network.yaml").read_text() == "x"


def test_plain_yaml_is_what_pyyaml_makes_of_it():
    """Policies' YAML is built without PyYAML's constructor and its tags memoised
    (documents._load_all): the same objects as yaml.safe_load_all, also read twice (the
    second time from the memo), for every implicit type and for quoted look-alikes."""
    from podsight.analysis.policy.documents import _load_all

    text = ("a: yes\nb: \"yes\"\nc: 1\nd: \"1\"\ne: 1.5\nf: ~\ng: null\nh: 0o17\n"
            "i: [on, off, \"on\"]\nj: 2026-01-01\nk: '2026-01-01'\nl: .inf\nm: -.nan\n"
            "n: 0x1f\no: 1_000\np: !!str 12\nq: ''\n---\n- &a {x: 1}\n- *a\n- !!str 12\n")
    for _ in range(2):
        assert repr(list(_load_all(text))) == repr(list(yaml.safe_load_all(text)))
