"""A session's directory on the cluster, and the records the job writes into it.

One description, used by the job script (jobscript.py), the shell programs that submit, poll
and discover (cluster.py), and the parsers here: nobody spells `.hpclab/sessions` or a file
name twice. Paths are relative to the user's $HOME on the cluster.

The job writes `rendezvous.json` once Jupyter listens: where it listens and what it is. It is
parsed and validated once, here, into a Rendezvous, for `up` and `attach --profile` alike.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from . import apps
from .errors import ProtocolError

ROOT = ".hpclab"
SESSIONS = f"{ROOT}/sessions"
RENDEZVOUS_VERSION = 1
# A session id as hpclab makes them (secrets.token_hex(4)); anything else found on the
# cluster is not a session of ours.
SESSION_ID = re.compile(r"[0-9a-f]{8}")
# What a node name may look like before it becomes an SSH destination: a host name, never an
# option or a path.
NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


@dataclass(frozen=True)
class SessionDir:
    """`SessionDir(id).token` is "token"; `.path` is ".hpclab/sessions/ID"; `.file("token")`
    is ".hpclab/sessions/ID/token"."""

    id: str

    token = "token"  # the session token, 0600; Jupyter reads it through JUPYTER_TOKEN_FILE
    script = "job.sh"  # the job script as submitted
    output = "job.out"
    error = "job.err"
    submitted = "submitted"  # what the submit command printed: the job id
    started = "started"  # the node's name, written by the job when it starts
    listen = "listen"  # "socket" or "tcp", written by hpclab in transport auto
    rendezvous = "rendezvous.json"
    ended = "ended.json"

    @property
    def path(self) -> str:
        return f"{SESSIONS}/{self.id}"

    def file(self, name: str) -> str:
        return f"{self.path}/{name}"


@dataclass(frozen=True)
class Rendezvous:
    """Where Jupyter listens, as the job found it."""

    session: str
    job_id: str
    node: str
    user: str
    transport: str  # "socket" or "tcp"
    address: str
    port: int
    socket: str
    pid: int
    runtime_dir: str
    jupyter_server: str  # "" for an app that is no Jupyter
    app: str = apps.DEFAULT  # (a job of an older hpclab wrote neither key: it ran JupyterLab)
    app_version: str = ""
    version: int = RENDEZVOUS_VERSION

    @property
    def target(self) -> str:
        """What a forward connects to on the node: the socket path, or address:port."""
        return self.socket if self.transport == "socket" else f"{self.address}:{self.port}"

    @classmethod
    def parse(cls, text: str, session_id: str | None = None) -> Rendezvous:
        """Read and check the job's rendezvous.json. Raises ProtocolError saying what is wrong."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ProtocolError("the session's rendezvous file is not valid JSON",
                                hint=f"{exc}; it said: {text.strip()[:200]!r}") from None
        if not isinstance(data, dict):
            raise ProtocolError("the session's rendezvous file is not a JSON object")
        version = data.get("version")
        if version != RENDEZVOUS_VERSION:
            raise ProtocolError(
                f"the session's rendezvous file has version {version!r}; this hpclab reads version "
                f"{RENDEZVOUS_VERSION}", hint="use the same hpclab version that started the session")
        try:
            rdv = cls(
                session=_str(data, "session"), job_id=_str(data, "job_id"), node=_str(data, "node"),
                user=_str(data, "user"), transport=_str(data, "transport"), address=_str(data, "address"),
                port=_int(data, "port"), socket=_str(data, "socket"), pid=_int(data, "pid"),
                runtime_dir=_str(data, "runtime_dir"), jupyter_server=_str(data, "jupyter_server"),
                app=_str(data, "app") if "app" in data else apps.DEFAULT,
                app_version=_str(data, "app_version") if "app_version" in data else _str(data, "jupyter_server"),
            )
        except (KeyError, TypeError) as exc:
            raise ProtocolError(f"the session's rendezvous file lacks or mistypes {exc}") from None
        problem = rdv._problem(session_id)
        if problem:
            raise ProtocolError(f"the session's rendezvous file is not usable: {problem}")
        return rdv

    def _problem(self, session_id: str | None) -> str | None:
        if session_id is not None and self.session != session_id:
            return f"it belongs to session {self.session!r}, not {session_id!r}"
        if not NODE.fullmatch(self.node):
            return f"node {self.node!r} is not a host name"
        if self.app not in apps.names():
            return f"unknown app {self.app!r}"
        if self.transport == "socket":
            if not self.socket.startswith("/") or "\n" in self.socket:
                return f"socket {self.socket!r} is not an absolute path"
        elif self.transport == "tcp":
            if not 0 < self.port < 65536:
                return f"port {self.port} is not a TCP port"
            if not NODE.fullmatch(self.address):
                return f"address {self.address!r} is not an address"
        else:
            return f"unknown transport {self.transport!r}"
        return None


@dataclass(frozen=True)
class Ended:
    """The job's own end marker: why its script ended ("exited", "cancelled", "timelimit")."""

    reason: str
    exit_code: int | None

    @classmethod
    def parse(cls, text: str) -> Ended | None:
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        code = data.get("exit_code")
        return cls(str(data.get("reason") or ""), code if isinstance(code, int) else None)


def _str(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(key)
    return value


def _int(data: dict[str, Any], key: str) -> int:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(key)
    return value
