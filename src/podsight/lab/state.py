"""The lab's files and its lock: where ``up`` writes down what it did, so ``down`` can undo it.

Everything the lab keeps outside the kernel lives in one state directory
(``/run/podsight/lab``, or ``$PODSIGHT_LAB_DIR``): the state file (server
pids, sysctls to put back, which Services run and whether DNS does), the
inventory identity reads, the external site's key pair, the DNS server's
files and the servers' logs. A lock on that directory keeps two callers of
``up``/``down`` (two test sessions, a test and a person) from interleaving.

The state file is a record, not the truth: ``down`` finds kernel objects by
name (:mod:`podsight.lab.teardown`), so losing it costs at most the sysctls
it would have restored.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podsight.lab import system

DEFAULT_DIR = Path("/run/podsight/lab")
DIR_ENV = "PODSIGHT_LAB_DIR"
STATE_VERSION = 1

#: The state file's content: written by ``up``, read by ``status``, ``problems`` and ``down``.
State = dict[str, Any]


@dataclass(frozen=True)
class LabFiles:
    """The paths in the state directory, and reading, writing and locking the state file."""

    state_dir: Path

    @classmethod
    def at(cls, state_dir: str | os.PathLike[str] | None = None) -> LabFiles:
        """The given directory, else ``$PODSIGHT_LAB_DIR``, else ``/run/podsight/lab``."""
        return cls(Path(state_dir or os.environ.get(DIR_ENV) or DEFAULT_DIR))

    @property
    def inventory(self) -> Path:
        return self.state_dir / "inventory.json"

    @property
    def state(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def cert(self) -> Path:
        return self.state_dir / "external-cert.pem"

    @property
    def key(self) -> Path:
        return self.state_dir / "external-key.pem"

    @property
    def policies(self) -> Path:
        """The NetworkPolicies applied to the lab (``lab policy apply``), as a v1 List."""
        return self.state_dir / "policies.json"

    @property
    def dns_conf(self) -> Path:
        return self.state_dir / "dnsmasq.conf"

    @property
    def dns_hosts(self) -> Path:
        """Every name the cluster DNS serves, as a hosts file a person can read."""
        return self.state_dir / "dns-hosts"

    @property
    def dns_pid(self) -> Path:
        return self.state_dir / "dnsmasq.pid"

    @property
    def dns_log(self) -> Path:
        return self.state_dir / "dnsmasq.log"

    @property
    def dns_files(self) -> list[Path]:
        return [self.dns_conf, self.dns_hosts, self.dns_pid, self.dns_log]

    def server_log(self, key: str) -> Path:
        """Where the web server ``key`` (a pod ref, or ``external``) writes its output."""
        return self.state_dir / f"server-{key.replace('/', '-')}.log"

    def server_logs(self) -> list[Path]:
        return list(self.state_dir.glob("server-*.log"))

    # ------------------------------------------------------------ the state file

    def read_state(self) -> State | None:
        """The state file, or None if it is missing or unreadable (a lab half-built or gone)."""
        try:
            data = json.loads(self.state.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def save_state(self, state: State) -> None:
        """Written after every step of ``up``, so an interrupted ``up`` can still be undone."""
        system.atomic_write(self.state, json.dumps(state, indent=2) + "\n")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the state directory's lock: one ``up`` or ``down`` at a time."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def set_sysctl(self, state: State, key: str, value: str) -> None:
        """Set a root-netns sysctl, remembering the old value for ``down``."""
        saved: dict[str, str | None] = state["sysctls"]
        if key not in saved:
            saved[key] = system.read_sysctl(key)
            self.save_state(state)
        system.write_sysctl(key, value)


def new_state(node: str) -> State:
    """What ``up`` starts from: nothing built yet."""
    return {
        "version": STATE_VERSION,
        "node": node,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pids": {},
        "sysctls": {},
    }


def restore_sysctls(state: State) -> None:
    """Put back the root-netns sysctls ``up`` changed."""
    saved: dict[str, str | None] = state.get("sysctls") or {}
    for key, old in saved.items():
        # Keys of lab interfaces vanished with them; only restore what is left.
        if old is not None and system.read_sysctl(key) not in (None, old):
            system.write_sysctl(key, old)
