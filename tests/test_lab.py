"""`podsight lab`: real namespaces, real sockets, real tools; nothing mocked.

Traffic goes only between lab namespaces and the root netns. The tests that
take the lab down run last and bring it back up, so the session-wide ``lab``
fixture stays valid for test files that run after this one.

Every test here needs root (``-m 'not root'`` leaves them out); the lab's
tests that need none are in test_lab_cli.py. No test bounds how long
something takes (a loaded CI machine is slow, not broken): timings are only
ever lower bounds that prove an effect, and waits are on conditions.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from importcheck import assert_light, lab_side_imports, podsight_imports

from podsight.errors import UserError
from podsight.lab import EXTERNAL_BLACKHOLE, EXTERNAL_UNREACHABLE, EXTERNAL_WEB, Lab, delayed
from podsight.lab.dnsquery import query
from podsight.lab.errors import CommandNotFound
from podsight.lab.system import child_env, netns_names, process_alive

pytestmark = pytest.mark.root

GLOBAL_SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.default.forwarding",
    "net.ipv6.conf.all.forwarding",
    "net.bridge.bridge-nf-call-iptables",
)


def read_sysctls() -> dict[str, str]:
    found = {}
    for key in GLOBAL_SYSCTLS:
        path = Path("/proc/sys", *key.split("."))
        if path.exists():
            found[key] = path.read_text().strip()
    return found

# Runs inside a pod: one TCP connect, reported as JSON (errno 0 on success).
CONNECT = r"""
import errno, json, socket, sys, time
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(timeout)
t = time.monotonic()
try:
    s.connect((host, port))
    err = 0
except socket.timeout:
    err = errno.ETIMEDOUT
except OSError as exc:
    err = exc.errno
print(json.dumps({"errno": err, "elapsed": time.monotonic() - t}))
"""


def connect(lab: Lab, pod: str, host: str, port: int, timeout: float = 3.0) -> dict:
    proc = lab.exec(
        pod,
        [sys.executable, "-c", CONNECT, host, str(port), str(timeout)],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
        check=True,
    )
    return json.loads(proc.stdout)


def cli(
    *args: str, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podsight.cli.main", "lab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(env),
    )


def dns(lab: Lab, pod: str, server: str, name: str, qtype: str = "A", tcp: bool = False) -> dict:
    """One DNS query from inside ``pod``, by the lab's stdlib client, as its JSON reply."""
    argv = [sys.executable, "-m", "podsight.lab.dnsquery", "--type", qtype, server, name]
    proc = lab.exec(pod, argv + (["--tcp"] if tcp else []), capture_output=True, text=True,
                    timeout=20, env=child_env())  # fmt: skip
    assert proc.stdout, proc.stderr
    reply = json.loads(proc.stdout)
    assert "error" not in reply, (server, name, tcp, reply)
    return reply


def dnsmasq_pids(lab: Lab) -> list[int]:
    """Our dnsmasq processes (and their TCP children), wherever they run."""
    marker = f"--conf-file={lab.dns_conf_path}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return [pid for pid in found if process_alive(pid, "dnsmasq")]


def needs_dns(lab: Lab) -> None:
    """The README promises the lab's cluster DNS: a lab without it fails, it is not skipped."""
    assert lab.nameserver is not None, f"the lab runs without cluster DNS: {lab.dns_off_reason}"


def needs_services(lab: Lab) -> None:
    """The README promises the lab's Services: a lab without them fails, it is not skipped."""
    assert lab.services, "the lab runs without Services (is br_netfilter loaded?)"


def psl_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return [n for n in names if n.startswith("psl")]


def nft_table_exists() -> bool:
    return subprocess.run(["nft", "list", "table", "inet", "podsight-lab"],
                          capture_output=True).returncode == 0  # fmt: skip


def guard_drops() -> int:
    """Packets the egress guard has dropped so far."""
    out = subprocess.run(["nft", "list", "chain", "inet", "podsight-lab", "guard"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    line = next(ln for ln in out.splitlines() if "never leaves" in ln)
    match = re.search(r"counter packets (\d+)", line)
    assert match, line
    return int(match.group(1))


def nfqueue_rules(netns: str) -> str:
    out = ""
    for tool in ("iptables", "ip6tables"):
        out += subprocess.run(["ip", "netns", "exec", netns, tool, "-S"],
                              capture_output=True, text=True).stdout  # fmt: skip
    return "\n".join(line for line in out.splitlines() if "NFQUEUE" in line)


def remove_delay_rules(netns: str) -> None:
    """Delete the NFQUEUE rules a killed ``lab delay`` left in ``netns``."""
    for tool in ("iptables", "ip6tables"):
        rules = subprocess.run(["ip", "netns", "exec", netns, tool, "-S", "OUTPUT"],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        for rule in rules.splitlines():
            if "NFQUEUE" in rule and rule.startswith("-A "):
                subprocess.run(["ip", "netns", "exec", netns, tool, "-w", "-D",
                                *shlex.split(rule)[1:]], check=True)  # fmt: skip


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` seconds.

    The timeout only keeps a broken run from hanging: it is generous, never a
    claim about speed.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up after {timeout:g} s waiting for {what}"
        time.sleep(0.05)


# -------------------------------------------------------------------- the lab


def test_up_is_idempotent(lab):
    state = json.loads(lab.state_path.read_text())
    lab.up()
    assert lab.is_up(), lab.problems()
    # Nothing was rebuilt: same servers, same pids.
    assert json.loads(lab.state_path.read_text())["pids"] == state["pids"]


def test_status_reports_every_pod_running(lab):
    rows = lab.status()
    assert [r.name for r in rows] == [p.name for p in lab.pods] + ["(external)"]
    assert all(r.running for r in rows), rows
    proc = cli("status")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["NAMESPACE", "POD", "NETNS", "IP", "IPV6", "VETH", "STATE"]
    assert any(line.split()[:2] == ["shop", "backend"] for line in lines)
    assert EXTERNAL_WEB in proc.stdout


def test_inventory_is_a_kubernetes_list_of_pods_and_services(lab):
    inv = json.loads(lab.inventory_path.read_text())
    assert inv["apiVersion"] == "v1" and inv["kind"] == "List"
    pods = {(i["metadata"]["namespace"], i["metadata"]["name"]): i
            for i in inv["items"] if i["kind"] == "Pod"}  # fmt: skip
    assert set(pods) == {(p.namespace, p.name) for p in lab.pods}
    for pod in lab.pods:
        obj = pods[(pod.namespace, pod.name)]
        meta, spec, status = obj["metadata"], obj["spec"], obj["status"]
        assert meta["labels"] == pod.labels and meta["uid"]
        assert meta["annotations"]["podsight.io/netns"] == pod.netns
        assert pod.netns in netns_names()
        assert spec["nodeName"] == lab.node_name
        assert spec["containers"][0] == {**spec["containers"][0], "name": pod.name,
                                         "image": f"podsight-lab/{pod.name}"}  # fmt: skip
        assert status["phase"] == "Running" and status["hostIP"] == "10.244.0.1"
        assert status["podIP"] == pod.ipv4
        assert status["podIPs"] == [{"ip": pod.ipv4}, {"ip": pod.ipv6}]
    coredns = pods[("kube-system", "coredns")]
    assert coredns["metadata"]["labels"] == {"k8s-app": "kube-dns"}
    assert coredns["spec"]["containers"][0]["ports"] == [
        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
    ]
    services = [i for i in inv["items"] if i["kind"] == "Service"]
    needs_services(lab)
    needs_dns(lab)
    expected = [("default", "web"), ("kube-system", "kube-dns")]
    assert [(s["metadata"]["namespace"], s["metadata"]["name"]) for s in services] == expected
    assert services[0]["spec"]["clusterIP"] == "10.96.0.10"
    assert services[0]["spec"]["selector"] == {"app": "web"}
    spec = services[1]["spec"]
    assert spec["clusterIP"] == "10.96.0.53" and spec["selector"] == {"k8s-app": "kube-dns"}
    assert [(p["name"], p["protocol"], p["port"], p["targetPort"]) for p in spec["ports"]] == [
        ("dns", "UDP", 53, 53), ("dns-tcp", "TCP", 53, 53)]  # fmt: skip


def test_identity_names_the_dns_pod(lab):
    from podsight.identity import Resolver
    from podsight.identity.lab import LabInventory

    coredns = lab.pod("kube-system/coredns")
    with Resolver(lab=LabInventory(lab.inventory_path)) as resolver:
        for addr in (coredns.ipv4, coredns.ipv6):
            assert resolver.endpoint(addr).with_port(53) == "p/kube-system/coredns:53"
        pod = resolver.local_pod(os.stat(f"/run/netns/{coredns.netns}").st_ino)
        assert pod is not None and (pod.namespace, pod.name) == ("kube-system", "coredns")


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("via", ["pod", "service"])
def test_cluster_dns_answers_services_and_nxdomain(lab, via, tcp):
    needs_dns(lab)
    needs_services(lab)
    assert lab.nameserver == "10.96.0.53"  # pods ask the kube-dns Service
    server = lab.pod("coredns").ipv4 if via == "pod" else "10.96.0.53"
    reply = dns(lab, "mypod", server, "web.default.svc.cluster.local", tcp=tcp)
    assert reply["rcode"] == 0 and reply["rcode_name"] == "NOERROR", reply
    assert reply["answers"] == [["A", "10.96.0.10"]] and reply["authoritative"], reply
    reply = dns(lab, "mypod", server, "nosuch.default.svc.cluster.local", tcp=tcp)
    assert reply["rcode"] == 3 and reply["answers"] == [], reply
    if via == "service":  # from the node too, as kube-proxy lets it
        node = query(server, "web.default.svc.cluster.local", tcp=tcp)
        assert node.rcode == 0 and node.addresses() == ["10.96.0.10"]


def test_cluster_dns_names_pods_and_nothing_else(lab):
    needs_dns(lab)
    server = lab.pod("coredns").ipv6  # IPv6 transport too
    answers = {
        ("mypod.default.pod.cluster.local", "A"): [["A", "10.244.0.2"]],
        ("mypod.default.pod.cluster.local", "AAAA"): [["AAAA", "fd00:244::2"]],
        ("backend.shop.pod.cluster.local", "A"): [["A", "10.244.0.5"]],
        ("10-244-0-5.shop.pod.cluster.local", "A"): [["A", "10.244.0.5"]],
        ("fd00-244--6.kube-system.pod.cluster.local", "AAAA"): [["AAAA", "fd00:244::6"]],
        ("3.0.244.10.in-addr.arpa", "PTR"): [["PTR", "web.default.pod.cluster.local."]],
        ("web.default.svc.cluster.local", "AAAA"): [],  # NOERROR, no IPv6 ClusterIP
        ("kube-dns.kube-system.svc.cluster.local", "A"): [["A", "10.96.0.53"]],
    }
    needs_services(lab)
    for (name, qtype), expected in answers.items():
        reply = dns(lab, "frontend", server, name, qtype)
        assert reply["rcode"] == 0 and reply["answers"] == expected, (name, qtype, reply)
    # Anything else, in or out of the cluster domain: NXDOMAIN, never REFUSED or forwarded.
    for name in ("web.shop.svc.cluster.local", "mypod.shop.pod.cluster.local", "nosuch",
                 "example.com", "www.example.org", "10.113.0.203.in-addr.arpa"):  # fmt: skip
        for tcp in (False, True):
            reply = dns(lab, "frontend", server, name, tcp=tcp)
            assert reply["rcode"] == 3, (name, tcp, reply)


def test_pods_resolve_cluster_names_through_resolv_conf(lab):
    needs_dns(lab)
    for pod in lab.pods:
        text = lab.resolv_conf_path(pod.ref).read_text()
        assert f"nameserver {lab.nameserver}\n" in text
        assert (f"search {pod.namespace}.svc.cluster.local svc.cluster.local cluster.local\n"
                in text)  # fmt: skip
    proc = cli("exec", "mypod", "--", "getent", "hosts", "web.default.svc.cluster.local")
    assert proc.returncode == 0 and proc.stdout.split() == [
        "10.96.0.10", "web.default.svc.cluster.local"], proc  # fmt: skip
    # The search list works as in a pod: a bare Service name in the pod's own namespace...
    proc = lab.exec("mypod", ["getent", "hosts", "web"], capture_output=True, text=True)
    assert proc.stdout.split()[:1] == ["10.96.0.10"], proc
    # ...and <svc>.<ns> from another namespace.
    proc = lab.exec("frontend", ["getent", "hosts", "web.default"], capture_output=True,
                    text=True)  # fmt: skip
    assert proc.stdout.split()[:1] == ["10.96.0.10"], proc
    proc = lab.exec("frontend", ["getent", "hosts", "nosuch.default.svc.cluster.local"],
                    capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2, proc  # "not found", at once: no timeout, no upstream
    status = cli("status")
    assert f"dns kube-system/coredns (dnsmasq): pods use nameserver {lab.nameserver}" in (
        status.stdout)  # fmt: skip


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_pods_reach_each_other(lab, family):
    web, backend = lab.pod("web"), lab.pod("backend")
    for src, dst, port in [("mypod", web, 8080), ("frontend", backend, 9090),
                           ("backend", web, 8080)]:  # fmt: skip
        result = connect(lab, src, getattr(dst, family), port)
        assert result["errno"] == 0, (src, dst.ref, result)
    refused = connect(lab, "mypod", getattr(web, family), 8099)
    assert refused["errno"] == errno.ECONNREFUSED


def test_popen_runs_a_server_in_a_pod(lab):
    server = lab.popen("frontend", [sys.executable, "-m", "http.server", "--bind", "::",
                                    "7070"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        frontend = lab.pod("frontend").ipv4
        wait_until(lambda: connect(lab, "mypod", frontend, 7070)["errno"] == 0, 30,
                   "the server in frontend to listen")  # fmt: skip
        assert connect(lab, "mypod", lab.pod("frontend").ipv6, 7070)["errno"] == 0
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_external_web_over_http_and_https(lab):
    for url in (f"http://{EXTERNAL_WEB}/", f"https://{EXTERNAL_WEB}/"):
        proc = lab.exec("mypod", ["curl", "-sSk", "-m", "5", url],
                        capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 0, (url, proc.stderr)
        assert proc.stdout == "hello from external\n"
    proc = lab.exec("shop/backend", ["curl", "-sSk", "-m", "5", "-o", "/dev/null", "-w",
                                     "%{size_download}", f"https://{EXTERNAL_WEB}/bytes/100000"],
                    capture_output=True, text=True)  # fmt: skip
    assert proc.stdout == "100000", proc.stderr


def test_service_cluster_ip_reaches_web_from_pods_and_node(lab):
    needs_services(lab)
    proc = lab.exec("frontend", ["curl", "-sS", "-m", "5", "http://10.96.0.10/"],
                    capture_output=True, text=True)  # fmt: skip
    assert proc.stdout == "hello from default/web\n", proc.stderr
    # The web pod itself (hairpin through the node).
    proc = lab.exec("web", ["curl", "-sS", "-m", "5", "http://10.96.0.10/"],
                    capture_output=True, text=True)  # fmt: skip
    assert proc.stdout == "hello from default/web\n", proc.stderr
    proc = subprocess.run(["curl", "-sS", "-m", "5", "http://10.96.0.10/"],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.stdout == "hello from default/web\n", proc.stderr


def test_unreachable_fails_with_icmp_not_a_timeout(lab):
    # A long connect timeout: an unreachable error (not ETIMEDOUT) means ICMP said so.
    result = connect(lab, "mypod", EXTERNAL_UNREACHABLE, 80, timeout=20)
    assert result["errno"] in (errno.EHOSTUNREACH, errno.ENETUNREACH), result


def test_blackhole_drops_silently(lab):
    result = connect(lab, "mypod", EXTERNAL_BLACKHOLE, 80, timeout=0.5)
    assert result["errno"] == errno.ETIMEDOUT, result
    assert result["elapsed"] >= 0.5


def test_forwarding_is_per_interface_only(lab):
    state = json.loads(lab.state_path.read_text())
    # Every sysctl the lab changed in the root netns belongs to a lab interface,
    # except turning on br_netfilter's IPv4 hook (which Services need).
    assert state["sysctls"]
    for key in state["sysctls"]:
        assert key == "net.bridge.bridge-nf-call-iptables" or key.split(".")[3].startswith("psl")


def test_guard_drops_lab_traffic_headed_off_the_lab(lab):
    """A pod's packet routed to a non-lab interface is dropped by the nft guard.

    A veth pair named outside the lab prefix stands in for the machine's real
    uplink, and a TEST-NET host route points at it: had the guard failed, the
    packet would go out of that veth (and nowhere further), not off the machine.
    """
    target = "198.51.100.200"
    subprocess.run(["ip", "link", "del", "pstst0"], capture_output=True)
    try:
        subprocess.run(["ip", "link", "add", "pstst0", "type", "veth", "peer", "name", "pstst1"],
                       check=True)  # fmt: skip
        for name in ("pstst1", "pstst0"):  # no IPv6 chatter to blur the tx count
            subprocess.run(["ip", "link", "set", name, "addrgenmode", "none"], check=True)
            subprocess.run(["ip", "link", "set", name, "up"], check=True)
        subprocess.run(["ip", "route", "add", f"{target}/32", "dev", "pstst0"], check=True)
        route = subprocess.run(["ip", "route", "get", target, "from", lab.pod("mypod").ipv4,
                                "iif", "psl0"], capture_output=True, text=True).stdout  # fmt: skip
        assert "dev pstst0" in route, route  # the node would forward it there...

        def tx_packets() -> int:
            return int(Path("/sys/class/net/pstst0/statistics/tx_packets").read_text())

        before_drops, before_tx = guard_drops(), tx_packets()
        result = connect(lab, "mypod", target, 80, timeout=0.3)
        assert result["errno"] == errno.ETIMEDOUT
        assert guard_drops() > before_drops  # ...but the guard drops it
        assert tx_packets() == before_tx
    finally:
        subprocess.run(["ip", "link", "del", "pstst0"], capture_output=True)


def test_delay_adds_latency_to_a_connect(lab):
    web = lab.pod("web")
    mypod = lab.pod("mypod")
    plain = [connect(lab, "mypod", web.ipv4, 8080)["elapsed"] for _ in range(3)]  # for the message
    with delayed(mypod.netns, 0.05) as line:
        assert line.alive()
        assert nfqueue_rules(mypod.netns).count("NFQUEUE") == 2
        with pytest.raises(UserError, match="another delay"), delayed(mypod.netns, 0.05):
            pass
        slow = [connect(lab, "mypod", web.ipv4, 8080)["elapsed"] for _ in range(3)]
        slow6 = connect(lab, "mypod", web.ipv6, 8080)["elapsed"]
        # Bulk traffic still flows, in order, through the queue.
        proc = lab.exec("mypod", ["curl", "-sS", "-m", "10", "-o", "/dev/null", "-w",
                                  "%{size_download}", f"http://{EXTERNAL_WEB}/bytes/2000000"],
                        capture_output=True, text=True)  # fmt: skip
        assert proc.stdout == "2000000", proc.stderr
        helper = line.process
    assert min(slow) >= 0.05 and slow6 >= 0.05, (plain, slow, slow6)
    assert helper.poll() is not None
    assert nfqueue_rules(mypod.netns) == ""
    assert connect(lab, "mypod", web.ipv4, 8080)["errno"] == 0


def test_cli_exec_returns_the_command_exit_code(lab):
    proc = cli("exec", "mypod", "--", "sh", "-c", "ip -4 -o addr show eth0; exit 7")
    assert proc.returncode == 7
    assert lab.pod("mypod").ipv4 in proc.stdout
    # Killed by a signal: the shell's 128+N, not 256-N.
    proc = cli("exec", "mypod", "--", "sh", "-c", "kill -KILL $$")
    assert (proc.returncode, proc.stderr) == (128 + signal.SIGKILL, "")


@pytest.mark.parametrize("args", [["status"], ["exec", "mypod", "--", "true"]])
def test_lab_commands_import_neither_numpy_nor_ebpf(lab, args):
    proc, modules = lab_side_imports(*args)
    assert proc.returncode == 0, proc.stderr
    assert "podsight.lab.lab" in modules
    assert_light(modules)


@pytest.mark.parametrize("args", [["status"], ["exec", "mypod", "--", "true"]])
def test_podsight_lab_imports_neither_numpy_nor_ebpf(lab, args):
    proc, modules = podsight_imports("lab", *args)
    assert proc.returncode == 0, proc.stderr
    assert "podsight.lab.lab" in modules
    assert_light(modules)


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed command printed, without its ``podsight: error:`` prefix."""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("podsight: error: "), proc.stderr
    return lines[0].removeprefix("podsight: error: ")


def test_cli_exec_of_a_missing_command_is_127_like_a_shell(lab):
    # `ip netns exec` said 'exec of "/nonexistent" failed' with exit 1, like any failing command.
    for command in ("/nonexistent", "no-such-command-here"):
        proc = cli("exec", "mypod", "--", command, "arg")
        assert proc.returncode == 127, proc
        assert error_line(proc) == f"{command}: command not found"
    with pytest.raises(CommandNotFound, match="command not found"):
        lab.exec("mypod", ["/nonexistent"])


def test_cli_exec_of_a_command_that_cannot_run_is_126(lab, tmp_path):
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o644)
    proc = cli("exec", "mypod", "--", str(script))
    assert proc.returncode == 126, proc
    assert error_line(proc) == f"{script}: permission denied (not executable)"
    proc = cli("exec", "mypod", "--", str(tmp_path))
    assert proc.returncode == 126, proc
    assert error_line(proc) == f"{tmp_path}: is a directory"
    script.chmod(0o755)  # the same file, executable: it runs
    proc = cli("exec", "mypod", "--", str(script))
    assert (proc.returncode, proc.stdout) == (0, "ran\n"), proc


def test_cli_state_dir_it_cannot_use_is_one_line_exit_1(lab):
    proc = cli("status", env={"PODSIGHT_LAB_DIR": "/dev/null/lab"})
    assert proc.returncode == 1
    assert error_line(proc) == "/dev/null/lab/state.json: Not a directory"


def test_cli_delay_runs_until_stopped(lab):
    web = lab.pod("web")
    proc = subprocess.Popen(
        [sys.executable, "-m", "podsight.cli.main", "lab", "delay", "shop/frontend", "60ms"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "delaying TCP sent by shop/frontend by 60ms" in line, line
        assert connect(lab, "frontend", web.ipv4, 8080)["elapsed"] >= 0.06
        # SIGTERM takes the same path as Ctrl-C, and unlike SIGINT it is not
        # ignored when the test run itself was started in the background.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert nfqueue_rules(lab.pod("frontend").netns) == ""
    assert connect(lab, "frontend", web.ipv4, 8080)["errno"] == 0


def test_delay_helper_exits_when_orphaned(lab):
    """A killed `lab delay` leaves no helper holding packets; the bypass lets traffic pass."""
    web = lab.pod("web")
    proc = subprocess.Popen(
        [sys.executable, "-m", "podsight.cli.main", "lab", "delay", "backend", "80ms"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=child_env(),
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        assert "delaying" in proc.stderr.readline()
        assert connect(lab, "backend", web.ipv4, 8080)["elapsed"] >= 0.08
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1
        helper = int(children[0])
    finally:
        proc.kill()
        proc.wait()
    netns = lab.pod("backend").netns
    try:
        wait_until(lambda: not process_alive(helper, "podsight.lab.delayline"), 30,
                   "the orphaned delay helper to exit")  # fmt: skip
        # Its rule is still there; --queue-bypass lets packets pass with no helper bound
        # (without it they would be dropped and this connect would time out).
        assert nfqueue_rules(netns) != ""
        assert connect(lab, "backend", web.ipv4, 8080, timeout=10)["errno"] == 0
    finally:
        remove_delay_rules(netns)  # what the killed `lab delay` could not do
    assert nfqueue_rules(netns) == ""


# ------------------------------------------- these take the lab down: keep them last


def test_cli_on_a_lab_that_is_down_is_one_line_exit_1(lab):
    lab.down()
    try:
        for args in (["exec", "mypod", "--", "true"], ["delay", "mypod", "50ms"]):
            proc = cli(*args)
            assert proc.returncode == 1, proc
            assert error_line(proc) == "lab pod default/mypod is not running (run: podsight lab up)"
        status = cli("status")
        assert status.returncode == 0 and status.stdout.endswith(
            "lab is down (run: podsight lab up)\n")  # fmt: skip
    finally:
        lab.up()


def processes_running(text: str) -> list[int]:
    """Pids whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_demo_stops_a_gadget_that_never_gets_ready(lab, capfd):
    """One line naming the command and what it printed, exit 1; the lab goes only if the
    demo built it. (It used to wait for the ready line forever.)"""
    from podsight import demo

    script = "echo still loading >&2; exec sleep 600"
    never = demo.Act("mypod", ["lab", "exec", "mypod", "--", "sh", "-c", script], "tracing", [])
    expected = (
        f"podsight: error: podsight lab exec mypod -- sh -c '{script}' never became ready "
        "(no 'tracing' on stderr within 2 s); its stderr: still loading"
    )

    def errors(err: str) -> list[str]:
        return [line for line in err.splitlines() if "error" in line]

    assert demo.main(lambda _: [never], ready_timeout=2) == 1
    err = capfd.readouterr().err
    assert errors(err) == [expected], err
    assert "tearing the lab down" not in err and lab.is_up(), lab.problems()  # it was up before
    assert processes_running(script) == []
    # A gadget that exits instead: named with its exit status and its error, at once.
    fails = demo.Act("mypod", ["lab", "exec", "mypod", "--", "/nonexistent"], "tracing", [])
    assert demo.main(lambda _: [fails], ready_timeout=600) == 1
    assert errors(capfd.readouterr().err) == [
        "podsight: error: podsight lab exec mypod -- /nonexistent exited (exit 127) before it "
        "was ready; its stderr: podsight: error: /nonexistent: command not found"]  # fmt: skip

    lab.down()
    try:
        assert demo.main(lambda _: [never], ready_timeout=2) == 1
        err = capfd.readouterr().err
        assert errors(err) == [expected], err
        assert "==> tearing the lab down" in err
        assert [n for n in netns_names() if n.startswith("psl")] == [] and psl_links() == []
        assert processes_running(script) == []
    finally:
        lab.up()


def test_half_built_lab_is_rebuilt(lab):
    state = json.loads(lab.state_path.read_text())
    os.kill(state["pids"]["default/web"], signal.SIGKILL)
    subprocess.run(["ip", "netns", "del", "psl-shop-frontend"], check=True)
    assert not lab.is_up()
    assert any("frontend" in p for p in lab.problems())
    lab.up()
    assert lab.is_up(), lab.problems()
    assert connect(lab, "frontend", lab.pod("web").ipv4, 8080)["errno"] == 0


def assert_lab_gone(lab: Lab, pids: list[int], sysctls: dict[str, str]) -> None:
    assert [n for n in netns_names() if n.startswith("psl")] == []
    assert psl_links() == []
    assert not nft_table_exists()
    assert not lab.inventory_path.exists() and not lab.state_path.exists()
    assert dnsmasq_pids(lab) == []
    etc_netns = Path("/etc/netns")
    assert not etc_netns.exists() or list(etc_netns.iterdir()), "an empty /etc/netns left"
    assert list(etc_netns.glob("psl*")) == []
    assert not lab.dns_conf_path.exists() and not lab.dns_hosts_path.exists()
    assert not any(process_alive(pid, "podsight.lab") for pid in pids)
    for key, value in sysctls.items():
        assert Path("/proc/sys", *key.split(".")).read_text().strip() == value, key
    assert not lab.is_up()


def test_down_removes_everything_and_is_idempotent(lab):
    sysctls = read_sysctls()
    state = json.loads(lab.state_path.read_text())
    if lab.nameserver:
        assert dnsmasq_pids(lab), "the cluster DNS server is not running"
        assert lab.resolv_conf_path("mypod").exists()
    for key, old in state["sysctls"].items():
        if key in sysctls:
            sysctls[key] = old  # down must put back what was there before up
    pids = list(json.loads(lab.state_path.read_text())["pids"].values())
    try:
        lab.down()
        assert_lab_gone(lab, pids, sysctls)
        lab.down()
        assert_lab_gone(lab, pids, sysctls)
    finally:
        lab.up()


def test_down_without_state_file_finds_the_lab_by_name(lab):
    pids = list(json.loads(lab.state_path.read_text())["pids"].values())
    lab.state_path.unlink()
    try:
        proc = cli("down")
        assert proc.returncode == 0, proc.stderr
        assert_lab_gone(lab, pids, {})
    finally:
        lab.up()
    assert lab.is_up(), lab.problems()


def test_up_without_dnsmasq_runs_without_dns(lab):
    """No dnsmasq: ``up`` works and says so in one line; status and inventory say so too."""
    lab.down()
    try:
        proc = cli("up", env={"PODSIGHT_LAB_DNSMASQ": "/nonexistent/dnsmasq"})
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        notes = [line for line in proc.stderr.splitlines() if "DNS" in line]
        assert notes == ["note: the lab runs without cluster DNS: dnsmasq not installed "
                         "(apt-get install -y dnsmasq-base)"], proc.stderr  # fmt: skip
        assert "dns off: dnsmasq not installed" in proc.stdout and "lab is up" in proc.stdout
        assert lab.nameserver is None and lab.dns_off_reason
        assert dnsmasq_pids(lab) == [] and list(Path("/etc/netns").glob("psl*")) == []
        inv = json.loads(lab.inventory_path.read_text())
        coredns = next(i for i in inv["items"] if i["metadata"]["name"] == "coredns")
        assert coredns["status"]["containerStatuses"][0]["ready"] is False
        assert "dnsmasq" in coredns["metadata"]["annotations"]["podsight.io/not-ready"]
        assert "kube-dns" not in [i["metadata"]["name"] for i in inv["items"]]
        ruleset = subprocess.run(["nft", "list", "table", "inet", "podsight-lab"],
                                 capture_output=True, text=True).stdout  # fmt: skip
        assert "10.96.0.10" in ruleset and "10.96.0.53" not in ruleset
        assert connect(lab, "mypod", lab.pod("web").ipv4, 8080)["errno"] == 0
        # dnsmasq is installed for this Lab(): the DNS-less lab wants a rebuild, which adds DNS.
        assert any("dnsmasq is installed now" in p for p in lab.problems())
        lab.up()
        assert lab.is_up(), lab.problems()
        reply = dns(lab, "mypod", lab.pod("coredns").ipv4, "web.default.svc.cluster.local")
        assert reply["answers"] == [["A", "10.96.0.10"]]
    finally:
        lab.up()
