"""Issue 12, promises 5 and 8, attacked on the real test cluster.

5. Nothing on the cluster side can be planted. hpcuser's ~/.hpclab/sessions is writable by
   others (0777, by mistake); hpcuser2, a second real user, plants session directories there:
   one naming another job of hpcuser's, one put in place of hpcuser's real session (the real
   directory moved aside) that sends `attach --profile` to a node and token of hpcuser2's
   choosing. `cleanup` and `attach --profile` do not trust them; `up` refuses to use the
   directory at all and says what to check.
8. Input is data, exactly: a trailing newline in a partition, account, host, memory, GPU spec or
   env name, as a flag or a profile value, exits 2 before any connection: no ssh process is
   started (a recording `ssh` first on PATH) and the login node's sshd logs no login.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lab import Hpclab, accepted, hpclab, profile_text, tcx, user_jobs
from test_security import as_user, attacker, user

__all__ = ["hpclab"]

SESSIONS = Path("/home") / "{user}" / ".hpclab" / "sessions"


def sessions_dir() -> Path:
    return Path(str(SESSIONS).format(user=user()))


def mode(path: Path) -> int:
    return path.lstat().st_mode & 0o7777


@contextlib.contextmanager
def sessions_writable_by_all() -> Iterator[Path]:
    """hpcuser's ~/.hpclab/sessions at 0777 (made so by mistake, ~/.hpclab 0755 around it) for
    the test; both 0700 afterwards."""
    d = sessions_dir()
    tcx("login", as_user(user(), ["sh", "-c", "umask 077 && mkdir -p .hpclab/sessions"]))
    tcx("login", as_user(user(), ["chmod", "755", str(d.parent)]))
    tcx("login", as_user(user(), ["chmod", "777", str(d)]))
    try:
        yield d
    finally:
        tcx("login", ["chmod", "700", str(d), str(d.parent)], check=False)


def plant(where: Path, files: dict[str, str]) -> None:
    """hpcuser2 makes directory `where` with `files`, as themself, on the login node."""
    script = 'mkdir -p "$1" && cd "$1" && shift && while [ $# -gt 1 ]; do printf %s "$2" > "$1"; shift 2; done'
    args = [x for kv in files.items() for x in kv]
    tcx("login", as_user(attacker(), ["sh", "-c", script, "plant", str(where), *args]))


def other_job() -> str:
    """A job of hpcuser's that is not hpclab's (its name is not hpclab's tag)."""
    out = tcx("login", as_user(user(), ["sbatch", "--parsable", "--job-name=analysis", "--partition=debug",
                                        "--time=10", "--output=/dev/null", "--wrap=sleep 600"])).stdout
    return out.strip().split(";")[0]


def rendezvous(session: str, job_id: str, node: str, port: int) -> str:
    return json.dumps({"version": 1, "session": session, "job_id": job_id, "node": node, "user": attacker(),
                       "transport": "tcp", "address": node, "port": port, "socket": "", "pid": 1,
                       "runtime_dir": "/tmp", "jupyter_server": "2.21.1"})


def test_up_refuses_a_sessions_dir_another_user_can_write(hpclab: Hpclab) -> None:
    with sessions_writable_by_all() as d:
        before = user_jobs(user())
        proc = hpclab("up", "testcluster", "--detach", "--no-browser")
        assert proc.returncode == 2, proc.stderr
        assert "~/.hpclab/sessions on the cluster is writable by other users" in proc.stderr
        assert "chmod 700 ~/.hpclab ~/.hpclab/sessions" in proc.stderr
        assert user_jobs(user()) == before  # nothing submitted
        assert mode(d) == 0o777 and list(d.iterdir()) == []  # not silently tightened; nothing written
        assert hpclab.json("list") == []


def test_cleanup_does_not_cancel_a_job_a_planted_session_dir_names(hpclab: Hpclab) -> None:
    """hpcuser2 plants a session directory (and a link to one) naming another job of hpcuser's:
    `cleanup --yes` from a laptop that knows no session leaves that job alone."""
    job = other_job()
    try:
        with sessions_writable_by_all() as d:
            plant(d / "deadbeef", {"submitted": f"{job}\n", "token": "planted"})
            own = Path("/home") / attacker() / f"plant-{secrets.token_hex(4)}"
            plant(own / "cafef00d", {"submitted": f"{job}\n", "token": "planted"})
            tcx("login", as_user(attacker(), ["ln", "-s", str(own / "cafef00d"), str(d / "cafef00d")]))
            try:
                assert hpclab.json("cleanup", "--profile", "testcluster", "--yes") == []
                assert job in user_jobs(user())
                assert (d / "deadbeef").is_dir() and (d / "cafef00d").is_symlink()  # not removed either
            finally:
                tcx("login", ["rm", "-rf", str(own)], check=False)
    finally:
        tcx("login", ["scancel", job], check=False)


def test_attach_by_profile_does_not_follow_a_swapped_session_dir(hpclab: Hpclab, tmp_path: Path) -> None:
    """hpcuser2 moves hpcuser's session directory aside and puts their own in its place: the
    same id and job (hpclab's tag matches), but their node, port and token. A second laptop's
    `attach --profile` must not connect there nor keep that token."""
    first = hpclab.json("up", "testcluster", "--detach", "--no-browser", "--transport", "tcp")
    sid, job = first["id"], first["job_id"]
    second = Hpclab(home=tmp_path / "second-laptop", config=hpclab.config)
    second.home.mkdir()
    with sessions_writable_by_all() as d:
        tcx("login", as_user(attacker(), ["mv", str(d / sid), str(d / f"{sid}.moved")]))
        token = "planted-" + secrets.token_hex(8)
        plant(d / sid, {"submitted": f"{job}\n", "token": token, "started": "node2\n",
                        "rendezvous.json": rendezvous(sid, job, "node2", 18888)})
        proc = second("attach", "--profile", "testcluster", "--no-browser", "--detach", "--json")
        assert proc.returncode == 9 and "no running hpclab session" in proc.stderr, proc.stderr
        assert token not in proc.stdout + proc.stderr
        assert second.json("list") == []
        tcx("login", ["rm", "-rf", str(d / sid)])
        tcx("login", ["mv", str(d / f"{sid}.moved"), str(d / sid)])
    again = second.json("attach", "--profile", "testcluster", "--no-browser", "--detach")  # the real one, back
    assert again["id"] == sid and again["url"].split("token=")[1] == first["url"].split("token=")[1]
    second("stop", "--all")


# -- promise 8: a trailing newline is not part of a plain value --------------------------------------------

RECORDING_SSH = """#!/bin/sh
echo "$*" >> "{log}"
exec {real} "$@"
"""


@pytest.fixture
def watched_ssh(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """A PATH whose first `ssh` records every call, then runs the real one."""
    bin_dir, log = tmp_path / "bin", tmp_path / "ssh-calls"
    bin_dir.mkdir()
    real = next(p for d in os.environ["PATH"].split(":") if (p := Path(d) / "ssh").is_file())
    (bin_dir / "ssh").write_text(RECORDING_SSH.format(log=log, real=real))
    (bin_dir / "ssh").chmod(0o755)
    yield {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, log


@pytest.mark.parametrize(("where", "key", "value"), [
    ("flag", "partition", "debug\n"),
    ("profile", "partition", "debug\n"),
    ("flag", "account", "proj\n"),
    ("profile", "account", "proj\n"),
    ("profile", "host", "tc-login\n"),
    ("flag", "mem", "4G\n"),
    ("profile", "mem", "4G\n"),
    ("flag", "gpus", "1\n"),
    ("profile", "gpus", "1\n"),
    ("profile", "env", "HPCLAB_NAME\n"),  # the name of an env entry (env has no flag)
])
def test_a_trailing_newline_is_refused_before_any_connection(hpclab: Hpclab, watched_ssh: tuple[dict[str, str], Path],
                                                            where: str, key: str, value: Any) -> None:
    env, ssh_calls = watched_ssh
    hpclab.env_extra.update(env)
    args: list[str] = []
    if where == "flag":
        args = [f"--{key}", value]
        hpclab.write_config(profile_text())
    elif key == "env":
        hpclab.write_config(profile_text() + f"env = {{ {json.dumps(value)} = \"x\" }}\n")
    else:
        hpclab.write_config(profile_text(**{key: value}))
    before = accepted("login", user())
    proc = hpclab("up", "testcluster", "--no-browser", "--detach", *args)
    assert proc.returncode == 2, proc.stderr
    assert f"'{key}'" in proc.stderr or f"--{key}" in proc.stderr, proc.stderr
    assert not ssh_calls.exists(), ssh_calls.read_text()
    assert accepted("login", user()) == before
    assert user_jobs(user()) == []
    # the control: the same laptop without the newline reaches the login node, through the recording ssh
    hpclab.write_config(profile_text())
    assert hpclab("cleanup", "--profile", "testcluster").returncode == 0
    assert ssh_calls.exists() and accepted("login", user()) > before
