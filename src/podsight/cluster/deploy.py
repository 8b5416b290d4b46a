"""``kubectl podsight deploy`` and ``undeploy``: the agent DaemonSet in, and all of it out.

The manifests are deploy/'s, embedded as package data (``manifests/``), so an
installed plugin works anywhere; ``--kustomize DIR`` applies a user's overlay
of them instead (rendered by ``kubectl kustomize``). Every object must carry
``app.kubernetes.io/part-of=podsight``: ``undeploy`` finds what to delete by
that label alone, so an object without it would be left behind, and deploy
refuses it up front.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from podsight.cluster.deployment import DAEMONSET, LABEL_SELECTOR, NAMESPACE, PART_OF, PART_OF_VALUE
from podsight.cluster.kubectl import Kubectl, KubectlError
from podsight.errors import RunFailure, UserError

#: Namespaced kinds deploy creates, then the cluster-scoped ones (undeploy's order:
#: the DaemonSet and its pods go first, the namespace last).
NAMESPACED_KINDS = ("daemonsets.apps", "roles.rbac.authorization.k8s.io", "serviceaccounts")
CLUSTER_KINDS = ("clusterrolebindings.rbac.authorization.k8s.io",
                 "clusterroles.rbac.authorization.k8s.io", "namespaces")


def embedded_manifests() -> list[dict[str, Any]]:
    """The objects of the embedded kustomization, in its resource order."""
    base = resources.files("podsight.cluster").joinpath("manifests")
    kust = yaml.safe_load(base.joinpath("kustomization.yaml").read_text())
    objs: list[dict[str, Any]] = []
    for name in kust["resources"]:
        objs += [d for d in yaml.safe_load_all(base.joinpath(name).read_text()) if d]
    return objs


def kustomized_manifests(kubectl: Kubectl, directory: str) -> list[dict[str, Any]]:
    out = kubectl.run("kustomize", directory).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def set_image(objs: list[dict[str, Any]], image: str) -> None:
    """Point the agent container of the DaemonSet at ``image``."""
    for obj in objs:
        if obj.get("kind") == "DaemonSet":
            for c in obj["spec"]["template"]["spec"]["containers"]:
                c["image"] = image


def check_labels(objs: list[dict[str, Any]]) -> None:
    if not any(o.get("kind") == "DaemonSet" for o in objs):
        raise UserError("the manifests have no DaemonSet: nothing would run the agent")
    for obj in objs:
        labels = obj.get("metadata", {}).get("labels") or {}
        if labels.get(PART_OF) != PART_OF_VALUE:
            raise UserError(f"{obj.get('kind')} {obj.get('metadata', {}).get('name')} lacks the "
                            f"label {LABEL_SELECTOR}: undeploy could not remove it")


@dataclass
class Rollout:
    """A DaemonSet's progress, from its status."""

    desired: int
    ready: int
    updated: int
    current_generation: bool

    @property
    def done(self) -> bool:
        return self.current_generation and self.desired > 0 and \
            self.ready == self.desired == self.updated


def rollout(ds: dict[str, Any]) -> Rollout:
    st = ds.get("status", {})
    return Rollout(
        desired=st.get("desiredNumberScheduled", 0),
        ready=st.get("numberReady", 0),
        updated=st.get("updatedNumberScheduled", 0),
        current_generation=st.get("observedGeneration", 0) >= ds["metadata"].get("generation", 1),
    )


def pod_problems(kubectl: Kubectl, namespace: str) -> list[str]:
    """One line per agent pod that is not ready, with the kubelet's reason."""
    from podsight.cluster.portforward import find_agents

    return [f"{a.pod} on {a.node or '(unscheduled)'}: {a.reason}"
            for a in find_agents(kubectl, namespace) if not a.ready]


def deploy(kubectl: Kubectl, *, image: str | None = None, kustomize: str | None = None,
           timeout: float = 120.0, log: Callable[[str], None] = print) -> Rollout:
    """Apply the manifests and wait until every scheduled agent pod is Ready."""
    objs = kustomized_manifests(kubectl, kustomize) if kustomize else embedded_manifests()
    if image:
        set_image(objs, image)
    check_labels(objs)
    ds = next(o for o in objs if o["kind"] == "DaemonSet")
    namespace = ds["metadata"].get("namespace", NAMESPACE)
    name = ds["metadata"]["name"]
    out = kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump_all(objs)).stdout
    for line in out.strip().splitlines():
        log(line)
    deadline = time.monotonic() + timeout
    state = Rollout(0, 0, 0, False)
    while time.monotonic() < deadline:
        state = rollout(kubectl.json("get", "daemonset", name, "-n", namespace))
        if state.done:
            log(f"daemonset {namespace}/{name}: {state.ready}/{state.desired} agents ready")
            return state
        time.sleep(0.5)
    problems = pod_problems(kubectl, namespace)
    detail = "; ".join(problems) if problems else "no agent pod was scheduled (node selectors?"\
        " taints?)" if state.desired == 0 else "pods are being replaced"
    raise RunFailure(f"daemonset {namespace}/{name} not ready after {timeout:.0f} s "
                     f"({state.ready}/{state.desired} ready): {detail}")


def remaining(kubectl: Kubectl) -> list[str]:
    """Everything that still carries the label, as ``kind/name`` (pods included)."""
    kinds = ",".join(("pods", *NAMESPACED_KINDS))
    left = kubectl.run("get", kinds, "-A", "-l", LABEL_SELECTOR, "-o", "name").stdout.split()
    left += kubectl.run("get", ",".join(CLUSTER_KINDS), "-l", LABEL_SELECTOR,
                        "-o", "name").stdout.split()
    return left


def undeploy(kubectl: Kubectl, *, timeout: float = 120.0,
             log: Callable[[str], None] = print) -> list[str]:
    """Delete every object with the label, wait until it is gone; returns what was deleted."""
    wait = f"--timeout={max(1, int(timeout))}s"
    deleted: list[str] = []
    try:
        for kinds, scope in ((NAMESPACED_KINDS, ["--all-namespaces"]), (CLUSTER_KINDS, [])):
            out = kubectl.run("delete", ",".join(kinds), *scope, "-l", LABEL_SELECTOR,
                              "--wait=true", wait, "--ignore-not-found", timeout=timeout + 10)
            deleted += [line for line in out.stdout.strip().splitlines() if line]
    except KubectlError as exc:
        raise RunFailure(f"undeploy: {exc}") from exc
    for line in deleted:
        log(line)
    deadline = time.monotonic() + timeout
    left = remaining(kubectl)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = remaining(kubectl)
    if left:
        raise RunFailure(f"undeploy: still there after {timeout:.0f} s: {', '.join(left)}")
    return deleted


def run_deploy(kubectl: Kubectl, image: str | None, kustomize: str | None,
               timeout: float) -> int:
    deploy(kubectl, image=image, kustomize=kustomize, timeout=timeout)
    return 0


def run_undeploy(kubectl: Kubectl, timeout: float) -> int:
    deleted = undeploy(kubectl, timeout=timeout)
    print(f"undeploy: {len(deleted)} objects deleted, nothing labelled {LABEL_SELECTOR} left"
          if deleted else f"undeploy: nothing labelled {LABEL_SELECTOR} was deployed",
          file=sys.stderr)
    return 0


__all__ = ["DAEMONSET", "deploy", "embedded_manifests", "undeploy"]
