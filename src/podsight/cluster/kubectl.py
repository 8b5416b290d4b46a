"""The user's ``kubectl``, run as a subprocess with the plugin's connection flags.

Why kubectl and not an API client: ``kubectl podsight`` is a kubectl plugin, so
kubectl is there, already configured (exec credential plugins, proxies, OIDC);
``kubectl apply`` does three-way merges and kustomize, ``kubectl
port-forward`` speaks the API server's port-forward protocol as every cluster
expects it. Global flags typed before the plugin name are not passed to
plugins by kubectl, so the plugin takes ``--kubeconfig``/``--context`` itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from podsight.errors import EnvironmentProblem, RunFailure


class KubectlError(RunFailure):
    """kubectl ran and failed; the message is kubectl's own last line."""


@dataclass(frozen=True)
class Kubectl:
    """How to run kubectl: the binary ($KUBECTL, else kubectl on PATH) and its flags."""

    binary: str
    kubeconfig: str | None = None
    context: str | None = None

    @classmethod
    def find(cls, kubeconfig: str | None = None, context: str | None = None) -> Kubectl:
        binary = os.environ.get("KUBECTL") or shutil.which("kubectl")
        if not binary:
            raise EnvironmentProblem("kubectl not found on PATH (set KUBECTL=/path/to/kubectl)")
        return cls(binary, kubeconfig, context)

    def argv(self, *args: str) -> list[str]:
        out = [self.binary]
        if self.kubeconfig:
            out += ["--kubeconfig", self.kubeconfig]
        if self.context:
            out += ["--context", self.context]
        return out + list(args)

    def run(self, *args: str, stdin: str | None = None, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(self.argv(*args), input=stdin, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise KubectlError(f"kubectl {' '.join(args[:2])} did not answer within "
                               f"{timeout:.0f} s") from exc
        if check and proc.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args[:2])} failed: {last_line(proc.stderr)}")
        return proc

    def json(self, *args: str, timeout: float = 60) -> Any:
        """``kubectl ARGS -o json``, parsed."""
        return json.loads(self.run(*args, "-o", "json", timeout=timeout).stdout)

    def popen(self, args: Sequence[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"
