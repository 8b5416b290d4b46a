"""Finding the API like kubectl does, and failing with one line a user can act on."""

# ruff: noqa: F401, F811  (pytest fixtures are imported, then named as parameters)

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from k8s.fixtures import (
    Cluster,
    core,  # fixture
    free_port,
    kube,  # fixture
    make_namespace,
)

from podsight.errors import UserError
from podsight.identity.kube import KubeCache, load_config
from podsight.identity.kube.cache import NODES, PODS, REPLICASETS, SERVICES


def write_kubeconfig(path: Path, contexts: dict[str, str], current: str | None,
                     extra_user: dict[str, Any] | None = None) -> Path:
    """contexts: name -> server URL."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        **({"current-context": current} if current else {}),
        "clusters": [{"name": f"c-{n}", "cluster": {"server": s}} for n, s in contexts.items()],
        "users": [{"name": f"u-{n}", "user": extra_user or {"token": f"tok-{n}"}}
                  for n in contexts],
        "contexts": [{"name": n, "context": {"cluster": f"c-{n}", "user": f"u-{n}",
                                             "namespace": f"ns-{n}"}} for n in contexts],
    }))
    return path


def test_explicit_kubeconfig_missing(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"^kubeconfig .*/nope does not exist$"):
        load_config(str(tmp_path / "nope"), environ={})


def test_explicit_kubeconfig_and_context(tmp_path: Path) -> None:
    kc = write_kubeconfig(tmp_path / "kc", {"a": "https://10.0.0.1:6443",
                                            "b": "https://10.0.0.2:6443/"}, "a")
    cfg = load_config(str(kc), environ={})
    assert (cfg.server, cfg.context, cfg.namespace) == ("https://10.0.0.1:6443", "a", "ns-a")
    assert cfg.headers() == {"Authorization": "Bearer tok-a"}
    cfg = load_config(str(kc), "b", environ={})
    assert (cfg.server, cfg.host, cfg.port) == ("https://10.0.0.2:6443", "10.0.0.2", 6443)
    assert "context b" in cfg.source


def test_unknown_context_names_the_known_ones(tmp_path: Path) -> None:
    kc = write_kubeconfig(tmp_path / "kc", {"a": "https://10.0.0.1"}, "a")
    with pytest.raises(UserError) as err:
        load_config(str(kc), "prod", environ={})
    assert str(err.value) == f"context 'prod' not found in kubeconfig {kc} (contexts: a)"
    assert "\n" not in str(err.value)


def test_kubeconfig_env_colon_list_merges_first_wins(tmp_path: Path) -> None:
    one = write_kubeconfig(tmp_path / "one", {"a": "https://10.0.0.1"}, "a")
    two = write_kubeconfig(tmp_path / "two", {"a": "https://10.9.9.9", "b": "https://10.0.0.2"},
                           "b")
    env = {"KUBECONFIG": f"{tmp_path / 'missing'}:{one}:{two}", "HOME": str(tmp_path)}
    # kubectl: the first file that sets current-context wins, and so does the
    # first definition of each name
    cfg = load_config(environ=env)
    assert (cfg.context, cfg.server) == ("a", "https://10.0.0.1")
    assert load_config(None, "b", environ=env).server == "https://10.0.0.2"


def test_home_kubeconfig(tmp_path: Path) -> None:
    (tmp_path / ".kube").mkdir()
    write_kubeconfig(tmp_path / ".kube/config", {"h": "https://10.0.0.3"}, "h")
    assert load_config(environ={"HOME": str(tmp_path)}).server == "https://10.0.0.3"


def test_no_configuration_anywhere(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no Kubernetes configuration: no kubeconfig at"):
        load_config(environ={"HOME": str(tmp_path)})
    with pytest.raises(UserError, match="KUBECONFIG=/x/y names no existing file"):
        load_config(environ={"HOME": str(tmp_path), "KUBECONFIG": "/x/y"})
    with pytest.raises(UserError, match="context 'c' not found"):
        load_config(None, "c", environ={"HOME": str(tmp_path)})


def test_kubeconfig_without_current_context(tmp_path: Path) -> None:
    kc = write_kubeconfig(tmp_path / "kc", {"a": "https://10.0.0.1"}, None)
    with pytest.raises(UserError, match="has no current-context; pass --context"):
        load_config(str(kc), environ={})


def test_broken_kubeconfig_is_one_line(tmp_path: Path) -> None:
    kc = tmp_path / "kc"
    kc.write_text("clusters: [\n  - {name: x\n")
    with pytest.raises(UserError) as err:
        load_config(str(kc), environ={})
    assert str(err.value) == (f"kubeconfig {kc} is not valid YAML: expected the node content, "
                              "but found '-' at line 2, column 3")


def one_line_error(*args: Any, **kwargs: Any) -> str:
    with pytest.raises(UserError) as err:
        load_config(*args, **kwargs)
    text = str(err.value)
    assert "\n" not in text
    return text


def test_kubeconfig_directory_says_it_is_a_directory(tmp_path: Path) -> None:
    assert one_line_error(str(tmp_path), environ={}) == (
        f"kubeconfig {tmp_path} is a directory, not a file")
    # the same in KUBECONFIG (kubectl refuses it too), and as ~/.kube/config
    env = {"KUBECONFIG": f"{tmp_path / 'missing'}:{tmp_path}", "HOME": str(tmp_path)}
    assert one_line_error(environ=env) == f"kubeconfig {tmp_path} is a directory, not a file"
    (tmp_path / ".kube/config").mkdir(parents=True)
    assert one_line_error(environ={"HOME": str(tmp_path)}) == (
        f"kubeconfig {tmp_path}/.kube/config is a directory, not a file")


def test_kubeconfig_that_is_not_a_file_or_not_a_kubeconfig(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert one_line_error(str(fifo), environ={}) == f"kubeconfig {fifo} is not a regular file"
    empty = tmp_path / "empty"
    empty.write_text("# nothing here\n")
    assert one_line_error(str(empty), environ={}) == f"kubeconfig {empty} is empty"
    listing = tmp_path / "list"
    listing.write_text("- a\n- b\n")
    assert one_line_error(str(listing), environ={}) == (
        f"kubeconfig {listing} is not a kubeconfig: a YAML list where a mapping with clusters, "
        "contexts and users was expected")
    tab = tmp_path / "tab"
    tab.write_text("apiVersion: v1\n\tkind: Config\n")
    assert one_line_error(str(tab), environ={}).startswith(
        f"kubeconfig {tab} is not valid YAML: found character '\\t' that cannot start any "
        "token at line 2, column 1")


def test_unreadable_kubeconfig_says_permission_denied(tmp_path: Path) -> None:
    """Root reads any file: as root, the check runs without the capabilities that allow it
    (setpriv, util-linux); as anyone else, as is."""
    kc = write_kubeconfig(tmp_path / "kc", {"a": "https://10.0.0.1"}, "a")
    kc.chmod(0)
    if os.geteuid() != 0:
        assert one_line_error(str(kc), environ={}) == (
            f"cannot read kubeconfig {kc}: permission denied")
        return
    code = ("import sys\nfrom podsight.errors import UserError\n"
            "from podsight.identity.kube import load_config\n"
            "try:\n    load_config(sys.argv[1], environ={})\n"
            "except UserError as e:\n    print(e)\n")
    out = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
                          sys.executable, "-c", code, str(kc)],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    assert out == f"cannot read kubeconfig {kc}: permission denied\n"


def test_context_problems_name_the_contexts(tmp_path: Path) -> None:
    kc = write_kubeconfig(tmp_path / "kc", {"a": "https://10.0.0.1", "b": "https://10.0.0.2"},
                          None)
    assert one_line_error(str(kc), environ={}) == (
        f"kubeconfig {kc} has no current-context; pass --context (contexts: a, b)")
    assert one_line_error(str(kc), "c", environ={}) == (
        f"context 'c' not found in kubeconfig {kc} (contexts: a, b)")
    bare = tmp_path / "bare"
    bare.write_text("apiVersion: v1\nkind: Config\n")
    assert one_line_error(str(bare), environ={}) == (
        f"kubeconfig {bare} has no current-context; pass --context (contexts: none)")


def test_cli_kubeconfig_directory_is_one_line(tmp_path: Path) -> None:
    from tracing import run_cli

    out = run_cli("trace", "tcpconnect", "--kubeconfig", str(tmp_path))
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == f"podsight: error: kubeconfig {tmp_path} is a directory, not a file\n"


def fake_service_account(d: Path, token: str, ca: str = "not a real CA\n") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "token").write_text(token)
    (d / "ca.crt").write_text(ca)
    (d / "namespace").write_text("podsight\n")
    return d


def test_in_cluster(tmp_path: Path) -> None:
    sa = fake_service_account(tmp_path / "sa", "secret-token")
    env = {"HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": "10.96.0.1",
           "KUBERNETES_SERVICE_PORT": "443"}
    cfg = load_config(environ=env, service_account_dir=sa)
    assert (cfg.server, cfg.namespace, cfg.source) == (
        "https://10.96.0.1:443", "podsight", "in-cluster service account")
    assert cfg.headers() == {"Authorization": "Bearer secret-token"}
    assert cfg.ca_file == str(sa / "ca.crt")
    env["KUBERNETES_SERVICE_HOST"] = "fd00::1"
    assert load_config(environ=env, service_account_dir=sa).server == "https://[fd00::1]:443"
    # a kubeconfig, when there is one, wins over in-cluster (kubectl does the same)
    kc = write_kubeconfig(tmp_path / "kc", {"a": "https://10.0.0.1"}, "a")
    assert load_config(environ={**env, "KUBECONFIG": str(kc)},
                       service_account_dir=sa).server == "https://10.0.0.1"


def test_in_cluster_without_token(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": "10.96.0.1",
           "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(UserError, match=r"no service account file .*/token"):
        load_config(environ=env, service_account_dir=tmp_path / "none")


def test_dead_api_server_is_one_line_and_close_is_prompt(tmp_path: Path) -> None:
    port = free_port()
    kc = write_kubeconfig(tmp_path / "kc", {"a": f"https://127.0.0.1:{port}"}, "a")
    cache = KubeCache.connect(str(kc)).start()
    try:
        with pytest.raises(UserError) as err:
            cache.wait_synced(600)
        # Failing fast is this message: a wait that ran out would say "timed out".
        assert str(err.value) == (
            f"cannot reach the Kubernetes API at https://127.0.0.1:{port}: connection refused")
        assert any(h.last_error for h in cache.health())
    finally:
        closes_without_hanging(cache)
    assert not any(t.name.startswith("podsight-informer") and t.is_alive()
                   for t in threading.enumerate())


def test_dead_api_server_without_fail_fast_times_out_with_the_cause(tmp_path: Path) -> None:
    port = free_port()
    kc = write_kubeconfig(tmp_path / "kc", {"a": f"https://127.0.0.1:{port}"}, "a")
    with KubeCache.connect(str(kc), resources=[PODS]) as cache, \
            pytest.raises(UserError, match="connection refused"):
        cache.wait_synced(1.0, fail_fast=False)


# ------------------------------------------------------------ against the API
def test_wrong_token_is_401_in_one_line(kube: Cluster, tmp_path: Path) -> None:
    kc = kube.kubeconfig_for(tmp_path / "kc", token="not-the-token")
    with KubeCache.connect(kc, resources=[PODS]) as cache, pytest.raises(UserError) as err:
        cache.wait_synced(10)
    assert str(err.value) == (
        f"the Kubernetes API at {kube.server} rejected the credentials from kubeconfig {kc} "
        "(context test) (401 Unauthorized) to list pods")


def test_tls_verification_failure(kube: Cluster, tmp_path: Path) -> None:
    kc = write_kubeconfig(tmp_path / "kc", {"a": kube.server}, "a")  # no CA: system roots
    with KubeCache.connect(str(kc), resources=[PODS]) as cache, pytest.raises(UserError) as err:
        cache.wait_synced(10)
    assert str(err.value).startswith(f"cannot reach the Kubernetes API at {kube.server}: TLS ")


def service_account_token(core: Any, ns: str, name: str) -> str:
    core.create_namespaced_service_account(ns, {"metadata": {"name": name}})
    resp = core.create_namespaced_service_account_token(
        name, ns, {"spec": {"audiences": [], "expirationSeconds": 3600}})
    token = resp.status.token if hasattr(resp, "status") else resp["status"]["token"]
    return str(token)


def grant(kube: Cluster, name: str, subject_ns: str, sa: str, rules: list[dict[str, Any]]) -> None:
    from k8s.fixtures import api_client
    from kubernetes import client

    rbac = client.RbacAuthorizationV1Api(api_client(kube))
    rbac.create_cluster_role({"metadata": {"name": name}, "rules": rules})
    rbac.create_cluster_role_binding({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": subject_ns}]})


def test_in_cluster_service_account_and_rbac(kube: Cluster, core: Any,
                                             tmp_path: Path) -> None:
    """A real service account token, read the way a pod reads it; RBAC errors name the verb."""
    ns = make_namespace(core)
    token = service_account_token(core, ns, "agent")
    sa_dir = fake_service_account(tmp_path / "sa", token, Path(kube.ca_file).read_text())
    env = {"HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": "127.0.0.1",
           "KUBERNETES_SERVICE_PORT": str(kube.port)}
    cfg = load_config(environ=env, service_account_dir=sa_dir)
    user = f"system:serviceaccount:{ns}:agent"

    # no rights at all: pods are required, so the first 403 is the answer
    with KubeCache.connect(config=cfg, resources=[PODS]) as cache, \
            pytest.raises(UserError) as err:
        cache.wait_synced(10)
    assert str(err.value).startswith(f"the Kubernetes API at {cfg.server} forbids list pods (403)")
    assert f'User "{user}" cannot list resource "pods"' in str(err.value)

    # pods and services but not nodes: the message says nodes
    grant(kube, f"{ns}-view", ns, "agent", [
        {"apiGroups": [""], "resources": ["pods", "services"], "verbs": ["list", "watch"]}])
    with KubeCache.connect(config=cfg, resources=[PODS, SERVICES, NODES]) as cache, \
            pytest.raises(UserError, match=r"forbids list nodes \(403\)"):
        cache.wait_synced(10)

    # ReplicaSets forbidden: optional, so the cache syncs and reports it as degraded
    grant(kube, f"{ns}-nodes", ns, "agent", [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}])
    with KubeCache.connect(config=cfg, resources=[PODS, SERVICES, NODES, REPLICASETS],
                           max_backoff=1.0) as cache:
        cache.wait_synced(10)
        rs = next(h for h in cache.health() if h.resource == "replicasets.apps")
        assert rs.degraded and rs.last_error and "forbids list replicasets.apps (403)" in \
            rs.last_error
        assert cache.service_by_ip("10.96.0.1") is not None


def closes_without_hanging(cache: KubeCache) -> None:
    """close() must not wait out a watch's long poll (minutes): a hang fails here, slowness
    on a busy machine does not."""
    closer = threading.Thread(target=cache.close)
    closer.start()
    closer.join(60)
    assert not closer.is_alive(), "close() hung"
