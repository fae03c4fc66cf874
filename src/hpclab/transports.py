"""What `transport = "auto"` learned about a cluster, kept so that the next job need not wait.

In auto mode a job waits (its `listen` file) until hpclab has tried an SSH connection to its
node: socket where the node accepts one, tcp where it refuses. That try costs a node login,
and Jupyter's start waits for it. The answer is a property of the cluster (pam_slurm_adopt,
a firewall, sshd on the nodes), so hpclab keeps it per login node, ssh options and scheduler
(on one login node a SLURM job may open its node to SSH where a Grid Engine job does not),
and the next job is submitted with the transport it names: Jupyter starts as soon as the job
does, while hpclab opens the node connection in parallel.

- "socket" is kept until a node refuses: then it is forgotten, and that one job is submitted
  again in auto mode (launch.py).
- "tcp" is kept for TCP_DAYS only: a site that starts to allow SSH to its nodes gets the
  private socket back without anyone having to clear anything.

A host-key problem is never an answer (launch.py decides what is); the file lives in the
private state dir (0600) and a damaged one reads as empty.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Sequence

from .paths import Paths, private_dir, write_private

TCP_DAYS = 1
VERSION = 1


def _key(host: str, ssh_options: Sequence[str], scheduler: str) -> str:
    return hashlib.sha256("\0".join((scheduler, host, *ssh_options)).encode()).hexdigest()[:16]


class Transports:
    """transports.json in the state dir: {"version": 1, "clusters": {key: {"transport", "at"}}}."""

    def __init__(self, paths: Paths) -> None:
        self.path = paths.state_dir / "transports.json"
        self.paths = paths
        self.now = time.time  # tests move it

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("clusters"), dict):
            return {}
        return {k: v for k, v in data["clusters"].items() if isinstance(v, dict)}

    def recall(self, host: str, ssh_options: Sequence[str], scheduler: str) -> str | None:
        """"socket", "tcp", or None when auto mode must find out (never asked, forgotten, expired)."""
        entry = self._read().get(_key(host, ssh_options, scheduler), {})
        transport, at = entry.get("transport"), entry.get("at")
        if not isinstance(at, (int, float)) or transport not in ("socket", "tcp"):
            return None
        if transport == "tcp" and self.now() - at > TCP_DAYS * 86400:
            return None
        return str(transport)

    def remember(self, host: str, ssh_options: Sequence[str], scheduler: str, transport: str | None) -> None:
        """Keep `transport` for this cluster, or forget what was kept (None)."""
        clusters = self._read()
        key = _key(host, ssh_options, scheduler)
        if transport is None:
            if key not in clusters:
                return
            del clusters[key]
        else:
            clusters[key] = {"transport": transport, "at": self.now()}
        with contextlib.suppress(OSError):  # a lost memory costs one auto decision, nothing more
            private_dir(self.paths.state_dir)
            write_private(self.path, json.dumps({"version": VERSION, "clusters": clusters}, indent=2) + "\n")
