"""The whole `hpclab up` flow for PBS Pro, Torque and LSF against EMULATED commands.

No such scheduler runs here. tests/e2e/emulators/ holds small qsub/qstat/qdel and
bsub/bjobs/bkill stand-ins that run the job through the test cluster's real SLURM and print
exactly the real tools' formats (those of tests/unit/fixtures/). What these tests prove is
hpclab's side: the rendered directives are read, the id parsed, the batched status query
and its parser, cancel, and the job id variable inside the job. What they cannot prove is
that a real PBS/Torque/LSF behaves as the emulator does.

How the emulators get first on PATH without touching the test cluster: a key of this test
only is added to the user's authorized_keys with a forced command that prepends the
emulators' directory to PATH and runs the original command with bash -c. The profile reaches
the login node with that key; other tests' connections are not affected. Both are removed
afterwards.
"""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab import ForcedLogin, Hpclab, hpclab, run_cell, tc, tcx, user_jobs, wait_for

__all__ = ["hpclab"]

EMULATORS = Path(__file__).parent / "emulators"
NODES = ("node1", "node2")
JOB_ID_VAR = {"pbs": "PBS_JOBID", "torque": "PBS_JOBID", "lsf": "LSB_JOBID"}


class Emulated:
    def __init__(self, hpclab: Hpclab, tmp_path: Path) -> None:
        self.hpclab = hpclab
        self.login = ForcedLogin(tmp_path)
        self.user = self.login.user
        self.dest = self.login.home / f".hpclab-emulators-{self.login.token}"

    def install(self, scheduler: str, time: str = "00:30:00") -> str:
        """Copy the emulators, authorize the key with its PATH, write a profile; returns its name."""
        shutil.copytree(EMULATORS, self.dest, ignore=shutil.ignore_patterns("__pycache__", "spool"))
        self.login.chown(self.dest)
        ssh_config = self.login.install(f"{self.dest}/{scheduler}:$PATH")
        name = f"emulated-{scheduler}"
        self.hpclab.write_config(
            f"[profiles.{name}]\nhost = \"tc-login-forced\"\nssh_options = [\"-F\", \"{ssh_config}\"]\n"
            f"scheduler = \"{scheduler}\"\ntime = \"{time}\"\n"
            f"setup = \"source {tc('TC_JUPYTER_VENV')}/bin/activate\"\n"
        )
        return name

    def force_state(self, state: str | None) -> None:
        """Make the emulated status query report `state` for every job that has not ended."""
        knob = self.dest / "force-state"
        if state is None:
            knob.unlink(missing_ok=True)
        else:
            knob.write_text(state + "\n")
            self.login.chown(knob)

    def session_file(self, session_id: str, name: str) -> Path:
        return self.login.home / ".hpclab" / "sessions" / session_id / name

    def remove(self) -> None:
        self.login.remove()
        shutil.rmtree(self.dest, ignore_errors=True)


@pytest.fixture
def emulated(hpclab: Hpclab, tmp_path: Path) -> Iterator[Emulated]:
    emu = Emulated(hpclab, tmp_path)
    try:
        yield emu
    finally:
        hpclab.cleanup()  # stop --all while the key and the emulators still exist
        emu.remove()


def up_cell_list_stop(hpclab: Hpclab, emulated: Emulated, scheduler: str) -> None:
    profile = emulated.install(scheduler)
    info = hpclab.json("up", profile, "--detach", "--no-browser")
    assert info["scheduler"] == scheduler and info["state"] == "running" and info["node"] in NODES
    slurm_id = info["job_id"].split(".")[0]
    assert slurm_id in user_jobs(emulated.user)
    var = JOB_ID_VAR[scheduler]
    output = run_cell(info["url"], f"import os, socket; print(socket.gethostname(), os.environ.get('{var}'))")
    assert output.split() == [info["node"], info["job_id"]]  # the job id variable names the same job

    listed = hpclab.json("list")
    assert [(s["job_id"], s["state"]) for s in listed] == [(info["job_id"], "running")]
    stopped = hpclab.json("stop", info["id"])
    assert stopped[0]["state"] in ("ended", "cancelled")  # PBS/LSF still show the job, as cancelled
    assert slurm_id not in user_jobs(emulated.user)


def ctrl_c_leaves_no_job(hpclab: Hpclab, emulated: Emulated, scheduler: str) -> None:
    profile = emulated.install(scheduler)
    run = hpclab.start("up", profile, "--no-browser")
    run.wait_url()
    job_id = hpclab.json("list")[0]["job_id"].split(".")[0]
    assert job_id in user_jobs(emulated.user)
    run.signal(signal.SIGINT)
    assert run.wait(90) == 130
    assert job_id not in user_jobs(emulated.user)


def test_emulated_pbs_up_runs_a_cell_lists_and_stops(hpclab: Hpclab, emulated: Emulated) -> None:
    up_cell_list_stop(hpclab, emulated, "pbs")


def test_emulated_pbs_ctrl_c_leaves_no_job(hpclab: Hpclab, emulated: Emulated) -> None:
    ctrl_c_leaves_no_job(hpclab, emulated, "pbs")


def test_emulated_torque_up_runs_a_cell_lists_and_stops(hpclab: Hpclab, emulated: Emulated) -> None:
    up_cell_list_stop(hpclab, emulated, "torque")


def test_emulated_torque_ctrl_c_leaves_no_job(hpclab: Hpclab, emulated: Emulated) -> None:
    ctrl_c_leaves_no_job(hpclab, emulated, "torque")


def test_emulated_lsf_up_runs_a_cell_lists_and_stops(hpclab: Hpclab, emulated: Emulated) -> None:
    up_cell_list_stop(hpclab, emulated, "lsf")


def test_emulated_lsf_ctrl_c_leaves_no_job(hpclab: Hpclab, emulated: Emulated) -> None:
    ctrl_c_leaves_no_job(hpclab, emulated, "lsf")


# -- what the real schedulers do that hpclab must live with --------------------------------------


@pytest.mark.parametrize(("scheduler", "raw"), [("pbs", "S"), ("pbs", "H"), ("torque", "S"), ("lsf", "USUSP"),
                                                ("lsf", "SSUSP")])
def test_emulated_suspended_or_held_job_is_listed_pending_then_running_again(
        hpclab: Hpclab, emulated: Emulated, scheduler: str, raw: str) -> None:
    profile = emulated.install(scheduler)
    info = hpclab.json("up", profile, "--detach", "--no-browser")
    emulated.force_state(raw)
    assert [s["state"] for s in hpclab.json("list")] == ["pending"]
    emulated.force_state(None)
    assert [s["state"] for s in hpclab.json("list")] == ["running"]
    hpclab.json("stop", info["id"])


@pytest.mark.parametrize("scheduler", ["pbs", "torque", "lsf"])
def test_emulated_stop_of_a_job_that_already_ended(hpclab: Hpclab, emulated: Emulated, scheduler: str) -> None:
    """The job ended behind hpclab's back: qdel/bkill then refuses it (finished), and stop still
    ends the session cleanly."""
    profile = emulated.install(scheduler)
    info = hpclab.json("up", profile, "--detach", "--no-browser")
    slurm_id = info["job_id"].split(".")[0]
    tcx("login", ["scancel", slurm_id])
    wait_for(lambda: slurm_id not in user_jobs(emulated.user), 60, what="the job to end")
    cancel = {"pbs": "qdel", "torque": "qdel", "lsf": "bkill"}[scheduler]
    refused = tcx("login", [str(emulated.dest / scheduler / cancel), info["job_id"]], user=emulated.user, check=False)
    assert refused.returncode != 0 and ("finished" in refused.stderr or "COMPLETE" in refused.stderr)
    stopped = hpclab.json("stop", info["id"])
    assert stopped[0]["state"] not in ("running", "pending", "unknown")
    assert hpclab.json("list") == []


@pytest.mark.parametrize(("scheduler", "empty"), [("pbs", False), ("torque", True)])
def test_emulated_torque_output_appears_only_when_the_job_ends(hpclab: Hpclab, emulated: Emulated, scheduler: str,
                                                               empty: bool) -> None:
    """Torque copies the job's output to -o/-e at the end: while the lab runs, job.err stays
    empty (Jupyter's log is in the node's spool), unlike PBS Pro with -k oed."""
    profile = emulated.install(scheduler)
    info = hpclab.json("up", profile, "--detach", "--no-browser")
    err = emulated.session_file(info["id"], "job.err")
    assert (err.stat().st_size == 0) is empty, (scheduler, err.read_text()[:200])
    hpclab.json("stop", info["id"])


def test_emulated_lsf_time_limit_warning_spares_the_kernels(hpclab: Hpclab, emulated: Emulated) -> None:
    """LSF's -wa warning would signal every process of the job, kernels included (the emulator
    does so, as LSF does: tests/unit/test_emulators.py), and a kernel dies of SIGUSR1. hpclab asks
    for none: the job script's own timer ends the lab 90 s before a 2-minute limit, and the kernel
    never sees a USR1."""
    profile = emulated.install("lsf", time="00:02:00")
    info = hpclab.json("up", profile, "--detach", "--no-browser")
    marker = emulated.login.home / f".usr1-{emulated.login.token}"
    code = ("import signal, os\n"
            f"signal.signal(signal.SIGUSR1, lambda *a: open({str(marker)!r}, 'w').write(str(os.getpid())))\n"
            "print(os.getpid())")
    run_cell(info["url"], code)
    try:
        ended = emulated.session_file(info["id"], "ended.json")
        wait_for(ended.exists, 150, interval=1, what="the job script's timer to end the lab")
        assert json.loads(ended.read_text())["reason"] == "timelimit"
        assert not marker.exists(), "a kernel got SIGUSR1"
    finally:
        marker.unlink(missing_ok=True)
