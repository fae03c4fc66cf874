"""Session records on the laptop: one versioned JSON file per session.

Every write is atomic (a reader sees a whole record or none) and happens under one lock, so
writes and deletes of concurrent hpclab commands never interleave. `update()` re-reads the
record under that lock and changes only the fields it is given, so two commands that change
different fields of one session (a foreground `up` and an `attach`) lose neither change.
Older record versions are migrated on read."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import apps
from .errors import ConfigError
from .paths import Paths, private_dir, write_private

log = logging.getLogger(__name__)

VERSION = 2
_RECORD_NAME = re.compile(r"[A-Za-z0-9_-]+")


def lab_url(port: int, token: str | None = None, app: str = apps.DEFAULT) -> str:
    """The lab's address through the local forward; with the token when given (and the app
    takes it in its URL). The one place that spells it (the app's module says how)."""
    return apps.get(app).url(port, token)


@dataclass
class SessionRecord:
    id: str
    profile: str
    host: str
    ssh_options: list[str]
    scheduler: str
    job_id: str | None = None
    state: str = "submitting"
    transport: str = "auto"
    node: str | None = None
    address: str | None = None
    port: int | None = None
    socket: str | None = None
    local_port: int | None = None
    token: str = field(default="", repr=False)
    created: float = 0.0
    time_limit: int | None = None
    started: float | None = None  # when the job was seen running (epoch seconds)
    jupyter_server: str | None = None
    # `hpclab forward`: {"node_port", "local_port", "target", "via": "node" | "login"} each
    forwards: list[dict[str, Any]] = field(default_factory=list)
    version: int = VERSION
    app: str = apps.DEFAULT  # what the session runs (hpclab/apps)
    app_version: str | None = None

    @property
    def url(self) -> str | None:
        return lab_url(self.local_port, self.token, self.app) if self.local_port else None

def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """Bring an older record up to VERSION. v1 had 'remote_port' and no 'version' key."""
    version = int(data.get("version", 1))
    if version < 2:
        if "remote_port" in data:
            data["port"] = data.pop("remote_port")
        data["version"] = 2
    # Records made before sessions ran other apps have no 'app': they ran JupyterLab. (A new
    # key with a default, so the version stays: an older hpclab reading this record drops it.)
    data.setdefault("app", apps.DEFAULT)
    if data.get("app") == apps.DEFAULT and "app_version" not in data:
        data["app_version"] = data.get("jupyter_server")
    known = {f.name for f in fields(SessionRecord)}
    return {k: v for k, v in data.items() if k in known}


class CorruptRecord(ConfigError):
    """A session record hpclab cannot read; `list` skips it with a warning, other commands stop."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(
            f"unreadable session record {path}: {why}",
            hint=f"if that session is gone, remove the file (rm {path}); `hpclab cleanup` finds its job "
            "on the cluster",
        )
        self.path = path
        self.why = why


class Store:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths
        self.problems: list[CorruptRecord] = []

    def _ensure(self) -> None:
        private_dir(self.paths.state_dir)
        private_dir(self.paths.sessions_dir)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self._ensure()
        fd = os.open(self.paths.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def path(self, session_id: str) -> Path:
        return self.paths.sessions_dir / f"{session_id}.json"

    def save(self, record: SessionRecord) -> None:
        self._ensure()
        with self.lock():
            write_private(self.path(record.id), json.dumps(asdict(record), indent=2, sort_keys=True) + "\n")

    def update(self, session_id: str, **changes: Any) -> SessionRecord | None:
        """Change some fields of a stored record, re-read under the lock; None if it is gone."""
        with self.lock():
            record = self.load(session_id)
            if record is None:
                return None
            for key, value in changes.items():
                setattr(record, key, value)
            write_private(self.path(record.id), json.dumps(asdict(record), indent=2, sort_keys=True) + "\n")
            return record

    def load(self, session_id: str) -> SessionRecord | None:
        """The record of `session_id`, or None; CorruptRecord when it cannot be read."""
        if not _RECORD_NAME.fullmatch(session_id):
            return None  # never a path to read: "../x" is no session
        path = self.path(session_id)
        try:
            return self._read(path)
        except FileNotFoundError:
            return None

    def _read(self, path: Path) -> SessionRecord:
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            record = SessionRecord(**migrate(data))
        except FileNotFoundError:
            raise
        except (ValueError, TypeError) as exc:
            raise CorruptRecord(path, str(exc)) from None
        if record.version != VERSION:
            raise CorruptRecord(path, f"unknown version {record.version}")
        return record

    def all(self) -> list[SessionRecord]:
        """Every readable record, oldest first. Unreadable ones are collected in `problems`."""
        self.problems = []
        if not self.paths.sessions_dir.is_dir():
            return []
        records = []
        for path in sorted(self.paths.sessions_dir.glob("*.json")):
            try:
                records.append(self._read(path))
            except FileNotFoundError:
                continue
            except CorruptRecord as exc:
                log.warning("ignoring unreadable session record %s: %s", exc.path, exc.why)
                self.problems.append(exc)
        return sorted(records, key=lambda r: r.created)

    def delete(self, session_id: str) -> None:
        with self.lock():
            self.path(session_id).unlink(missing_ok=True)
