"""Bad input, across every command: one line naming what is wrong, a non-zero exit, no traceback.

Each case checks the exit code (2 for usage, 1 for what cannot run here) and
a piece of the message, so that an unrelated error ("needs root") cannot
pass for the right one. None of these needs root: a flag is checked before
anything touches the kernel.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXISTING = Path(__file__)  # a file that exists, for --sqlite
NINE_RULES = [w for i in range(9) for w in (["or"] if i else []) + ["--port", str(80 + i)]]

CASES: list[tuple[list[str], int, str]] = [
    # the command itself
    ([], 2, "required: COMMAND"),
    (["nosuch"], 2, "invalid choice: 'nosuch'"),
    (["trace"], 2, "required: GADGET"),
    (["trace", "nosuch"], 2, "invalid choice: 'nosuch'"),
    # trace tcpconnect: its own flags
    (["trace", "tcpconnect", "--dst", "10.0.0.0/33"], 2, "invalid CIDR '10.0.0.0/33'"),
    (["trace", "tcpconnect", "--dst", "nonsense"], 2, "invalid CIDR 'nonsense'"),
    (["trace", "tcpconnect", "--dst", ","], 2, "needs at least one"),
    (["trace", "tcpconnect", "--dport", "0"], 2, "invalid port '0'"),
    (["trace", "tcpconnect", "--dport", "70000"], 2, "invalid port '70000'"),
    (["trace", "tcpconnect", "--dport", "9" * 30], 2, "invalid port"),
    (["trace", "tcpconnect", "--pid", "abc"], 2, "invalid pid 'abc'"),
    (["trace", "tcpconnect", "--pid", "0"], 2, "invalid pid '0'"),
    (["trace", "tcpconnect", "--pid", "9" * 30], 2, "invalid pid"),
    (["trace", "tcpconnect", "--min-latency", "5xs"], 2, "invalid duration '5xs'"),
    (["trace", "tcpconnect", "--min-latency", "99999999999999999999999h"], 2, "at most"),
    (["trace", "tcpconnect", "--min-latency=-5ms"], 2, "invalid duration '-5ms'"),
    (["trace", "tcpconnect", "--min-latency", "1e999ms"], 2, "invalid duration"),
    (["trace", "tcpconnect", "--ring-size", "1000"], 2, "invalid size '1000'"),
    (["trace", "tcpconnect", "--ring-size", "5000"], 2, "a power of two"),
    (["trace", "tcpconnect", "--ring-size", "1099511627776"], 2, "at most"),
    (["trace", "tcpconnect", "--ring-size", "4294967296"], 2, "at most"),
    (["trace", "tcpconnect", "--comm", ","], 2, "needs at least one name"),
    (["trace", "tcpconnect", "extra"], 2, "unrecognized arguments: extra"),
    (["trace", "tcpconnect", "--bogus-flag"], 2, "unrecognized arguments: --bogus-flag"),
    # outputs and limits, shared by every gadget (checked on both)
    (["trace", "tcpconnect", "-o", "yaml"], 2, "invalid -o 'yaml'"),
    (["trace", "tcpconnect", "-o", "columns=pid,bogus"], 2, "unknown column 'bogus'"),
    (["trace", "tcpconnect", "-o", "columns="], 2, "needs at least one column"),
    (["trace", "tcpconnect", "-o", "columns=,"], 2, "needs at least one column"),
    (["trace", "tcpconnect", "--sqlite", ""], 2, "--sqlite needs a file name"),
    (["trace", "tcpconnect", "--sqlite", "/nonexistent-dir/x.db"], 2, "no such directory"),
    (["trace", "tcpconnect", "--sqlite", str(EXISTING)], 2, "exists: remove it"),
    (["trace", "tcpconnect", "--json", ""], 2, "--json needs a file name"),
    (["trace", "tcpconnect", "--json", str(EXISTING)], 2, "exists: remove it"),
    (["trace", "tcpconnect", "--json", "/nonexistent-dir/x.json"], 2, "no such directory"),
    (["trace", "tcpconnect", "--json", "/tmp/podsight-same-file", "--sqlite",
      "/tmp/podsight-same-file"], 2, "name the same file"),
    # the live view: a terminal on both ends, and JSON to a file beside it
    (["trace", "tcpconnect", "--tui", "-o", "json"], 2, "--json FILE writes JSON lines"),
    (["trace", "tcpconnect", "--tui"], 2, "--tui needs a terminal"),
    (["flows", "--tui"], 2, "unrecognized arguments: --tui"),
    (["trace", "tcpconnect", "--max-bytes", "inf"], 2, "invalid size 'inf'"),
    (["trace", "tcpconnect", "--max-bytes", "1e999"], 2, "invalid size '1e999'"),
    (["trace", "tcpconnect", "--max-bytes", "-1"], 2, "invalid size '-1'"),
    (["trace", "tcpconnect", "--timeout", "-1"], 2, "invalid duration '-1'"),
    (["trace", "tcpconnect", "--timeout", "0"], 2, "must be positive"),
    (["trace", "tcpconnect", "--timeout", "99999999999999999999d"], 2, "at most"),
    (["trace", "tcpconnect", "--max-time", "inf"], 2, "invalid duration 'inf'"),
    (["flows", "-o", "columns=bytes,nope"], 2, "unknown column 'nope'"),
    (["flows", "--sqlite", ""], 2, "--sqlite needs a file name"),
    (["flows", "--max-bytes", "inf"], 2, "invalid size 'inf'"),
    (["flows", "--max-time", "0"], 2, "must be positive"),
    # identity flags, shared by every gadget
    (["trace", "tcpconnect", "-A", "-n", "default"], 2, "exclude each other"),
    (["trace", "tcpconnect", "-l", "app in (web"], 2, "unbalanced '('"),
    (["trace", "tcpconnect", "-l", "=x"], 2, "cannot parse"),
    (["trace", "tcpconnect", "-n", ","], 2, "-n needs at least one name"),
    (["trace", "tcpconnect", "-p", "!"], 2, "'!' needs a name"),
    (["trace", "tcpconnect", "--runtimes", "bogus"], 2, "--runtimes 'bogus'"),
    (["trace", "tcpconnect", "--netns", "no-such-netns"], 2, "no such network namespace"),
    (["trace", "tcpconnect", "--netns", "0"], 2, "not a network namespace inode"),
    (["trace", "tcpconnect", "--netns", ","], 2, "needs at least one name"),
    (["trace", "tcpconnect", "--kubeconfig", "/nonexistent/kubeconfig"], 2, "does not exist"),
    (["flows", "-n", "a", "-A"], 2, "exclude each other"),
    (["flows", "--netns", "no-such-netns"], 2, "no such network namespace"),
    # flows: its own flags and filter rules
    (["flows", "--cidr", "10.0.0.300/8"], 2, "invalid CIDR '10.0.0.300/8'"),
    (["flows", "--peer-ip", "not-an-ip"], 2, "invalid IP address 'not-an-ip'"),
    (["flows", "--port", "70000"], 2, "invalid port '70000'"),
    (["flows", "--port", "100-80"], 2, "a range is low-high"),
    (["flows", "--sport", "x"], 2, "invalid port 'x'"),
    (["flows", "--protocol", "foo"], 2, "invalid protocol 'foo'"),
    (["flows", "--protocol", "tcp", "--icmp-type", "8"], 2, "need --protocol icmp"),
    (["flows", "--icmp-type", "256"], 2, "invalid ICMP type/code '256'"),
    (["flows", "--tcp-flags", "BOGUS"], 2, "invalid TCP flag 'BOGUS'"),
    (["flows", "--tcp-flags", ""], 2, "--tcp-flags needs at least one flag"),
    (["flows", "--protocol", "udp", "--tcp-flags", "SYN"], 2, "--tcp-flags needs --protocol tcp"),
    (["flows", "--direction", "sideways"], 2, "invalid choice: 'sideways'"),
    (["flows", "--dport", "80", "or"], 2, "'or' must be followed by filter flags"),
    (["flows", "--dport", "80", "or", "--bogus"], 2, "unrecognized arguments: --bogus"),
    (["flows", "--dport", "80", "extra"], 2, "unexpected argument 'extra'"),
    (["flows", "or", "--port", "80"], 2, "needs at least one filter flag"),
    (["flows", *NINE_RULES], 2, "at most 8 filter rules"),
    (["flows", "--interval", "0"], 2, "must be positive"),
    (["flows", "--interval", "0.01"], 2, "--interval must be at least 0.05 seconds"),
    (["flows", "--max-flows", "0"], 2, "invalid number '0'"),
    (["flows", "--max-flows", "9" * 30], 2, "invalid number"),
    (["flows", "--interfaces", ","], 2, "needs at least one name"),
    # packets: the capture file, the filter expression, its own flags
    (["packets"], 2, "required: -w"),
    (["packets", "-w", "/tmp/x.pcapng", "tcp prot 80"], 2,
     "invalid filter expression 'tcp prot 80': can't parse filter expression: syntax error"),
    (["packets", "-w", "/tmp/x.pcapng", "tcp", "and", "udp"], 2,
     "expression rejects all packets"),
    (["packets", "-w", "/tmp/x.pcapng", "-s", "0"], 2, "invalid number '0'"),
    (["packets", "-w", "/tmp/x.pcapng", "-s", "300000"], 2, "invalid number '300000'"),
    (["packets", "-w", "/tmp/x.pcapng", "-p", "no-such-pod"], 2, "no pod named no-such-pod"),
    (["packets", "-w", "/nonexistent-dir/x.pcapng"], 2, "no such directory"),
    (["packets", "-w", "/proc/x.pcapng"], 2, "cannot create /proc/x.pcapng"),
    (["packets", "-w", str(EXISTING)], 2, "exists: remove it, choose another file or add --force"),
    (["packets", "-w", ""], 2, "-w needs a file name"),
    (["packets", "-w", "/tmp/x.pcapng", "--ring", "3"], 2, "--ring N needs --ring-size"),
    (["packets", "-w", "-", "--ring-size", "1M"], 2, "--ring-size needs a file"),
    (["packets", "-w", "/tmp/x.pcapng", "--ring-size", "10"], 2, "invalid size '10'"),
    (["packets", "-w", "/tmp/x.pcapng", "--port", "80-70"], 2, "invalid --port '80-70'"),
    (["packets", "-w", "/tmp/x.pcapng", "--peer-ip", "nope"], 2, "invalid"),
    (["packets", "-w", "/tmp/x.pcapng", "--protocol", "foo"], 2, "invalid choice: 'foo'"),
    (["packets", "-w", "/tmp/x.pcapng", "-B", "10"], 2, "invalid size '10'"),
    (["packets", "-w", "/tmp/x.pcapng", "--until-failed-connect", "5x"], 2,
     "invalid duration '5x'"),
    # a word that is no duration is the filter expression, not DELAY (libpcap's message)
    (["packets", "-w", "/tmp/x.pcapng", "--until-failed-connect", "x"], 2,
     "invalid filter expression 'x': can't parse filter expression: syntax error"),
    # the lab
    (["lab"], 2, "required: COMMAND"),
    (["lab", "bogus"], 2, "invalid choice: 'bogus'"),
    (["lab", "delay", "mypod", "-5ms"], 2, "invalid duration '-5ms'"),
    (["lab", "delay", "mypod", "1e999ms"], 2, "invalid duration"),
    (["lab", "delay", "nosuchpod", "5ms"], 2, "nosuchpod"),
    (["lab", "exec", "nosuchpod", "--", "true"], 2, "nosuchpod"),
]


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "podsight.cli.main", *argv],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, KUBECONFIG=""), stdin=subprocess.DEVNULL)


def test_there_are_many_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize(("argv", "code", "message"), CASES,
                         ids=[" ".join(a) or "(nothing)" for a, _, _ in CASES])
def test_bad_input_is_one_line(argv, code, message):
    p = run_cli(*argv)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == code, p.stderr
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("podsight: error: "), p.stderr
    assert message in lines[0], lines[0]
    assert p.stdout == ""


def test_debug_adds_the_traceback():
    p = subprocess.run([sys.executable, "-m", "podsight.cli.main", "trace", "tcpconnect",
                        "--sqlite", "/nonexistent-dir/x.db"], capture_output=True, text=True,
                       timeout=60, env=dict(os.environ, PODSIGHT_DEBUG="1"))
    assert p.returncode == 2
    assert "Traceback (most recent call last)" in p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("podsight: error: cannot create")
