"""The agent checks callers with the real kube-apiserver: TokenReview, then a
SubjectAccessReview for verb use on agents.podsight.io (see docs/cluster.md)."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

from clusterrun import agents, client
from k8s.fixtures import Cluster, api_client, core, kube  # noqa: F401

from podsight.lab import Lab


def _service_account_token(cluster: Cluster, name: str) -> str:
    """A token the API server signs for a new ServiceAccount (TokenRequest API)."""
    from kubernetes import client as k

    api = k.CoreV1Api(api_client(cluster))
    api.create_namespaced_service_account("default", k.V1ServiceAccount(
        metadata=k.V1ObjectMeta(name=name)))
    request = k.AuthenticationV1TokenRequest(
        spec=k.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    req = api.create_namespaced_service_account_token(name, "default", request)
    return str(req.status.token)


def _grant(cluster: Cluster, sa: str) -> None:
    from kubernetes import client as k

    rbac = k.RbacAuthorizationV1Api(api_client(cluster))
    role = f"podsight-user-{sa}"
    rbac.create_cluster_role(k.V1ClusterRole(
        metadata=k.V1ObjectMeta(name=role),
        rules=[k.V1PolicyRule(api_groups=["podsight.io"], resources=["agents"],
                              verbs=["use"])]))
    rbac.create_cluster_role_binding(k.V1ClusterRoleBinding(
        metadata=k.V1ObjectMeta(name=role),
        role_ref=k.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole",
                             name=role),
        subjects=[k.RbacV1Subject(kind="ServiceAccount", name=sa, namespace="default")]))


def _run(addr: str, token_file: Path | None) -> tuple[int, str]:
    words = ["--agent-addr", addr]
    if token_file is not None:
        words += ["--token-file", str(token_file)]
    proc: Any = client(*words, "trace", "tcpconnect", "--max-time", "1", "-o", "json",
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=90)
    return proc.returncode, err


def test_agent_auth_with_the_real_apiserver(kube: Cluster, lab: Lab,  # noqa: F811
                                            tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:6]
    allowed, denied = f"allowed-{suffix}", f"denied-{suffix}"
    tokens = {}
    for sa in (allowed, denied):
        tokens[sa] = tmp_path / f"{sa}.token"
        tokens[sa].write_text(_service_account_token(kube, sa))
    _grant(kube, allowed)
    bad = tmp_path / "bad.token"
    bad.write_text("not-a-real-token")
    with agents({"node-a": None}, tmp_path, auth="kubernetes",
                kubeconfig=kube.kubeconfig) as running:
        addr = running[0].addr
        code, err = _run(addr, None)
        assert code == 1 and "no bearer token" in err and "UNAUTHENTICATED" in err, err
        code, err = _run(addr, bad)
        assert code == 1 and "UNAUTHENTICATED" in err, err
        code, err = _run(addr, tokens[denied])
        assert code == 1 and "PERMISSION_DENIED" in err and denied in err, err
        code, err = _run(addr, tokens[allowed])
        assert code == 0 and "tracing TCP connects" in err, err
        log = running[0].log.read_text()
    assert f"run by system:serviceaccount:default:{allowed}" in log


def test_auth_none_is_loopback_only() -> None:
    import sys

    from clusterrun import ENV

    p = subprocess.run([sys.executable, "-m", "podsight.cli.main", "agent", "--listen",
                        "10.1.2.3:7750", "--auth", "none"], env=dict(ENV, POD_IP="10.1.2.3"),
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--auth none is for loopback only" in p.stderr, p.stderr
