"""The user's Jupyter setup cannot weaken the lab: what the job sets comes after the setup lines,
the check before "ready" refuses an open lab, and a jupyter_server older than 2.0 is refused.

The real jupyter_server against weakening config files is tested end to end
(tests/e2e/test_jupyter_config.py); here the job script runs under bash with a fake `jupyter`
(test_shell_programs' harness), the check runs against canned answers, and `hpclab up` runs
through the local harness with the stand-in Jupyter.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import pytest
from test_shell_programs import (
    SID,
    TOKEN,
    Job,
    _drop,
    end_job,
    load_server_config,
    mode,
    stand_in_app,
    start_job,
    wait_for,
)
from test_shell_programs import job_setup as _job_setup

from conftest import Local
from hpclab import labcheck, launch
from hpclab.errors import ExitCode, UnsafeLabError
from hpclab.jobscript import JobOptions, render
from hpclab.paths import Paths
from hpclab.profiles import Profile
from hpclab.remote import LocalRemote
from hpclab.schedulers import JobSpec, get
from hpclab.session import Context
from hpclab.sessiondir import Rendezvous

# A setup line that tries every way the environment could undo what the job sets for safety.
HOSTILE_SETUP = (
    "export JUPYTER_TOKEN=known-token JUPYTER_TOKEN_FILE=/nonexistent/elsewhere/token",
    "export JUPYTER_NO_CONFIG=1 JUPYTER_ALLOW_INSECURE_WRITES=1 JUPYTER_PORT=8888",
    "export JUPYTER_RUNTIME_DIR=/nonexistent/elsewhere XDG_RUNTIME_DIR=/nonexistent/elsewhere",
    "export JUPYTER_CONFIG_PATH=/users/own/config",
    "umask 000",
    'jupyter() { echo "a shell function ran instead of jupyter" >&2; return 1; }',
)


def hostile_job(tmp_path: Path, jobs: list[Job], mutate: Callable[[str], str] | None = None) -> Job:
    spec = JobSpec(session_id=SID, time=1800, output="o", error="e")
    script = render(get("slurm"), spec, JobOptions(SID, "socket", setup=HOSTILE_SETUP, idle_timeout=0))
    if mutate:
        script = mutate(script)
    job = start_job(_job_setup(tmp_path, script))
    jobs.append(job)
    wait_for(job.dir / "rendezvous.json", job)
    return job


def check_setup_lines_undone(job: Job) -> None:
    env = job.jupyter()["env"]
    rt = job.rendezvous()["runtime_dir"]
    for name in ("JUPYTER_TOKEN", "JUPYTER_NO_CONFIG", "JUPYTER_ALLOW_INSECURE_WRITES", "JUPYTER_PORT",
                 "XDG_RUNTIME_DIR"):
        assert name not in env, name
    assert env["JUPYTER_TOKEN_FILE"] == str(job.dir / "token")
    assert env["JUPYTER_RUNTIME_DIR"] == rt and Path(rt).parent == job.tmp
    # hpclab's config first; the user's own directory still read, after it
    assert env["JUPYTER_CONFIG_PATH"] == f"{rt}/config:/users/own/config"
    # what the job writes after the setup lines is private whatever umask they set
    assert mode(job.dir / "rendezvous.json") == 0o600
    assert (mode(Path(rt) / "config"), mode(Path(rt) / "config" / "jupyter_server_config.py")) == (0o700, 0o600)


@pytest.fixture
def jobs() -> Iterator[list[Job]]:
    started: list[Job] = []
    yield started
    for job in started:
        if job.proc is not None and job.proc.poll() is None:
            end_job(job, signal.SIGKILL)


def test_setup_lines_cannot_undo_what_the_job_sets(tmp_path: Path, jobs: list[Job]) -> None:
    job = hostile_job(tmp_path, jobs)  # the fake jupyter ran: a shell function did not replace it
    check_setup_lines_undone(job)
    end_job(job)


SAFETY_MUTATIONS = [
    ("unset after the setup lines", _drop(
        "unset XDG_RUNTIME_DIR JUPYTER_PORT JUPYTER_TOKEN JUPYTER_NO_CONFIG JUPYTER_ALLOW_INSECURE_WRITES\n")),
    ("runtime dir exported after the setup lines", _drop('export JUPYTER_RUNTIME_DIR="$hpclab_runtime"\n')),
    ("token file exported after the setup lines", _drop('export JUPYTER_TOKEN_FILE="$HPCLAB_DIR/token"\n')),
    ("hpclab_write's own umask", lambda s: s.replace("( umask 077 && printf", "( printf")),
    ("the config's own umask", lambda s: s.replace('( umask 077 && mkdir "$hpclab_runtime/config"',
                                                   '( mkdir "$hpclab_runtime/config"')),
]


@pytest.mark.parametrize(("what", "mutate"), SAFETY_MUTATIONS, ids=[m[0] for m in SAFETY_MUTATIONS])
def test_setup_line_checks_catch_a_removed_defence(tmp_path: Path, jobs: list[Job], what: str,
                                                   mutate: Callable[[str], str]) -> None:
    with pytest.raises(AssertionError):  # the job does not come up, or comes up with the setup line's values
        check_setup_lines_undone(hostile_job(tmp_path, jobs, mutate))


def test_command_jupyter_is_the_program_not_a_shell_function(tmp_path: Path, jobs: list[Job]) -> None:
    """Without `command`, the setup line's function runs, and the job never gets ready."""
    with pytest.raises(AssertionError, match=r"ended before rendezvous\.json"):
        hostile_job(tmp_path, jobs, lambda s: s.replace("command jupyter lab", "jupyter lab"))


def test_an_empty_token_file_stops_the_server(tmp_path: Path, jobs: list[Job]) -> None:
    job = hostile_job(tmp_path, jobs)
    provider, _ = load_server_config(job)
    provider(parent=stand_in_app())  # control: the real token file is accepted
    (job.dir / "token").write_text("\n")
    with pytest.raises(ValueError, match="empty or short"):
        provider(parent=stand_in_app())
    (job.dir / "token").write_text(TOKEN)
    end_job(job)


# -- the check before "ready" -------------------------------------------------------------------------


def canned(**answers: labcheck.Answer) -> labcheck.Ask:
    """An Ask that answers by which probe it is (no_token, empty_token, foreign, preflight)."""
    refused = labcheck.Answer(403)

    def ask(method: str, path: str, headers: dict[str, str]) -> labcheck.Answer:
        if method == "OPTIONS":
            return answers.get("preflight", labcheck.Answer(405))
        if path.endswith("?token="):
            return answers.get("empty_token", refused)
        if "Origin" in headers:
            assert headers["Authorization"] == "token T" and headers["Origin"] != ""
            return answers.get("foreign", refused)
        assert "Authorization" not in headers
        return answers.get("no_token", refused)
    return ask


ACAO = (("Access-Control-Allow-Origin", labcheck.FOREIGN_ORIGIN),)


@pytest.mark.parametrize(("answers", "expected"), [
    ({}, []),
    ({"no_token": labcheck.Answer(200)}, ["a request without the token got HTTP 200, not 403"]),
    ({"no_token": labcheck.Answer(302)}, ["a request without the token got HTTP 302, not 403"]),
    ({"no_token": labcheck.Answer(None)}, ["a request without the token got no answer, not 403"]),
    ({"empty_token": labcheck.Answer(200)}, ["a request with an empty token got HTTP 200, not 403"]),
    ({"foreign": labcheck.Answer(200, ACAO)},
     [f"a request with the token from another origin ({labcheck.FOREIGN_ORIGIN}) may read the answer "
      f"(Access-Control-Allow-Origin: {labcheck.FOREIGN_ORIGIN})"]),
    ({"foreign": labcheck.Answer(200, (("access-control-allow-origin", "*"),))},
     [f"a request with the token from another origin ({labcheck.FOREIGN_ORIGIN}) may read the answer "
      "(Access-Control-Allow-Origin: *)"]),
    ({"foreign": labcheck.Answer(200, (("Access-Control-Allow-Origin", ""),))}, []),  # allows no origin
    ({"preflight": labcheck.Answer(204, ACAO)},
     [f"a preflight from another origin ({labcheck.FOREIGN_ORIGIN}) may read the answer "
      f"(Access-Control-Allow-Origin: {labcheck.FOREIGN_ORIGIN})"]),
])
def test_the_check_names_what_is_open(answers: dict[str, labcheck.Answer], expected: list[str]) -> None:
    assert labcheck.problems(canned(**answers), "T") == expected


def test_the_check_raises_with_the_cause_and_what_to_change() -> None:
    labcheck.check(1, "T", canned())  # a closed lab: nothing raised
    with pytest.raises(UnsafeLabError) as err:
        labcheck.check(1, "T", canned(no_token=labcheck.Answer(200)))
    assert err.value.exit_code == ExitCode.CONFIG
    assert "does not hold to its token" in err.value.message and "without the token got HTTP 200" in err.value.message
    assert "~/.jupyter/jupyter_server_config.py" in (err.value.hint or "")
    assert "identity_provider_class" in (err.value.hint or "")


def test_up_stops_a_lab_that_answers_without_the_token(local: Local) -> None:
    """The stand-in Jupyter answers everyone: `hpclab up` says why, exits 2, leaves nothing."""
    local.remote.env = dict(local.remote.env or {}, FAKE_JUPYTER_OPEN="1")
    rc, out, err = local.hpclab("up", "local", "--detach", "--no-browser")
    assert rc == 2, err
    assert "does not hold to its token" in err and "without the token got HTTP 200" in err
    assert "jupyter_server_config" in err
    assert "answers through the tunnel" not in out + err
    assert local.session_ids() == [] and local.json("list") == []


# -- jupyter_server before 2.0 -------------------------------------------------------------------------


def _no_forward(*args: object) -> int:
    raise AssertionError("a tunnel was opened to a server hpclab refuses")


@pytest.mark.parametrize(("version", "refused"), [("1.24.0", True), ("1.99", True), ("0.9", True),
                                                  ("2.0.0", False), ("2.0.0rc1", False), ("", False)])
def test_jupyter_server_before_2_is_refused(tmp_path: Path, version: str, refused: bool) -> None:
    paths = Paths(config_file=tmp_path / "c.toml", state_dir=tmp_path / "state", control_dir=tmp_path / "ctl")
    ctx = Context(paths, lambda host, opts: LocalRemote(tmp_path, host))
    up = launch.Launch(ctx, Profile(name="p", host="login"))
    rdv = Rendezvous(session=up.record.id, job_id="1", node="node1", user="u", transport="tcp", address="10.0.0.1",
                     port=8888, socket="", pid=1, runtime_dir="/tmp/r", jupyter_server=version)
    with mock.patch.object(launch, "open_forward", _no_forward):
        if refused:
            with pytest.raises(UnsafeLabError) as err:
                up._open_tunnel(rdv)
            assert f"jupyter_server {version}, older than 2.0" in err.value.message
            assert "pip install -U 'jupyter_server>=2.18'" in (err.value.hint or "")
        else:
            with pytest.raises(AssertionError, match="a tunnel was opened"):
                up._open_tunnel(rdv)


def test_up_refuses_jupyter_server_1_and_leaves_nothing(local: Local) -> None:
    local.remote.env = dict(local.remote.env or {}, FAKE_JUPYTER_VERSION="1.24.0")
    rc, _, err = local.hpclab("up", "local", "--detach", "--no-browser")
    assert rc == 2, err
    assert "jupyter_server 1.24.0, older than 2.0" in err
    assert local.session_ids() == [] and local.json("list") == []
