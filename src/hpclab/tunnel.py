"""Local forwards to the lab and the probe that says it answers.

The forward always binds 127.0.0.1 explicitly: ssh then ignores GatewayPorts, so no other
machine can reach it. tcp transport forwards through the login master to node:port;
socket transport forwards through a master on the node itself to Jupyter's unix socket.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import subprocess
import time
from dataclasses import dataclass

from .errors import HpclabError
from .remote import Remote

log = logging.getLogger(__name__)


def free_local_port(preferred: int | None = None) -> int:
    """`preferred` if it can be bound on 127.0.0.1 now, else any free port."""
    if preferred and port_free(preferred):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def probe(port: int, token: str, timeout: float = 3.0) -> int | None:
    """HTTP status of an authenticated GET /api/status through the forward, or None when
    nothing answers. /api/status does not count as activity for the idle shutdown."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", "/api/status", headers={"Authorization": f"token {token}"})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_ready(port: int, token: str, timeout: float) -> bool:
    """Probe until HTTP 200 or `timeout` seconds. Until Jupyter accepts, ssh accepts the
    local connection and drops it, so a refused or empty answer means 'not yet'."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        if probe(port, token) == 200:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.5)


@dataclass
class Tunnel:
    """One local forward on `via` (the login master for tcp, the node master for socket)."""

    via: Remote
    local_port: int
    target: str  # "node:port" or "/path/to/socket"

    @property
    def spec(self) -> str:
        return f"127.0.0.1:{self.local_port}:{self.target}"

    def open(self) -> None:
        self.via.connect()
        self.via.forward(self.spec)

    def close(self) -> None:
        """Remove the forward if it is there; a connection that is gone has none to remove."""
        with contextlib.suppress(HpclabError, OSError, subprocess.SubprocessError):
            self.via.cancel_forward(self.spec)
