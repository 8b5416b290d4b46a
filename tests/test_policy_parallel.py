"""``policy check`` on several CPUs (``--jobs``) prints exactly what it prints on one: the
same table or JSON lines, byte for byte and in input order, the same summary and exit
status, and a bad record stops it at the same line with the same message. Inputs that
cannot be split (stdin, flow records) are judged on one CPU. No root."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from policy_records import connect, flow, write_json, write_sqlite
from test_policy_advise import MY, WEB_A, WEB_B, WORLD, seed_records

POLICIES = [
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
     "metadata": {"name": "web-in", "namespace": "shop"},
     "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [
         {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"run": "mypod"}}}],
          "ports": [{"port": 8080}]}]}},
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
     "metadata": {"name": "my-out", "namespace": "default"},
     "spec": {"podSelector": {"matchLabels": {"run": "mypod"}}, "policyTypes": ["Egress"],
              "egress": [{"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
                          "ports": [{"port": 443}]}]}},
]


def podsight(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "podsight.cli.main", *argv], input=stdin,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "KUBECONFIG": ""})


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "objects.yaml").write_text(yaml.safe_dump(WORLD))
    pol = tmp_path / "policies"
    pol.mkdir()
    (pol / "p.yaml").write_text(yaml.safe_dump_all(POLICIES))
    (tmp_path / "none").mkdir()
    records = seed_records() * 40  # allowed and denied, interleaved, 360 records
    write_json(tmp_path / "t.json", "tcpconnect", records)
    write_sqlite(tmp_path / "t.db", "tcpconnect", records)
    return tmp_path


def both(files: Path, *argv: str, jobs: str = "3", stdin: str | None = None
         ) -> subprocess.CompletedProcess[str]:
    """Run on one CPU and on ``jobs``: the two runs must agree in everything."""
    base = ["policy", "check", "--objects", str(files / "objects.yaml"), *argv]
    one = podsight(*base, "--jobs", "1", stdin=stdin)
    many = podsight(*base, "--jobs", jobs, stdin=stdin)
    assert (many.returncode, many.stdout, many.stderr) == \
        (one.returncode, one.stdout, one.stderr)
    return many


@pytest.mark.parametrize("source", ["t.json", "t.db"])
@pytest.mark.parametrize("output", ["columns", "json"])
def test_several_cpus_print_what_one_prints(files: Path, source: str, output: str):
    proc = both(files, "--policies", str(files / "policies"), "--from", str(files / source),
                "-o", output)
    assert proc.returncode == 1
    assert "360 connections checked: 120 allowed, 240 denied" in proc.stderr
    if output == "json":  # one object per connection, in input order
        rows = [json.loads(line) for line in proc.stdout.splitlines()]
        assert [r["sport"] for r in rows] == [40000 + i % 9 for i in range(360)]
    else:
        lines = proc.stdout.splitlines()
        assert lines[0].split()[:3] == ["SRC", "DST", "PROTO"] and len(lines) == 241


def test_two_files_and_diff(files: Path):
    proc = both(files, "--policies", str(files / "policies"), "--from", str(files / "t.json"),
                "--from", str(files / "t.db"), "--diff", str(files / "none"))
    assert proc.returncode == 1 and "480 change verdict" in proc.stderr
    assert proc.stdout.splitlines()[0].split()[3:5] == ["BEFORE", "AFTER"]


def test_a_bad_line_stops_at_the_same_place(files: Path):
    text = (files / "t.json").read_text().splitlines(keepends=True)
    text[300] = '{"saddr": "10.0.0.300", "sport": 1, "daddr": "10.0.0.1", "dport": 1}\n'
    (files / "bad.json").write_text("".join(text))
    proc = both(files, "--policies", str(files / "policies"), "--from",
                str(files / "bad.json"))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"podsight: error: {files}/bad.json:301:")
    assert len(proc.stdout.splitlines()) > 1  # the denied connections before line 301


def test_the_header_comes_with_the_rows_of_a_part_that_failed(files: Path):
    """The only denied connection is in the last part, just before a bad line: the table
    still has its header, as on one CPU."""
    ok = '{"ip":4,"proto":"tcp","saddr":"10.244.0.2","sport":1,"daddr":"203.0.113.10",' \
        '"dport":443}\n'
    (files / "late.json").write_text(ok * 200 + ok.replace("443", "80") + "not json\n")
    proc = both(files, "--policies", str(files / "policies"), "--from",
                str(files / "late.json"), jobs="2")
    assert proc.returncode == 2 and "late.json:202: not a JSON object" in proc.stderr
    assert proc.stdout.splitlines()[0].startswith("SRC")


def test_flows_and_stdin_are_judged_whole(files: Path):
    records = [flow(MY, WEB_A, "10.244.0.2", 50000 + i, "10.244.0.3", 8080, flags=0x02)
               for i in range(30)]
    records += [flow(WEB_A, MY, "10.244.0.3", 8080, "10.244.0.2", 50000 + i, flags=0x112)
                for i in range(30)]
    records += [flow(WEB_B, WEB_A, "10.244.0.4", 40000, "10.244.0.3", 8080, flags=0x02)]
    write_json(files / "f.json", "flows", records)
    proc = both(files, "--policies", str(files / "policies"), "--from", str(files / "f.json"))
    assert "31 connections checked: 0 allowed, 31 denied" in proc.stderr
    stdin = (files / "t.json").read_text()
    proc = both(files, "--policies", str(files / "policies"), "--from", "-", stdin=stdin)
    assert "360 connections checked" in proc.stderr


def test_many_parts_of_a_small_file(files: Path):
    """More CPUs than the file has lines: every line is judged once."""
    write_json(files / "two.json", "tcpconnect",
               [connect(MY, None, "10.244.0.2", 1, "203.0.113.10", 443),
                connect(MY, None, "10.244.0.2", 2, "203.0.113.10", 80)])
    proc = both(files, "--policies", str(files / "policies"), "--from",
                str(files / "two.json"), jobs="8")
    assert "2 connections checked: 1 allowed, 1 denied" in proc.stderr
    empty = files / "empty.json"
    empty.write_text("")
    proc = both(files, "--policies", str(files / "policies"), "--from", str(empty), jobs="4")
    assert proc.returncode == 0 and "0 connections checked" in proc.stderr


def test_the_parts_cover_each_file_once(files: Path):
    """The split is real (not a silent fall back to one CPU): JSON lines by byte ranges on
    line starts, SQLite by row ids; stdin and flows SQLite files are not split."""
    from podsight.analysis.policy.checkrun import plan

    size = (files / "t.json").stat().st_size
    parts = plan([str(files / "t.json")], 3)
    assert parts is not None and len(parts) == 3
    assert parts[0].start == 0 and parts[-1].end == size
    assert all(a.end == b.start for a, b in itertools.pairwise(parts))
    text = (files / "t.json").read_bytes()
    assert all(text[p.start - 1:p.start] == b"\n" for p in parts[1:])
    rows = plan([str(files / "t.db")], 4)
    assert rows is not None and [(p.start, p.end) for p in rows] == \
        [(1, 90), (91, 180), (181, 270), (271, 360)]
    assert plan(["-"], 4) is None and plan([str(files / "t.json")], 1) is None
    write_sqlite(files / "f.db", "flows", [flow(MY, WEB_A, "10.244.0.2", 1, "10.244.0.3", 80)])
    assert plan([str(files / "t.json"), str(files / "f.db")], 2) is None
    assert plan([str(files / "t.json")], None) is None  # small: one CPU unless asked


def test_ctrl_c_stops_every_worker(tmp_path: Path):
    import signal
    import time

    (tmp_path / "objects.yaml").write_text(yaml.safe_dump(WORLD))
    pol = tmp_path / "policies"
    pol.mkdir()
    (pol / "p.yaml").write_text(yaml.safe_dump_all(POLICIES))
    line = '{"ip":4,"proto":"tcp","saddr":"10.244.0.2","sport":1,"daddr":"10.244.0.3",' \
        '"dport":8080}\n'
    big = tmp_path / "big.json"
    big.write_text(line * 1_000_000)  # ~1 s of work for each of two CPUs
    proc = subprocess.Popen(
        [sys.executable, "-m", "podsight.cli.main", "policy", "check", "--policies", str(pol),
         "--objects", str(tmp_path / "objects.yaml"), "--from", str(big), "--jobs", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    mine = str(big).encode()

    def workers() -> list[int]:
        found = []
        for d in Path("/proc").glob("[0-9]*"):
            try:
                if mine in (d / "cmdline").read_bytes() and int(d.name) != proc.pid:
                    found.append(int(d.name))
            except OSError:
                pass
        return found

    deadline = time.monotonic() + 60
    while not workers() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers(), "no worker was started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert workers() == []


@pytest.mark.parametrize("output", ["columns", "json"])
@pytest.mark.parametrize("where", [0.3, 0.9])
def test_a_flow_record_after_rows_were_written(files: Path, output: str, where: float):
    """A flow record in the first part (which the parent writes straight to stdout) after
    rows were written, or in the last part: the check is judged whole, and its output is
    still one CPU's, each row once."""
    connects = (files / "t.json").read_text().splitlines(keepends=True)
    write_json(files / "f.json", "flows",
               [flow(MY, WEB_A, "10.244.0.2", 50000, "10.244.0.3", 8080, flags=0x02)])
    at = int(len(connects) * where)
    (files / "mixed.json").write_text(
        "".join(connects[:at]) + (files / "f.json").read_text() + "".join(connects[at:]))
    proc = both(files, "--policies", str(files / "policies"), "--from",
                str(files / "mixed.json"), "-o", output, jobs="2")
    assert "361 connections checked: 120 allowed, 241 denied" in proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == (361 if output == "json" else 242)


@pytest.mark.parametrize("output", ["columns", "json"])
def test_stdout_to_a_file_in_append_mode(files: Path, output: str):
    """Workers' parts are copied to stdout by sendfile, which cannot write to a file opened
    for appending (``>>``): copied the usual way, after what the file held."""
    base = [sys.executable, "-m", "podsight.cli.main", "policy", "check", "--objects",
            str(files / "objects.yaml"), "--policies", str(files / "policies"), "--from",
            str(files / "t.json"), "-o", output]
    texts = []
    for jobs in ("1", "3"):
        out = files / f"out-{jobs}.txt"
        out.write_text("before\n")
        with out.open("a") as f:
            subprocess.run([*base, "--jobs", jobs], stdout=f, stderr=subprocess.DEVNULL,
                           timeout=120, env={**os.environ, "KUBECONFIG": ""})
        texts.append(out.read_text())
    assert texts[0] == texts[1] and texts[0].startswith("before\n")
    assert len(texts[0].splitlines()) == (361 if output == "json" else 242)
