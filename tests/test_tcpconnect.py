"""`podsight trace tcpconnect` end to end: real kernel programs, real sockets in lab pods."""

from __future__ import annotations

import errno
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest
from tracing import Capture, Trace, connect, connect_host, matching, run_cli

from podsight.lab import EXTERNAL_BLACKHOLE, EXTERNAL_UNREACHABLE, EXTERNAL_WEB

pytestmark = pytest.mark.root

JSON_KEYS = {
    "time", "pid", "tid", "comm", "uid", "netns", "ip", "saddr", "sport", "daddr", "dport",
    "src", "dst", "result", "errno", "latency_ns", "syn_retries",
}


def one(events: list[dict], **want: object) -> dict:
    found = matching(events, **want)
    assert len(found) == 1, f"expected one event matching {want}, got {found} in {events}"
    return found[0]


@pytest.fixture
def short_syn_retries(lab):
    """One SYN retry in mypod's netns, so a dropped SYN times out in ~3 s, not ~2 min."""
    netns = lab.pod("mypod").netns
    key = "net.ipv4.tcp_syn_retries"
    old = subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-n", key],
                         capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", f"{key}=1"], check=True)
    yield
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", f"{key}={old}"], check=True)


def test_ok_and_refused_between_pods_with_pid_comm_and_identity(lab):
    web = lab.pod("web")
    mypod = lab.pod("mypod")
    with Trace(f"--netns={mypod.netns}") as t:
        ok = connect(lab, "mypod", web.ipv4, 8080)
        refused = connect(lab, "mypod", web.ipv4, 8099)
    events = t.result.events
    assert ok["errno"] == 0 and refused["errno"] == errno.ECONNREFUSED

    e = one(events, pid=ok["pid"], dport=8080)
    assert e["result"] == "ok" and e["errno"] == 0
    assert e["comm"] == ok["comm"] and e["tid"] == ok["pid"] and e["uid"] == os.getuid()
    assert (e["ip"], e["saddr"], e["daddr"], e["sport"]) == (4, mypod.ipv4, web.ipv4, ok["sport"])
    assert e["src"]["endpoint"] == f"p/default/mypod:{ok['sport']}"
    assert e["dst"]["endpoint"] == "p/default/web:8080"
    assert e["dst"]["kind"] == "pod" and e["dst"]["labels"]["app"] == "web"
    assert 0 < e["latency_ns"] < 1_000_000_000 and e["syn_retries"] == 0

    r = one(events, pid=refused["pid"], dport=8099)
    assert r["result"] == "refused" and r["errno"] == errno.ECONNREFUSED
    assert r["comm"] == refused["comm"] and r["daddr"] == web.ipv4 and r["sport"] > 0
    assert t.result.summary == {"events": len(events), "lost": 0, "pending": 0}


def test_external_web_over_80_and_443(lab):
    with Trace("--netns", lab.pod("mypod").netns) as t:
        a = connect(lab, "mypod", EXTERNAL_WEB, 80)
        b = connect(lab, "mypod", EXTERNAL_WEB, 443)
    assert one(t.result.events, pid=a["pid"])["dst"]["endpoint"] == f"r/{EXTERNAL_WEB}:80"
    assert one(t.result.events, pid=b["pid"])["result"] == "ok"


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "nonblocking"])
def test_unreachable_from_icmp(lab, blocking):
    """A non-blocking connect reads the ICMP error with SO_ERROR before it closes the socket;
    a blocking one is closed by the kernel after its first retry also meets ICMP."""
    with Trace("--netns", lab.pod("mypod").netns) as t:
        c = connect(lab, "mypod", EXTERNAL_UNREACHABLE, 80, timeout=0 if blocking else 5)
    assert c["errno"] in (errno.EHOSTUNREACH, errno.ENETUNREACH)
    e = one(t.result.events, pid=c["pid"])
    assert e["result"] == "unreachable" and e["errno"] == c["errno"]
    assert e["daddr"] == EXTERNAL_UNREACHABLE and e["dport"] == 80


@pytest.mark.slow
def test_timeout_after_syn_retries(lab, short_syn_retries):
    mypod = lab.pod("mypod")
    syns = f"tcp[tcpflags] & tcp-syn != 0 and dst host {EXTERNAL_BLACKHOLE}"
    with Capture(mypod.veth, syns) as wire, Trace("--netns", mypod.netns) as t:
        c = connect(lab, "mypod", EXTERNAL_BLACKHOLE, 80, timeout=30)
    assert c["errno"] == errno.ETIMEDOUT
    e = one(t.result.events, pid=c["pid"])
    assert e["result"] == "timeout" and e["errno"] == errno.ETIMEDOUT
    # Every SYN after the first on the wire is a retry.
    assert e["syn_retries"] == len(wire.packets) - 1 >= 1
    # 1 s for the first retry, then 2 s more before the kernel gives up.
    assert e["latency_ns"] >= 2_900_000_000


def test_ipv6_ok_and_refused(lab):
    web = lab.pod("web")
    with Trace("--netns", lab.pod("mypod").netns) as t:
        ok = connect(lab, "mypod", web.ipv6, 8080)
        refused = connect(lab, "mypod", web.ipv6, 8099)
    e = one(t.result.events, pid=ok["pid"])
    assert (e["ip"], e["result"], e["daddr"]) == (6, "ok", web.ipv6)
    assert e["saddr"] == lab.pod("mypod").ipv6
    assert e["dst"]["endpoint"] == "p/default/web:8080"
    assert one(t.result.events, pid=refused["pid"])["result"] == "refused"


def test_latency_includes_injected_delay(lab):
    from podsight.lab.delay import delayed

    mypod = lab.pod("mypod")
    with delayed(mypod.netns, 0.05), Trace("--netns", mypod.netns) as t:
        c = connect(lab, "mypod", lab.pod("web").ipv4, 8080)
    e = one(t.result.events, pid=c["pid"])
    assert e["result"] == "ok"
    assert e["latency_ns"] >= 50_000_000


def test_pending_attempts_are_reported_at_exit(lab):
    with Trace("--netns", lab.pod("mypod").netns) as t:
        code = f"import socket; socket.create_connection(('{EXTERNAL_BLACKHOLE}', 81), 60)"
        client = lab.popen("mypod", [sys.executable, "-c", code])
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and f"{EXTERNAL_BLACKHOLE}:81" not in lab.exec(
                    "mypod", ["ss", "-Htn", "state", "syn-sent"], capture_output=True,
                    text=True).stdout:
                time.sleep(0.05)
            time.sleep(1.0)  # waiting is what is measured: latency_ns must show at least this
            t.stop()
        finally:
            client.kill()
            client.wait()
    e = one(t.result.events, pid=client.pid)
    assert e["result"] == "pending" and e["daddr"] == EXTERNAL_BLACKHOLE and e["dport"] == 81
    assert e["latency_ns"] >= 1_000_000_000
    assert t.result.summary["pending"] >= 1


# -- filters: each one includes what it names and excludes the rest ------------------------


def test_filter_pid_and_comm(lab):
    web = lab.pod("web").ipv4
    sleeper = lab.popen("mypod", [sys.executable, "-c", _DELAYED_CONNECT, web, "8080"],
                        stdin=subprocess.PIPE, text=True)
    try:
        with Trace("--pid", str(sleeper.pid)) as t:
            other = connect(lab, "mypod", web, 8080)
            sleeper.communicate("go\n", timeout=10)  # connect now that the trace runs
    finally:
        sleeper.kill()
    assert matching(t.result.events, pid=sleeper.pid)
    assert not matching(t.result.events, pid=other["pid"])

    comm = connect(lab, "mypod", web, 8080)["comm"]
    with Trace("--comm", f"nosuchcomm,{comm}") as t:
        c = connect(lab, "mypod", web, 8080)
        subprocess.run(["curl", "-s", "-o", "/dev/null", "-m", "2", "http://127.0.0.1:9/"],
                       check=False)
    assert matching(t.result.events, pid=c["pid"])
    assert not matching(t.result.events, comm="curl")
    assert {e["comm"] for e in t.result.events} == {comm}


_DELAYED_CONNECT = r"""
import socket, sys
sys.stdin.readline()
socket.create_connection((sys.argv[1], int(sys.argv[2])), 5).close()
"""


def test_filter_netns_by_name_and_inode(lab):
    mypod, frontend = lab.pod("mypod"), lab.pod("frontend")
    inode = os.stat(f"/var/run/netns/{frontend.netns}").st_ino
    web = lab.pod("web").ipv4
    for value, included, excluded in ((mypod.netns, "mypod", "frontend"),
                                      (str(inode), "frontend", "mypod")):
        with Trace("--netns", value) as t:
            a = connect(lab, included, web, 8080)
            b = connect(lab, excluded, web, 8080)
        assert matching(t.result.events, pid=a["pid"])
        assert not matching(t.result.events, pid=b["pid"])


def test_filter_dst_and_dport(lab):
    web = lab.pod("web")
    with Trace("--dst", "10.244.0.0/24", "--netns", lab.pod("mypod").netns) as t:
        a = connect(lab, "mypod", web.ipv4, 8080)
        b = connect(lab, "mypod", EXTERNAL_WEB, 80)
    assert matching(t.result.events, pid=a["pid"]) and not matching(t.result.events, pid=b["pid"])

    with Trace("--dport", "8080") as t:
        a = connect(lab, "mypod", web.ipv4, 8080)
        b = connect(lab, "mypod", web.ipv4, 8099)
    assert matching(t.result.events, pid=a["pid"]) and not matching(t.result.events, pid=b["pid"])
    assert all(e["dport"] == 8080 for e in t.result.events)


def test_filter_failed_only_and_min_latency(lab):
    from podsight.lab.delay import delayed

    web = lab.pod("web").ipv4
    with Trace("--failed-only", "--netns", lab.pod("mypod").netns) as t:
        ok = connect(lab, "mypod", web, 8080)
        bad = connect(lab, "mypod", web, 8099)
    assert not matching(t.result.events, pid=ok["pid"])
    assert one(t.result.events, pid=bad["pid"])["result"] == "refused"

    frontend = lab.pod("frontend")
    with delayed(frontend.netns, 0.03), Trace("--min-latency", "20ms") as t:
        slow = connect(lab, "frontend", web, 8080)
        fast = connect(lab, "mypod", web, 8080)
    assert one(t.result.events, pid=slow["pid"])["latency_ns"] >= 20_000_000
    assert not matching(t.result.events, pid=fast["pid"])


# -- output contract -----------------------------------------------------------------------


def test_json_contract_and_columns(lab):
    web = lab.pod("web")
    with Trace("--netns", lab.pod("mypod").netns) as t:
        c = connect(lab, "mypod", web.ipv4, 8080)
    e = one(t.result.events, pid=c["pid"])
    assert set(e) == JSON_KEYS
    assert e["time"].endswith("Z") and e["time"][10] == "T"
    for side in ("src", "dst"):
        assert {"addr", "port", "endpoint", "kind"} <= set(e[side])

    with Trace("--netns", lab.pod("mypod").netns, output="") as t:
        connect(lab, "mypod", web.ipv4, 8080)
    lines = t.result.stdout.splitlines()
    # Identity columns come first when pods are known (the lab is up), as in Inspektor Gadget.
    assert lines[0].split() == ["K8S.NAMESPACE", "K8S.PODNAME", "K8S.CONTAINERNAME", "PID",
                                "COMM", "IP", "SRC", "DST", "LATENCY", "RESULT"]
    row = next(ln.split() for ln in lines[1:] if "p/default/web:8080" in ln)
    assert row[:3] == ["default", "mypod", "mypod"] and row[-1] == "ok"

    with Trace("--netns", lab.pod("mypod").netns, output="columns=pid,dst,result") as t:
        c = connect(lab, "mypod", web.ipv4, 8080)
    lines = t.result.stdout.splitlines()
    assert lines[0].split() == ["PID", "DST", "RESULT"]
    assert f"{c['pid']} p/default/web:8080 ok" in [" ".join(ln.split()) for ln in lines[1:]]


def test_lost_events_are_counted(tmp_path):
    """A 4 KiB ring holds ~36 events: stop the reader, make 300 connects, count every one."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(512)
    port = srv.getsockname()[1]
    with Trace("--ring-size", "4096", "--dport", str(port)) as t:
        assert t.proc is not None
        t.proc.send_signal(signal.SIGSTOP)
        try:
            made = 0
            for _ in range(300):
                c = socket.socket()
                c.connect(("127.0.0.1", port))
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                c.close()
                srv.accept()[0].close()
                made += 1
        finally:
            t.proc.send_signal(signal.SIGCONT)
    srv.close()
    s = t.result.summary
    assert s["lost"] > 0
    assert s["events"] == len(matching(t.result.events, dport=port))
    assert s["events"] + s["lost"] == made


# -- bad input: one line, exit 2 ------------------------------------------------------------

BAD = [
    (["--dst", "10.0.0.0/33"], "invalid CIDR"),
    (["--dst", "nonsense"], "invalid CIDR"),
    (["--dport", "0"], "invalid port"),
    (["--dport", "70000"], "invalid port"),
    (["--pid", "abc"], "invalid pid"),
    (["--min-latency", "5xs"], "invalid duration"),
    (["--timeout", "-1"], "invalid duration"),
    (["--netns", "no-such-netns"], "no such network namespace"),
    (["--ring-size", "1000"], "invalid size"),
    (["-o", "yaml"], "invalid -o"),
    (["-o", "columns=pid,bogus"], "unknown column"),
    (["--bogus-flag"], "unrecognized arguments"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(argv, message):
    p = run_cli("trace", "tcpconnect", "--timeout", "1", *argv)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("podsight: error:"), p.stderr
    assert message in lines[0]
    assert "Traceback" not in p.stderr


def test_unknown_gadget_and_not_root():
    p = run_cli("trace", "nosuchgadget")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1

    unpriv = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         sys.executable, "-m", "podsight.cli.main", "trace", "tcpconnect", "--timeout", "1"],
        capture_output=True, text=True, timeout=30,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert unpriv.returncode == 1, unpriv.stderr
    lines = unpriv.stderr.strip().splitlines()
    assert len(lines) == 1 and "root" in lines[0], unpriv.stderr


def test_host_loopback_is_traced_and_timeout_stops():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    with Trace("--dport", str(port), "--timeout", "2") as t:
        c = connect_host("127.0.0.1", port)
        assert t.proc is not None
        t.proc.wait(60)  # --timeout stopped it (a hang fails here; its speed is not tested)
    srv.close()
    e = one(t.result.events, pid=c["pid"])
    assert e["result"] == "ok"
    # A host process is the node; loopback from the node is the node too.
    node = socket.gethostname()
    assert e["src"]["endpoint"] == f"n/{node}:{c['sport']}"
    assert e["dst"]["endpoint"] == f"n/{node}:{port}"
    assert t.result.returncode == 0


def test_bpffs_is_mounted_when_missing():
    """In a mount namespace without bpffs, podsight (as root) mounts it and runs."""
    p = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         "umount /sys/fs/bpf 2>/dev/null; "
         f"{sys.executable} -m podsight.cli.main trace tcpconnect --timeout 0.5 && "
         "stat -f -c %T /sys/fs/bpf"],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
    )
    assert p.returncode == 0, p.stderr
    assert "bpf" in p.stdout.split()[-1]
    assert "0 lost" in p.stderr


def test_ctrl_c_while_stdout_is_full_leaves_only_whole_lines():
    """A reader that stops reading fills the pipe; Ctrl-C then must not cut a line."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1024)
    port = srv.getsockname()[1]
    with Trace("--dport", str(port)) as t:
        assert t.proc is not None
        for _ in range(1500):  # ~700 KB of JSON: ten times what a pipe holds
            c = socket.socket()
            c.connect(("127.0.0.1", port))
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
            srv.accept()[0].close()
        wait_blocked_in_write(t.proc.pid)  # the tracer is blocked writing to a full pipe
        t.proc.send_signal(signal.SIGINT)
    srv.close()
    lines = t.result.stdout.splitlines()
    assert lines and all(ln.startswith("{") and ln.endswith("}") for ln in lines)
    assert len(t.result.events) == len(lines) == t.result.summary["events"]
    assert t.result.summary["events"] + t.result.summary["lost"] == 1500


def wait_blocked_in_write(pid: int, timeout: float = 20.0) -> None:
    """Until the process sits in write(2) (syscall 1 on x86_64), as /proc/PID/syscall says."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/syscall") as f:
            if f.read().split(" ", 1)[0] == "1":
                return
        time.sleep(0.01)
    raise AssertionError("the tracer never blocked writing to its full pipe")


def test_more_selected_namespaces_than_the_kernel_table_holds(lab):
    """Past the netns table's size the kernel lets every namespace through (key 0) and user
    space filters: nothing selected is missed."""
    from podsight.gadgets.tcpconnect.tcpconnect import TcpConnect, TcpConnectConfig

    mypod = os.stat(f"/var/run/netns/{lab.pod('mypod').netns}").st_ino
    wanted = {mypod, *range(1, 10)}
    config = TcpConnectConfig(filter_netns=True, netns=wanted, netns_entries=4)
    with TcpConnect(config) as tracer:
        table = tracer._obj.map("netns_filter")
        assert table.lookup((0).to_bytes(4, "little")) is not None
        assert table.lookup(mypod.to_bytes(4, "little")) is None  # only "every namespace"
        c = connect(lab, "mypod", lab.pod("web").ipv4, 8080)
        deadline = time.monotonic() + 10
        events = []
        while time.monotonic() < deadline and not any(e.pid == c["pid"] for e in events):
            tracer.wait(0.1)
            events += tracer.decode(tracer.drain())
    assert any(e.pid == c["pid"] and e.result == "ok" for e in events)
