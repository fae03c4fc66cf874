"""`local`: hpclab's use cases on this machine, as an ordinary user, without a cluster.

The "cluster" is a directory that plays the user's $HOME there, reached through LocalRemote
(the same shell programs as over SSH, run with `sh -c`), with the `none` scheduler (the job
runs in the background here) and a STAND-IN for Jupyter (tests/unit/fakes/jupyter). Commands
run in-process through `cli.main(argv, connector=...)`:

    def test_something(local):
        rc, out, err = local.hpclab("up", "local", "--detach", "--json", "--no-browser")
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hpclab import cli
from hpclab.remote import LocalRemote

FAKES = Path(__file__).parent / "fakes"

PROFILES = """
[profiles.local]
host = "localhost"
scheduler = "none"
transport = "socket"
time = "00:30:00"

[profiles.local-auto]
host = "localhost"
scheduler = "none"
time = "00:30:00"
"""


@dataclass
class Local:
    root: Path
    home: Path  # the user's home "on the cluster"
    bin: Path  # first on the PATH of the cluster's commands
    state: Path  # HPCLAB_HOME
    remote: LocalRemote
    capsys: pytest.CaptureFixture[str]
    monkeypatch: pytest.MonkeyPatch

    def hpclab(self, *argv: str) -> tuple[int, str, str]:
        """Run one hpclab command in this process; (exit code, stdout, stderr)."""
        self.capsys.readouterr()
        umask = os.umask(0o022)
        os.umask(umask)
        try:
            rc = cli.main(list(argv), connector=lambda host, opts: self.remote)
        finally:
            os.umask(umask)
        out, err = self.capsys.readouterr()
        return rc, out, err

    def json(self, *argv: str) -> Any:
        rc, out, err = self.hpclab(*argv, "--json")
        assert rc == 0, err
        return json.loads(out)

    def config(self, text: str) -> None:
        (self.state / "config.toml").write_text(PROFILES + text)

    def sessions_dir(self) -> Path:
        return self.home / ".hpclab" / "sessions"

    def session_ids(self) -> list[str]:
        d = self.sessions_dir()
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def job_alive(self, pid: str) -> bool:
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        # a zombie of ours counts as gone
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    def fake(self, name: str, text: str) -> None:
        """A stand-in command on the cluster's PATH."""
        path = self.bin / name
        path.write_text(text)
        path.chmod(0o755)


@pytest.fixture
def local(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Local]:
    # A short root: Jupyter's socket lives under $TMPDIR, and sun_path holds 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="hl-", dir="/tmp"))
    home, bin_dir, state, tmp = root / "home", root / "bin", root / "state", root / "tmp"
    for d in (home, bin_dir, state, tmp):
        d.mkdir()
    jupyter = bin_dir / "jupyter"
    jupyter.write_text(f"#!{sys.executable}\n" + (FAKES / "jupyter").read_text())
    jupyter.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JUPYTER", "HPCLAB", "PYTEST"))}
    env.update(PATH=f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", TMPDIR=str(tmp))
    for name in ("HPCLAB_CONFIG", "XDG_STATE_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HPCLAB_HOME", str(state))
    lab = Local(root, home, bin_dir, state, LocalRemote(home, "localhost", env=env), capsys, monkeypatch)
    lab.config("")
    yield lab
    lab.remote.close()
    # Whatever a failed test left running: the jobs' process groups (their pid files).
    for pid_file in home.glob(".hpclab/sessions/*/job.sh.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)
