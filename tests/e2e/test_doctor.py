"""`hpclab doctor` against the real test cluster: SLURM's own dry run, Lmod modules that do not
load, a venv that is not there, the user's real ~/.jupyter, and `--job` with a real job whose
node is reached through the login node (pam_slurm_adopt) and which is cancelled afterwards.
Without --job nothing may reach the queue: each test compares SLURM's accounting before and after."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import tomllib
from lab import Hpclab, hpclab, session_dirs, sge_jobs, tc, tcx, user_jobs, wait_for
from test_envs import conda_standin

from hpclab.init import profile_block

if TYPE_CHECKING:
    from .conftest import Cluster

__all__ = ["conda_standin", "hpclab"]


def cluster_now() -> str:
    return tcx("login", ["date", "+%Y-%m-%dT%H:%M:%S"]).stdout.strip()


def jobs_submitted_since(start: str) -> set[str]:
    """Jobs of every user submitted at `start` or later, in any state (asked as root): what
    slurmctld still holds (it keeps ended jobs for MinJobAge, 600 s here) and what accounting
    has. By submit time, not a before/after difference: an earlier test's job may reach
    accounting only now, and a job that ended at once may not be in accounting yet."""
    held = tcx("login", ["squeue", "-a", "-h", "--states=all", "-o", "%i|%V"]).stdout
    accounted = tcx("login", ["sacct", "-a", "-X", "-n", "-P", "-o", "JobID,Submit", "-S", start]).stdout
    lines = (held + accounted).splitlines()
    return {job for job, _, submit in (ln.partition("|") for ln in lines) if submit >= start}


def doctor(tool: Hpclab, profile: str = "testcluster", *extra: str) -> tuple[int, dict[str, dict[str, Any]]]:
    start = cluster_now()
    proc = tool("doctor", profile, "--json", *extra, timeout=300)
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    if "--job" not in extra:
        assert jobs_submitted_since(start) == set(), "doctor without --job submitted a job"
        assert user_jobs(tc("TC_USER")) == [] and user_jobs(tc("TC_USER3")) == []
    assert session_dirs(tc("TC_USER")) == [] and session_dirs(tc("TC_USER3")) == []
    return proc.returncode, checks


def with_profile(tool: Hpclab, name: str = "testcluster", **overrides: Any) -> None:
    """The test cluster's profile `name` with `overrides`, written as hpclab init writes TOML."""
    base = tomllib.loads(Path(tc("HPCLAB_CONFIG")).read_text())["profiles"][name]
    tool.write_config(profile_block(name, base | overrides))


def test_a_good_profile_passes_and_submits_nothing(cluster: Cluster, hpclab: Hpclab) -> None:
    rc, checks = doctor(hpclab)
    assert rc == 0, checks
    assert checks["scheduler"]["status"] == "ok" and "partition debug" in checks["scheduler"]["detail"]
    assert checks["jupyter"]["detail"].startswith(f"{cluster.jupyter_venv}/bin/jupyter: jupyter_server 2.")
    assert checks["node ssh"]["status"] == "skip" and "--job" in checks["node ssh"]["detail"]
    human = hpclab("doctor", "testcluster", timeout=300)
    assert human.returncode == 0 and "✓ scheduler: SLURM would accept" in human.stdout, human.stdout


def test_a_module_that_fails_to_load_or_does_not_exist_is_named(cluster: Cluster, hpclab: Hpclab) -> None:
    with_profile(hpclab, setup=[], modules=["jupyter", "broken"])
    rc, checks = doctor(hpclab)
    assert rc == 2 and checks["environment"]["detail"] == "module broken does not load on the login node", checks
    assert "cuda" in checks["environment"]["hint"]  # Lmod's own words: the missing prerequisite
    assert "jupyter" not in checks  # not looked for in an environment that did not load
    with_profile(hpclab, setup=[], modules=["no-such-module"])
    rc, checks = doctor(hpclab)
    assert rc == 2 and checks["environment"]["detail"] == "module no-such-module does not load on the login node"
    assert 'unknown' in checks["environment"]["hint"] and '"no-such-module"' in checks["environment"]["hint"]


def test_a_failing_setup_line_is_named_for_a_tcsh_user(cluster: Cluster, hpclab: Hpclab) -> None:
    # hpcuser3: tcsh, rc files with a banner; the setup runs in bash with Lmod through BASH_ENV, as in a job
    with_profile(hpclab, "testcluster-3", setup=["module load python", "module load broken"])
    rc, checks = doctor(hpclab, "testcluster-3")
    assert rc == 2 and checks["environment"]["detail"].endswith(": module load broken"), checks
    assert "cuda" in checks["environment"]["hint"]


def test_a_bad_partition_is_refused_in_slurms_words(cluster: Cluster, hpclab: Hpclab) -> None:
    with_profile(hpclab, partition="nope")
    rc, checks = doctor(hpclab)
    assert rc == 4 and checks["scheduler"]["status"] == "fail"
    assert "invalid partition specified: nope" in checks["scheduler"]["detail"]
    assert checks["environment"]["status"] == "ok"  # the other checks still ran


def test_more_than_a_node_has_is_refused(cluster: Cluster, hpclab: Hpclab) -> None:
    with_profile(hpclab, cpus=64)
    rc, checks = doctor(hpclab)
    assert rc == 4 and "cpus 64" in checks["scheduler"]["detail"], checks["scheduler"]


def test_a_missing_venv_is_named(cluster: Cluster, hpclab: Hpclab) -> None:
    with_profile(hpclab, setup=[], venv="~/venvs/missing")
    rc, checks = doctor(hpclab)
    assert rc == 2 and checks["environment"]["detail"] == "venv ~/venvs/missing does not load on the login node"
    assert f"{cluster.home()}/venvs/missing is not a virtual environment" in checks["environment"]["hint"]
    assert "jupyter" not in checks
    with_profile(hpclab, setup="source ~/venvs/missing/bin/activate")
    rc, checks = doctor(hpclab)
    assert rc == 2 and checks["environment"]["detail"].endswith(": source ~/venvs/missing/bin/activate")
    assert "No such file or directory" in checks["environment"]["hint"]


def test_each_kernel_environment_is_checked(cluster: Cluster, hpclab: Hpclab) -> None:
    kernels = [{"name": "env2", "modules": ["env2"]}, {"name": "noipy", "modules": ["python"]}]
    with_profile(hpclab, "testcluster-3", setup=[], modules=["jupyter"], kernels=kernels)
    rc, checks = doctor(hpclab, "testcluster-3")
    assert rc == 2 and checks["environment"]["status"] == "ok" and checks["jupyter"]["status"] == "ok"
    assert checks["kernel env2"]["status"] == "ok"
    env2 = checks["kernel env2"]["detail"]
    assert env2.startswith("ipykernel ") and str(cluster.env2_venv) in env2
    assert checks["kernel noipy"]["status"] == "fail" and "has no ipykernel" in checks["kernel noipy"]["detail"]


def test_the_users_real_jupyter_config_is_read(cluster: Cluster, hpclab: Hpclab) -> None:
    path = cluster.home() / ".jupyter" / "jupyter_server_config.py"
    assert not path.exists(), f"{path} exists already: this test would overwrite it"
    try:
        tcx("login", ["sh", "-c", f"printf '%s\\n' \"c.ServerApp.allow_origin = '*'\" > {path}"], user=cluster.user)
        rc, checks = doctor(hpclab)
    finally:
        path.unlink(missing_ok=True)
    assert rc == 0 and checks["jupyter config"]["status"] == "warn"
    assert f"{path}: ServerApp.allow_origin" in checks["jupyter config"]["detail"]


def test_job_reaches_the_node_loads_the_environment_there_and_cancels_the_job(cluster: Cluster,
                                                                                hpclab: Hpclab) -> None:
    with_profile(hpclab, transport="socket")
    rc, checks = doctor(hpclab, "testcluster", "--job")
    assert rc == 0, checks
    m = re.fullmatch(r"test job (\d+) runs on (node\d)", checks["test job"]["detail"])
    assert m, checks["test job"]
    job, node = m.groups()
    assert checks["node ssh"]["status"] == "ok"
    assert checks[f"environment on {node}"]["status"] == "ok"
    assert checks[f"jupyter on {node}"]["detail"].startswith(f"{cluster.jupyter_venv}/bin/jupyter: jupyter_server")
    assert cluster.wait_job(job, ("CANCELLED",)) == "CANCELLED"
    assert user_jobs(cluster.user) == []
    assert not list(Path(hpclab.home).glob("state/sessions/*.json"))


def test_an_unknown_host_key_stops_at_ssh_with_exit_3(cluster: Cluster, hpclab: Hpclab, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with_profile(hpclab, ssh_options=["-o", f"UserKnownHostsFile={empty}", "-F", str(cluster.ssh_config)])
    rc, checks = doctor(hpclab)
    assert rc == 3 and list(checks) == ["profile", "ssh"]
    assert checks["ssh"]["detail"] == "the host key of tc-login is not known or does not match"


def test_grid_engine_verifies_the_request_without_queueing_it(cluster: Cluster, hpclab: Hpclab) -> None:
    if not cluster.sge:
        pytest.skip("the test cluster runs without Grid Engine (HPCLAB_TC_SGE=0)")
    rc, checks = doctor(hpclab, "testcluster-sge")
    assert rc == 0 and checks["scheduler"]["detail"].startswith("Grid Engine would accept")
    assert "found suitable queue" in checks["scheduler"]["detail"]
    with_profile(hpclab, "testcluster-sge", partition="nope.q")
    rc, checks = doctor(hpclab, "testcluster-sge")
    assert rc == 4 and 'unknown queue "nope.q"' in checks["scheduler"]["detail"]
    assert sge_jobs(cluster.user) == []


def test_job_is_cancelled_when_doctor_is_stopped_while_it_runs(cluster: Cluster, hpclab: Hpclab) -> None:
    # a setup line that takes its time: doctor is still at work on the node while the job runs
    with_profile(hpclab, setup=["source /opt/hpclab-jupyter/bin/activate", "sleep 15"])
    run = hpclab.start("doctor", "testcluster", "--job")
    jobs = wait_for(lambda: user_jobs(cluster.user), 90, what="the test job")
    run.wait_stderr("loading the environment on node", timeout=60)
    run.signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 130, run.stderr()
    assert cluster.wait_job(jobs[0], ("CANCELLED",)) == "CANCELLED"
    assert user_jobs(cluster.user) == [] and session_dirs(cluster.user) == []
    assert not list(Path(hpclab.home).glob("state/sessions/*.json"))


def test_a_conda_environment_that_is_not_there_is_named(cluster: Cluster, hpclab: Hpclab,
                                                        conda_standin: Path) -> None:
    """conda from the STAND-IN of tests/e2e/emulators/conda (conda cannot be installed here)."""
    with_profile(hpclab, setup=[], conda="nope", env={"CONDA_EXE": str(conda_standin)})
    rc, checks = doctor(hpclab)
    assert rc == 2 and checks["environment"]["detail"] == "conda nope does not load on the login node"
    assert "EnvironmentNameNotFound: Could not find conda environment: nope" in checks["environment"]["hint"]
    with_profile(hpclab, setup=[], conda="lab", env={"CONDA_EXE": str(conda_standin)})
    rc, checks = doctor(hpclab)
    assert rc == 0, checks
    assert checks["jupyter"]["detail"].startswith(f"{conda_standin.parent.parent}/envs/lab/bin/jupyter: jupyter_server")


def test_the_apps_program_is_looked_for_before_the_queue(cluster: Cluster, hpclab: Hpclab) -> None:
    """`app = "code-server"` needs code-server, not Jupyter; Notebook 7 needs jupyter-notebook too."""
    with_profile(hpclab, app="code-server", setup=[])
    rc, checks = doctor(hpclab)
    assert rc == 2 and checks["code-server"]["status"] == "fail", checks
    assert "'code-server' (code-server) is not on PATH" in checks["code-server"]["detail"]
    assert "jupyter" not in checks  # not what this app runs on
    with_profile(hpclab, app="code-server", setup=[], modules=["code-server"])
    rc, checks = doctor(hpclab)
    assert rc == 0, checks
    assert checks["code-server"]["detail"].startswith("/opt/hpclab-code-server/bin/code-server: 4.100.3")
    # (asked in a way that writes nothing: a bare `code-server --version` makes a config file with a password)
    assert not Path(f"/home/{tc('TC_USER')}/.config/code-server").exists()
    with_profile(hpclab, app="notebook")
    rc, checks = doctor(hpclab)
    assert rc == 0 and checks["jupyter-notebook"]["status"] == "ok" and checks["jupyter"]["status"] == "ok", checks
