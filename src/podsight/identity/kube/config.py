"""Where the Kubernetes API is and how to authenticate, found the way kubectl finds it.

kubectl users already have a working setup (``--kubeconfig``, ``--context``,
``KUBECONFIG`` as a colon list, ``~/.kube/config``, or a pod's service
account), so podsight reads the same places in the same order instead of
inventing its own. Parsing kubeconfig files and running credential plugins
(exec, OIDC, token files, client certificates) is delegated to the official
``kubernetes`` client's loaders, which track kubectl's behaviour; only their
result (server, TLS material, a header callback) is kept. The client's
generated model classes are never used: the hot path parses raw JSON itself.

Every problem becomes a one-line :class:`~podsight.errors.UserError`.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from podsight.errors import UserError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = "~/.kube/config"


@dataclass(frozen=True)
class KubeConfig:
    """A resolved connection: endpoint, TLS material and a way to get auth headers.

    ``headers()`` is a call, not a field, because tokens rotate: in-cluster
    service account tokens are re-read about every minute and exec plugins are
    re-run when their credential expires, so each request asks afresh.
    """

    server: str  # e.g. https://127.0.0.1:6443 (no trailing slash, may carry a path prefix)
    source: str  # where it came from, for error messages: "kubeconfig /x (context y)"
    context: str = ""
    namespace: str = "default"
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify_tls: bool = True
    tls_server_name: str | None = None
    auth_headers: Callable[[], dict[str, str]] = field(
        default=dict, repr=False, compare=False
    )

    @property
    def scheme(self) -> str:
        return urlsplit(self.server).scheme or "https"

    @property
    def host(self) -> str:
        return urlsplit(self.server).hostname or "localhost"

    @property
    def port(self) -> int:
        parts = urlsplit(self.server)
        return parts.port or (443 if parts.scheme != "http" else 80)

    @property
    def path_prefix(self) -> str:
        """A path the server URL carries (rancher-style proxies), prepended to API paths."""
        return urlsplit(self.server).path.rstrip("/")

    def headers(self) -> dict[str, str]:
        """Authentication headers for one request (may refresh a rotating token)."""
        try:
            return self.auth_headers()
        except UserError:
            raise
        except Exception as exc:  # a credential plugin failed: the user must fix it
            raise UserError(f"cannot get Kubernetes credentials ({self.source}): {exc}") from None

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context for this server, built once per connection attempt."""
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise UserError(
                f"bad TLS files for the Kubernetes API ({self.source}): {exc}"
            ) from None
        if not self.verify_tls:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def load_config(
    kubeconfig: str | None = None,
    context: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    service_account_dir: Path = SERVICE_ACCOUNT_DIR,
) -> KubeConfig:
    """Resolve the connection exactly as kubectl would.

    Order: ``kubeconfig`` (the ``--kubeconfig`` flag), else the ``KUBECONFIG``
    colon list (files merged, first one wins per name), else
    ``~/.kube/config``; when none of those files exists and no ``context`` was
    asked for, the pod's service account (in-cluster). ``environ`` and
    ``service_account_dir`` exist so tests can fake a pod without being one.
    """
    env = os.environ if environ is None else environ
    if kubeconfig:
        path = Path(kubeconfig).expanduser()
        if not path.exists():
            raise UserError(f"kubeconfig {kubeconfig} does not exist")
        return _from_kubeconfig([str(path)], context)

    listed = env.get("KUBECONFIG", "")
    if listed:
        # as kubectl: entries that do not exist are skipped, anything else must load
        paths = [str(Path(p).expanduser()) for p in listed.split(os.pathsep) if p]
        existing = [p for p in paths if os.path.lexists(p)]
        where = f"KUBECONFIG={listed} names no existing file"
    else:
        home = env.get("HOME") or str(Path.home())
        default = DEFAULT_KUBECONFIG.replace("~", home, 1)
        existing = [default] if os.path.lexists(default) else []
        where = f"no kubeconfig at {default}"
    if existing:
        return _from_kubeconfig(existing, context)
    if context:
        raise UserError(f"context {context!r} not found: {where}")
    if env.get("KUBERNETES_SERVICE_HOST") and env.get("KUBERNETES_SERVICE_PORT"):
        return _in_cluster(env, service_account_dir)
    raise UserError(
        f"no Kubernetes configuration: {where}, and not running in a pod "
        "(KUBERNETES_SERVICE_HOST unset); pass --kubeconfig or set KUBECONFIG"
    )


def _in_cluster(env: Mapping[str, str], sa_dir: Path) -> KubeConfig:
    """A pod's own identity: the service account token and CA kubelet mounts for it."""
    Configuration = _k8s("kubernetes.client").Configuration
    ConfigException = _k8s("kubernetes.config.config_exception").ConfigException
    InClusterConfigLoader = _k8s("kubernetes.config.incluster_config").InClusterConfigLoader

    token, ca = sa_dir / "token", sa_dir / "ca.crt"
    for needed in (token, ca):
        if not needed.is_file():
            raise UserError(f"in-cluster Kubernetes config: no service account file {needed}")
    cfg = Configuration()
    loader = InClusterConfigLoader(
        token_filename=str(token), cert_filename=str(ca), environ=dict(env)
    )
    try:
        loader.load_and_set(cfg)
    except ConfigException as exc:
        raise UserError(f"in-cluster Kubernetes config: {exc}") from None
    namespace = "default"
    ns_file = sa_dir / "namespace"
    if ns_file.is_file():
        namespace = ns_file.read_text().strip() or namespace
    return _from_configuration(cfg, source="in-cluster service account", namespace=namespace)


def check_kubeconfig_file(path: str) -> None:
    """Raise the one line that says what is wrong with one kubeconfig file, if anything:
    not there, a directory, not a regular file, unreadable, empty, not YAML, not a mapping.

    The official loader reports these as tracebacks or as "does not exist"; a user who
    passed a directory or a broken file needs to be told exactly that.
    """
    import stat

    yaml = _k8s("yaml")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"kubeconfig {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"cannot read kubeconfig {path}: {_os_error(exc)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"kubeconfig {path} is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"kubeconfig {path} is not a regular file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UserError(f"cannot read kubeconfig {path}: {_os_error(exc)}") from None
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise UserError(f"kubeconfig {path} is not valid YAML: {_yaml_error(exc)}") from None
    if doc is None:
        raise UserError(f"kubeconfig {path} is empty")
    if not isinstance(doc, dict):
        raise UserError(f"kubeconfig {path} is not a kubeconfig: a YAML {type(doc).__name__} "
                        "where a mapping with clusters, contexts and users was expected")


def _os_error(exc: OSError) -> str:
    """'permission denied', as a person reads it (errno text, lower case)."""
    return (exc.strerror or str(exc)).lower()


def _yaml_error(exc: Exception) -> str:
    """'expected ',' or ']' at line 3, column 7': the problem and where, on one line."""
    problem = getattr(exc, "problem", None) or _one_line(exc)
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(problem)


def _from_kubeconfig(paths: list[str], context: str | None) -> KubeConfig:
    """Load merged kubeconfig files through the official client's loader."""
    Configuration = _k8s("kubernetes.client").Configuration
    ConfigException = _k8s("kubernetes.config.config_exception").ConfigException
    kube_config = _k8s("kubernetes.config.kube_config")
    KubeConfigLoader, KubeConfigMerger = kube_config.KubeConfigLoader, kube_config.KubeConfigMerger

    for path in paths:
        check_kubeconfig_file(path)
    shown = ":".join(paths)
    try:
        merged = KubeConfigMerger(os.pathsep.join(paths))
    except ConfigException as exc:
        raise UserError(f"invalid kubeconfig {shown}: {exc}") from None
    except (OSError, ValueError, _k8s("yaml").YAMLError) as exc:  # unreadable or not YAML
        raise UserError(f"cannot read kubeconfig {shown}: {_one_line(exc)}") from None
    if merged.config is None:
        raise UserError(f"kubeconfig {shown} is empty")
    doc: dict[str, Any] = merged.config.value
    # merged entries are the loader's ConfigNode wrappers; .value is the plain dict
    entries = [getattr(c, "value", c) for c in doc.get("contexts") or []]
    contexts = [str(c["name"]) for c in entries if isinstance(c, dict) and "name" in c]
    # kubectl takes current-context from the first file that sets it (the
    # client's merger lets the last one win, so ask each file in order)
    chosen = context or next(
        (str(merged.config_files[p]["current-context"]) for p in merged.paths
         if (merged.config_files[p] or {}).get("current-context")),
        "",
    )
    if not chosen:
        known = ", ".join(contexts) or "none"
        raise UserError(f"kubeconfig {shown} has no current-context; pass --context "
                        f"(contexts: {known})")
    if chosen not in contexts:
        known = ", ".join(contexts) or "none"
        raise UserError(f"context {chosen!r} not found in kubeconfig {shown} (contexts: {known})")
    cfg = Configuration()
    try:
        loader = KubeConfigLoader(config_dict=merged.config, active_context=chosen,
                                  config_base_path=None)
        loader.load_and_set(cfg)
    except ConfigException as exc:
        raise UserError(f"invalid kubeconfig {shown} (context {chosen}): {exc}") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(
            f"invalid kubeconfig {shown} (context {chosen}): {_one_line(exc)}"
        ) from None
    ctx_entry = next(c for c in entries if isinstance(c, dict) and c.get("name") == chosen)
    namespace = str((ctx_entry.get("context") or {}).get("namespace") or "default")
    return _from_configuration(
        cfg, source=f"kubeconfig {shown} (context {chosen})", context=chosen, namespace=namespace
    )


def _from_configuration(
    cfg: Any, *, source: str, context: str = "", namespace: str = "default"
) -> KubeConfig:
    """Keep only what a raw HTTP client needs from the client's Configuration."""
    server = str(cfg.host or "").rstrip("/")
    if not server:
        raise UserError(f"no Kubernetes API server in {source}")
    if "://" not in server:
        server = "https://" + server

    def headers() -> dict[str, str]:
        out: dict[str, str] = {}
        bearer = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        if bearer:
            out["Authorization"] = _bearer(str(bearer))
        elif getattr(cfg, "username", "") and getattr(cfg, "password", ""):
            out["Authorization"] = "Basic " + _basic(cfg.username, cfg.password)
        return out

    return KubeConfig(
        server=server,
        source=source,
        context=context,
        namespace=namespace,
        ca_file=cfg.ssl_ca_cert or None,
        cert_file=cfg.cert_file or None,
        key_file=cfg.key_file or None,
        verify_tls=bool(cfg.verify_ssl),
        tls_server_name=getattr(cfg, "tls_server_name", None) or None,
        auth_headers=headers,
    )


def _k8s(module: str) -> Any:
    """Import part of the official client lazily: it costs ~0.3 s, paid only when used.

    Typed ``Any`` on purpose: its loaders are untyped, and we use four names.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            "the Kubernetes source needs the 'kubernetes' Python package (pip install kubernetes)"
        ) from None


def _bearer(value: str) -> str:
    """Normalise "bearer x" (in-cluster loader) and "Bearer x" to one spelling."""
    scheme, _, token = value.partition(" ")
    if token and scheme.lower() == "bearer":
        return "Bearer " + token.strip()
    return "Bearer " + value.strip()


def _basic(user: str, password: str) -> str:
    import base64

    return base64.b64encode(f"{user}:{password}".encode()).decode()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
