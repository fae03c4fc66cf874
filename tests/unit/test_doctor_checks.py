"""`hpclab doctor` through LocalRemote (the `local` fixture: the `none` scheduler, this machine
as the cluster), and its parsers on output captured from the real SLURM and Grid Engine. The
same checks against the real test cluster are in tests/e2e/test_doctor.py."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from test_json_contract import documented

from conftest import Local
from hpclab import cli, ui
from hpclab.doctor import (
    FAIL,
    OK,
    WARN,
    Check,
    Diagnosis,
    config_check,
    dry_run_check,
    environment_checks,
    job_spec,
    parse_environment,
    queue_check,
    weakening_settings,
)
from hpclab.errors import LoginRefused
from hpclab.profiles import Profile
from hpclab.remote import LocalRemote
from hpclab.schedulers import get

FIXTURES = Path(__file__).parent / "fixtures"


def jupyter_stand_in(local: Local, version: str = "2.21.1") -> None:
    """A STAND-IN `jupyter` that answers `jupyter server --version` (all doctor asks of it)."""
    local.fake("jupyter", f'#!/bin/sh\n[ "$1 $2" = "server --version" ] && echo {version} && exit 0\nexit 2\n')


def doctor(local: Local, profile: str = "local", *extra: str) -> tuple[int, dict[str, dict[str, object]]]:
    rc, out, _ = local.hpclab("doctor", profile, "--json", *extra)
    checks = json.loads(out)
    assert [set(c) for c in checks] == [documented()["hpclab doctor --json"]] * len(checks), checks
    return rc, {c["name"]: c for c in checks}


def test_a_good_profile_passes_every_check_and_leaves_nothing(local: Local) -> None:
    jupyter_stand_in(local)
    rc, checks = doctor(local)
    assert rc == 0
    assert [n for n, c in checks.items() if c["status"] == OK] == [
        "profile", "ssh", "scheduler", "jupyter config", "environment", "jupyter", "node ssh"]
    assert "jupyter_server 2.21.1" in str(checks["jupyter"]["detail"])
    assert checks["node ssh"]["detail"] == "not needed: the lab runs on the login host"  # scheduler none
    assert local.session_ids() == [] and not list((local.state / "state").glob("sessions/*.json"))


def test_human_output_marks_each_check_and_exits_with_the_failures_code(local: Local) -> None:
    local.config('[profiles.bad]\nhost = "localhost"\nscheduler = "none"\nsetup = ["false"]\n')
    jupyter_stand_in(local)
    rc, out, _ = local.hpclab("doctor", "bad")
    assert rc == 2
    lines = out.splitlines()
    assert any(ln.startswith(("✓ ssh:", "ok ssh:")) for ln in lines), out
    assert any(ln.startswith(("✗ environment:", "FAIL environment:")) for ln in lines), out
    assert lines[-1] == "1 check(s) failed"


@pytest.mark.parametrize("setup, named", [
    (['module load no-such-module'], "module load no-such-module"),
    (['source ~/venvs/missing/bin/activate'], "source ~/venvs/missing/bin/activate"),
    (['echo fine', 'false', 'echo never'], "false"),
    # a function that returns non-zero (as Lmod's `module` does) is named, not its `return N`
    (['lmod_like() { echo loading; return 4; }', 'lmod_like'], "lmod_like"),
])
def test_a_failing_setup_line_is_named_with_what_it_said(local: Local, setup: list[str], named: str) -> None:
    said = 'echo "Lmod has detected the following error: unknown module \\"$2\\"" >&2'
    local.fake("module", f"#!/bin/sh\n{said}\nexit 1\n")
    local.config(f"[profiles.bad]\nhost = \"localhost\"\nscheduler = \"none\"\nsetup = {json.dumps(setup)}\n")
    jupyter_stand_in(local)
    rc, checks = doctor(local, "bad")
    assert rc == 2
    env = checks["environment"]
    assert env["status"] == FAIL and str(env["detail"]).endswith(": " + named), env
    if "module" in named:
        assert 'unknown module "no-such-module"' in str(env["hint"])
    assert "jupyter" not in checks  # not checked in an environment that did not load
    assert local.session_ids() == []


def test_a_setup_line_that_exits_the_shell_is_named_too(local: Local) -> None:
    local.config('[profiles.bad]\nhost = "localhost"\nscheduler = "none"\nsetup = ["true", "exit 3", "true"]\n')
    rc, checks = doctor(local, "bad")
    assert rc == 2 and str(checks["environment"]["detail"]).endswith("status 3: exit 3")


def test_no_jupyter_on_path_after_the_setup_lines(local: Local) -> None:
    (local.bin / "jupyter").unlink()
    rc, checks = doctor(local)
    assert rc == 2 and checks["environment"]["status"] == OK
    assert checks["jupyter"]["status"] == FAIL and "not on PATH" in str(checks["jupyter"]["detail"])


@pytest.mark.parametrize("version, status, rc", [("1.24.0", FAIL, 2), ("2.10.1", WARN, 0), ("2.18.0", OK, 0)])
def test_jupyter_server_version_is_shown_and_judged(local: Local, version: str, status: str, rc: int) -> None:
    jupyter_stand_in(local, version)
    got, checks = doctor(local)
    assert got == rc and checks["jupyter"]["status"] == status and version in str(checks["jupyter"]["detail"])


def test_jupyter_without_jupyter_server_fails(local: Local) -> None:
    local.fake("jupyter", "#!/bin/sh\necho \"Jupyter command `jupyter-server` not found.\" >&2\nexit 1\n")
    rc, checks = doctor(local)
    assert rc == 2 and "no jupyter_server" in str(checks["jupyter"]["detail"])


def test_the_users_jupyter_config_is_read_and_weakening_settings_are_named(local: Local) -> None:
    jupyter_stand_in(local)
    cfg = local.home / ".jupyter"
    cfg.mkdir()
    (cfg / "jupyter_server_config.py").write_text(
        "c = get_config()  # noqa\nc.ServerApp.token = ''\nc.ServerApp.disable_check_xsrf = False\n"
        "c.ServerApp.open_browser = False\n@@setup-ok\n")
    (cfg / "jupyter_notebook_config.json").write_text(json.dumps({"NotebookApp": {"allow_origin": "*"}}))
    rc, checks = doctor(local)
    assert rc == 0  # a warning, not a failure: hpclab's sessions override these
    detail = str(checks["jupyter config"]["detail"])
    assert checks["jupyter config"]["status"] == WARN
    assert "ServerApp.token" in detail and "NotebookApp.allow_origin" in detail
    assert "disable_check_xsrf" not in detail and "open_browser" not in detail
    assert checks["environment"]["status"] == OK  # a planted "@@setup-ok" line in a config file counts for nothing


def test_a_profile_that_does_not_exist_is_a_failed_profile_check(local: Local) -> None:
    rc, checks = doctor(local, "nope")
    assert rc == 2 and list(checks) == ["profile"] and checks["profile"]["status"] == FAIL


class RefusingRemote(LocalRemote):
    def connect(self) -> None:
        raise LoginRefused("localhost refused the login", hint="check that `ssh localhost true` works")


def test_a_refused_login_stops_there_with_exit_3(local: Local, capsys: pytest.CaptureFixture[str]) -> None:
    remote = RefusingRemote(local.home)
    capsys.readouterr()
    rc = cli.main(["doctor", "local", "--json"], connector=lambda host, opts: remote)
    checks = json.loads(capsys.readouterr().out)
    assert rc == 3 and [c["name"] for c in checks] == ["profile", "ssh"]
    assert checks[1]["status"] == FAIL and "refused" in checks[1]["detail"]


# -- --job ------------------------------------------------------------------------------------


def test_job_runs_a_short_job_checks_its_node_and_cancels_it(local: Local) -> None:
    jupyter_stand_in(local)
    rc, checks = doctor(local, "local", "--job")
    assert rc == 0, checks
    assert checks["test job"]["status"] == OK
    assert checks["node ssh"]["status"] == OK
    node = str(checks["test job"]["detail"]).rsplit(" ", 1)[1]
    assert checks[f"environment on {node}"]["status"] == OK and checks[f"jupyter on {node}"]["status"] == OK
    job = str(checks["test job"]["detail"]).split()[2]
    assert not local.job_alive(job) or _wait_gone(local, job), "the test job is still running"
    assert local.session_ids() == [] and not list((local.state / "state").glob("sessions/*.json"))


def _wait_gone(local: Local, pid: str) -> bool:
    deadline = time.monotonic() + 10
    while local.job_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_ctrl_c_during_the_job_cancels_it_and_removes_its_files(local: Local,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C while the environment loads where the test job runs."""
    jupyter_stand_in(local)
    remote = LocalRemote(local.home, env=local.remote.env)
    pids: list[str] = []
    environments = []
    real_run = remote.run

    def run(argv, **kw):  # type: ignore[no-untyped-def]
        if list(argv) == ["bash", "-s"]:
            environments.append(argv)
            if len(environments) == 2:
                raise KeyboardInterrupt
        done = real_run(argv, **kw)
        if argv[:2] == ["sh", "-c"] and "submitted" in argv[2]:
            pids.append(done.stdout.strip())
        return done

    remote.run = run  # type: ignore[method-assign]
    rc = cli.main(["doctor", "local", "--job"], connector=lambda host, opts: remote)
    assert rc == 130 and len(environments) == 2
    assert pids and _wait_gone(local, pids[0]), "the test job survived Ctrl-C"
    assert local.session_ids() == [] and not list((local.state / "state").glob("sessions/*.json"))


def test_job_is_not_submitted_while_another_check_fails(local: Local) -> None:
    (local.bin / "jupyter").unlink()
    rc, checks = doctor(local, "local", "--job")
    assert rc == 2 and checks["node ssh"]["status"] == "skip" and "test job" not in checks
    assert local.session_ids() == []


# -- parsers on captured output ---------------------------------------------------------------


def _spec(**kw: object) -> object:
    return job_spec(Profile(name="p", host="h", **kw), "0" * 8)  # type: ignore[arg-type]


def test_sbatch_test_only_answers() -> None:
    slurm = get("slurm")
    ok = dry_run_check(slurm, _spec(partition="debug"), 0, "", (FIXTURES / "slurm/sbatch-test-only-ok.txt").read_text())
    assert ok.status == OK and "in partition debug" in ok.detail and "nothing was submitted" in ok.detail
    bad = dry_run_check(slurm, _spec(partition="nope"), 1, "",
                        (FIXTURES / "slurm/sbatch-test-only-bad-partition.txt").read_text())
    assert bad.status == FAIL and bad.exit_code == 4
    assert "invalid partition specified: nope" in bad.detail and "partition nope" in bad.detail
    mem = dry_run_check(slurm, _spec(mem="99G"), 1, "", (FIXTURES / "slurm/sbatch-test-only-mem.txt").read_text())
    assert mem.status == FAIL and "Requested node configuration is not available" in mem.detail


def test_qsub_w_v_answers() -> None:
    sge = get("sge")
    ok = dry_run_check(sge, _spec(), 0, (FIXTURES / "sge/qsub-w-v-ok.txt").read_text(), "")
    assert ok.status == OK and "found suitable queue" in ok.detail
    bad = dry_run_check(sge, _spec(partition="nope"), 1, (FIXTURES / "sge/qsub-w-v-bad-queue.txt").read_text(), "")
    assert bad.status == FAIL and 'unknown queue "nope"' in bad.detail


# Written in the documented formats of `qstat -Q` (PBS Pro, Torque) and `bqueues -w` (LSF).
QSTAT_Q = """Queue              Max   Tot Ena Str   Que   Run   Hld   Wat   Trn   Ext Type
---------------- ----- ----- --- --- ----- ----- ----- ----- ----- ----- ----
workq                0     0 yes yes     0     0     0     0     0     0 Exec
gpu                  0     2 yes yes     1     1     0     0     0     0 Exec
"""
BQUEUES = """QUEUE_NAME      PRIO STATUS          MAX JL/U JL/P JL/H NJOBS  PEND   RUN  SUSP
normal           30  Open:Active       -    -    -    -     0     0     0     0
"""


def test_where_there_is_no_dry_run_the_queue_is_checked_and_the_limit_said() -> None:
    pbs, lsf = get("pbs"), get("lsf")
    assert queue_check(pbs, _spec(partition="gpu"), 0, QSTAT_Q).status == WARN
    assert "time and resources are not checked" in queue_check(pbs, _spec(partition="gpu"), 0, QSTAT_Q).detail
    missing = queue_check(pbs, _spec(partition="Queue"), 0, QSTAT_Q)  # the header is not a queue
    assert missing.status == FAIL and "gpu, workq" in str(missing.hint)
    assert queue_check(lsf, _spec(partition="normal"), 0, BQUEUES).status == WARN
    assert queue_check(lsf, _spec(partition="short"), 0, BQUEUES).status == FAIL


def test_environment_output_with_a_hostile_command_and_a_config_file() -> None:
    text = ("@@config /h/.jupyter/jupyter_server_config.py\n|c.ServerApp.allow_origin = '*'\n|@@setup-ok\n"
            "@@setup\nbanner\n@@setup-failed 127 x; rm -rf ~ \n")
    env = parse_environment(text)
    assert not env.setup_done and env.failed_status == 127 and env.failed_command == "x; rm -rf ~"
    assert env.configs == {"/h/.jupyter/jupyter_server_config.py": "c.ServerApp.allow_origin = '*'\n@@setup-ok\n"}
    (check,) = environment_checks(env, "", "the login node")
    assert check.status == FAIL and check.detail.endswith("status 127: x; rm -rf ~")


@pytest.mark.parametrize("line, found", [
    ("c.ServerApp.token = ''", ["ServerApp.token"]),
    ("c.IdentityProvider.token = ''", ["IdentityProvider.token"]),
    ("  c.NotebookApp.password = 'sha1:abc'  # old", ["NotebookApp.password"]),
    ("c.ServerApp.tornado_settings['headers'] = {'Access-Control-Allow-Origin': '*'}", ["ServerApp.tornado_settings"]),
    ("c.ServerApp.tornado_settings.update({'disable_check_xsrf': True})", ["ServerApp.tornado_settings"]),
    ("c.ServerApp.disable_check_xsrf = True", ["ServerApp.disable_check_xsrf"]),
    ("c.ServerApp.disable_check_xsrf = False", []),
    ("c.ServerApp.authenticate_prometheus = False", ["ServerApp.authenticate_prometheus"]),
    ("c.ServerApp.open_browser = False", []),
    ("# c.ServerApp.token = ''", []),
    ("if c.ServerApp.token == '': pass", []),
])
def test_weakening_settings_in_python_config(line: str, found: list[str]) -> None:
    assert weakening_settings("jupyter_server_config.py", line + "\n") == found


def test_weakening_settings_in_json_config() -> None:
    text = json.dumps({"ServerApp": {"allow_remote_access": True, "allow_credentials": False, "root_dir": "/x"},
                       "IdentityProvider": {"token": ""}})
    assert weakening_settings("jupyter_server_config.json", text) == ["ServerApp.allow_remote_access",
                                                                      "IdentityProvider.token"]
    assert weakening_settings("x.json", "{not json") == []
    assert config_check({}).status == OK


# -- rendering --------------------------------------------------------------------------------


def _render(encoding: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    for k in ("NO_COLOR", "TERM"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    raw = io.BytesIO()

    class Tty(io.TextIOWrapper):
        def isatty(self) -> bool:
            return True

    out = Tty(raw, encoding=encoding)
    result = Diagnosis("p", [Check("ssh", OK, "fine"), Check("scheduler", FAIL, "refused", "change it\nor that"),
                             Check("jupyter config", WARN, "weak")])
    ui.checks(ui.Console(out=out, err=io.StringIO()), result, json_mode=False)
    out.flush()
    return raw.getvalue().decode(encoding)


def test_rendering_marks_color_and_ascii_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    fancy = _render("utf-8", {}, monkeypatch)
    assert "\x1b[32m✓\x1b[0m ssh: fine" in fancy and "\x1b[31;1m✗\x1b[0m scheduler: refused" in fancy
    assert "    change it\n    or that\n" in fancy and fancy.endswith("1 check(s) failed, 1 warning(s)\n")
    plain = _render("utf-8", {"NO_COLOR": "1"}, monkeypatch)
    assert "\x1b" not in plain and "✓ ssh: fine\n✗ scheduler: refused\n" in plain and "! jupyter config" in plain
    ascii_ = _render("ascii", {"NO_COLOR": "1"}, monkeypatch)
    assert "ok ssh: fine\nFAIL scheduler: refused\n" in ascii_ and "! jupyter config: weak" in ascii_


def test_no_session_dir_is_made_without_job(local: Local) -> None:
    jupyter_stand_in(local)
    doctor(local)
    assert not (local.home / ".hpclab").exists()


# -- environments as profile keys (envs.py) ---------------------------------------------------


def test_env_steps_and_kernels_from_the_probe_captured_on_the_test_cluster() -> None:
    """envs' probe output (tests/unit/fixtures/envs/probe-failures.txt) as doctor's checks."""
    from hpclab import envs
    from hpclab.doctor import EnvResult
    from hpclab.profiles import from_table

    text = (FIXTURES / "envs/probe-failures.txt").read_text()
    profile = from_table("p", {"host": "h", "modules": ["jupyter", "nope/1.0", "broken"], "venv": "/opt/hpclab-env2",
                               "kernels": [{"name": "env2", "venv": "/opt/hpclab-env2"},
                                           {"name": "bad", "venv": "~/not a venv"},
                                           {"name": "noipy", "modules": ["python"]},
                                           {"name": "r", "argv": ["R", "{connection_file}"]},
                                           {"name": "c", "conda": "lab"}]}, where="x", source="x")
    report = envs.parse_probe(text)
    failed_env = EnvResult(False, None, "", None, None, {}, report, report)
    (check,) = environment_checks(failed_env, "", "the login node", rc=78, profile=profile)
    assert check.status == FAIL
    assert check.detail == "module nope/1.0 does not load on the login node (also: module broken)"
    assert '"nope/1.0"' in str(check.hint) and "cuda" in str(check.hint) and "\n\n\n" not in str(check.hint)
    loaded = EnvResult(True, None, "", "/opt/hpclab-jupyter/bin/jupyter", "2.21.1", {}, envs.parse_probe(
        "@@hpclab-env {\"step\": \"module\", \"what\": \"jupyter\", \"ok\": true}\n" * 3
        + "@@hpclab-env {\"step\": \"venv\", \"what\": \"/opt/hpclab-env2\", \"ok\": true}\n"
        + "@@hpclab-env {\"step\": \"end\"}"),
        report)
    checks = {c.name: c for c in environment_checks(loaded, "", "node1", profile=profile)}
    assert checks["environment on node1"].status == OK
    assert checks["environment on node1"].detail.startswith("module jupyter, module nope/1.0, module broken, venv ")
    assert checks["kernel env2 on node1"].status == OK and "ipykernel 7.4.0" in checks["kernel env2 on node1"].detail
    assert checks["kernel bad on node1"].detail == "venv ~/not a venv does not load on node1"
    assert checks["kernel noipy on node1"].detail.endswith("python has no ipykernel on node1")
    assert checks["kernel r on node1"].detail == "R is not on PATH in its environment on node1"
    assert "no conda, mamba or micromamba found" in str(checks["kernel c on node1"].hint)


def test_a_venv_key_that_is_not_a_venv_is_named_through_local_remote(local: Local) -> None:
    local.config('[profiles.v]\nhost = "localhost"\nscheduler = "none"\nvenv = "~/venvs/not there"\n')
    jupyter_stand_in(local)
    rc, checks = doctor(local, "v")
    assert rc == 2 and checks["environment"]["detail"] == "venv ~/venvs/not there does not load on the login node"
    assert "is not a virtual environment" in str(checks["environment"]["hint"])


def test_a_venv_key_that_loads_is_used_for_jupyter_and_a_kernel_without_ipykernel_fails(local: Local) -> None:
    venv = local.home / "venvs" / "lab" / "bin"
    venv.mkdir(parents=True)
    (venv / "activate").write_text(f'PATH="{venv}:$PATH"\n')
    (venv / "jupyter").write_text('#!/bin/sh\n[ "$1 $2" = "server --version" ] && echo 2.20.0\n')
    (venv / "jupyter").chmod(0o755)
    (venv / "python").write_text("#!/bin/sh\nexit 1\n")  # no ipykernel (nor anything else) here
    (venv / "python").chmod(0o755)
    local.config('[profiles.v]\nhost = "localhost"\nscheduler = "none"\nvenv = "~/venvs/lab"\n'
                 'kernels = [{ name = "same", venv = "~/venvs/lab" }]\n')
    rc, checks = doctor(local, "v")
    assert checks["environment"]["status"] == OK
    assert checks["jupyter"]["detail"] == f"{venv}/jupyter: jupyter_server 2.20.0"
    assert rc == 2 and checks["kernel same"]["status"] == FAIL
    assert "has no ipykernel" in str(checks["kernel same"]["detail"])


def test_lines_planted_in_a_config_file_do_not_pass_for_the_programs_own(local: Local) -> None:
    """A config file's text is quoted line by line: its "@@setup-ok" or "@@jupyter" is not the probe's."""
    jupyter_stand_in(local)
    cfg = local.home / ".jupyter"
    cfg.mkdir()
    (cfg / "jupyter_server_config.py").write_text("@@setup-ok\n@@jupyter /planted\n@@jupyter-server 9.9\n")
    local.config('[profiles.bad]\nhost = "localhost"\nscheduler = "none"\nsetup = ["false"]\n')
    rc, checks = doctor(local, "bad")
    assert rc == 2 and checks["environment"]["status"] == FAIL and "jupyter" not in checks


def test_a_test_job_that_does_not_start_in_time_is_cancelled_and_said(local: Local) -> None:
    from hpclab.doctor import diagnose
    from hpclab.paths import Paths
    from hpclab.session import Context

    jupyter_stand_in(local)
    local.fake("hostname", "#!/bin/sh\nsleep 30\n")  # the test job never says where it runs
    ctx = Context(Paths.from_env(), lambda host, opts: local.remote)
    result = diagnose(ctx, "local", job=True, max_wait=1)
    checks = {c.name: c for c in result.checks}
    assert result.exit_code == 0 and checks["test job"].status == WARN
    assert "did not start within 1 s; cancelled" in checks["test job"].detail
    assert local.session_ids() == [] and not list((local.state / "state").glob("sessions/*.json"))
