"""scheduler = "auto" on the real test cluster: it finds SLURM, and it finds Grid Engine on a
login node whose PATH has Grid Engine and not SLURM (as on a site that runs only Grid Engine).
The test cluster's login node has both; the second case gives one test key a PATH made of
/usr/bin without SLURM's commands (see lab.ForcedLogin)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lab import ForcedLogin, Hpclab, hpclab, profile_text, run_cell

__all__ = ["hpclab"]

SLURM_COMMANDS = {"sacct", "sacctmgr", "salloc", "sattach", "sbatch", "sbcast", "scancel", "scontrol", "scrontab",
                  "sdiag", "sh5util", "sinfo", "sprio", "squeue", "sreport", "srun", "sshare", "sstat", "strigger",
                  "sview"}


GRID_ENGINE_COMMANDS = {"qsub", "qstat", "qdel", "qacct", "qconf", "qhost", "qalter", "qhold", "qrls", "qrsh",
                        "qlogin", "qmod", "qping", "qquota", "qrdel", "qrstat", "qrsub", "qselect", "qsh", "qmake",
                        "qtcsh", "bsub", "bjobs", "lsid"}


@pytest.fixture
def login_without(tmp_path: Path) -> Iterator[Callable[[set[str]], ForcedLogin]]:
    """A login whose PATH is /usr/bin without the given commands."""
    made: list[tuple[ForcedLogin, Path]] = []

    def make(hidden: set[str]) -> ForcedLogin:
        login = ForcedLogin(tmp_path / str(len(made)))
        (tmp_path / str(len(made))).mkdir()
        bindir = login.home / f".hpclab-path-{login.token}"
        bindir.mkdir()
        for name in os.listdir("/usr/bin"):
            if name not in hidden:
                (bindir / name).symlink_to(f"/usr/bin/{name}")
        login.chown(bindir)
        login.install(str(bindir))
        made.append((login, bindir))
        return login

    yield make
    for login, bindir in made:
        login.remove()
        shutil.rmtree(bindir)


def test_auto_finds_slurm(hpclab: Hpclab) -> None:
    hpclab.write_config(profile_text(scheduler="auto"))
    proc = hpclab("up", "testcluster", "--detach", "--no-browser", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "tc-login runs SLURM" in proc.stderr
    assert '"scheduler": "slurm"' in proc.stdout


def test_auto_finds_grid_engine_where_slurm_is_not_on_the_path(hpclab: Hpclab, login_without: Any) -> None:
    login = login_without(SLURM_COMMANDS)
    hpclab.write_config(profile_text("testcluster-sge", scheduler="auto", host="tc-login-forced",
                                     ssh_options=["-F", str(login.ssh_config)]))
    proc = hpclab("up", "testcluster-sge", "--detach", "--no-browser", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "tc-login-forced runs Grid Engine" in proc.stderr
    info = json.loads(proc.stdout)
    assert info["scheduler"] == "sge"
    output = run_cell(info["url"], "import os, socket; print(socket.gethostname(), os.environ.get('JOB_ID'))")
    assert output.split() == [info["node"], info["job_id"]]
    assert hpclab("stop", info["id"]).returncode == 0


def test_auto_names_the_choices_when_nothing_is_found(hpclab: Hpclab, login_without: Any) -> None:
    login = login_without(SLURM_COMMANDS | GRID_ENGINE_COMMANDS)
    hpclab.write_config(profile_text(scheduler="auto", host="tc-login-forced",
                                     ssh_options=["-F", str(login.ssh_config)]))
    proc = hpclab("up", "testcluster", "--no-browser")
    assert proc.returncode == 2, proc.stderr
    assert "could not tell which scheduler tc-login-forced runs" in proc.stderr
    assert "lsf, none, pbs, sge, slurm, torque" in proc.stderr
