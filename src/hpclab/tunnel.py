"""Local forwards to the lab and the probe that says it answers.

The forward always binds 127.0.0.1 explicitly: ssh then ignores GatewayPorts, so no other
machine can reach it. tcp transport forwards through the login master to node:port;
socket transport forwards through a master on the node itself to Jupyter's unix socket.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import apps
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


KERNEL_SOCKETS = Path("/proc/net/tcp")  # Linux: every TCP socket with its owner's uid


def listener_uid(client: socket.socket, proc_net_tcp: Path = KERNEL_SOCKETS) -> int | None:
    """The uid that owns the listening end of `client`'s TCP connection on 127.0.0.1, from the
    kernel's socket table; None where there is no such table (not Linux) or no such entry."""
    try:
        table = proc_net_tcp.read_text()
    except OSError:
        return None
    here_ip, here_port = client.getsockname()[:2]
    there_ip, there_port = client.getpeername()[:2]

    def hexaddr(ip: str, port: int) -> str:
        return "".join(f"{int(b):02X}" for b in reversed(ip.split("."))) + f":{port:04X}"

    # The accepting end is the row whose local address is the one we connected to, and whose
    # remote address is ours.
    want = (hexaddr(there_ip, there_port), hexaddr(here_ip, here_port))
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 7 and (fields[1], fields[2]) == want:
            return int(fields[7])
    return None


def request(port: int, method: str, path: str, headers: dict[str, str],
            timeout: float = 3.0) -> tuple[int, list[tuple[str, str]]] | None:
    """(status, headers) of one HTTP request to 127.0.0.1:`port`, or None when nothing answers.

    The request is sent only when the port's listener is one of this user's processes, as the
    kernel says for this very connection (on Linux): a port another user took over after the
    forward died gets a connection and no request (so no token). Elsewhere the caller's proof
    (Tunnel.hold) is all there is."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.connect()
        assert conn.sock is not None
        owner = listener_uid(conn.sock)
        if owner is not None and owner != os.getuid():
            log.warning("127.0.0.1:%s belongs to uid %s, not to this user: nothing sent", port, owner)
            return None
        conn.request(method, path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheaders()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def probe(port: int, token: str, timeout: float = 3.0, app: str = apps.DEFAULT) -> int | None:
    """200 when the app answers its authenticated probe through the forward as it answers only
    a holder of `token` (see request; Jupyter: GET /api/status, which does not count as activity
    for the idle shutdown; code-server: its login page with the session cookie), else the HTTP
    status it gave, or None when nothing answers."""
    want = apps.get(app).probe(token)
    answer = request(port, want.method, want.path, want.headers, timeout)
    if not answer:
        return None
    if answer[0] == want.ok:
        return 200
    return 403 if answer[0] == 200 else answer[0]  # (code-server shows its login form with 200)


def wait_ready(port: int, token: str, timeout: float, app: str = apps.DEFAULT) -> bool:
    """Probe until HTTP 200 or `timeout` seconds. Until Jupyter accepts, ssh accepts the
    local connection and drops it, so a refused or empty answer means 'not yet'."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        if probe(port, token, app=app) == 200:
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
        """Connect if needed and hold the forward (see hold)."""
        self.via.connect()
        self.via.forward(self.spec)

    def hold(self) -> None:
        """Prove that hpclab's connection holds this forward now, binding it again if the
        connection lost it. Raises ForwardTaken when another program has the port, MasterGone
        when the connection is gone; never connects (no login)."""
        self.via.forward(self.spec)

    def close(self) -> None:
        """Remove the forward if it is there; a connection that is gone has none to remove."""
        with contextlib.suppress(HpclabError, OSError, subprocess.SubprocessError):
            self.via.cancel_forward(self.spec)
