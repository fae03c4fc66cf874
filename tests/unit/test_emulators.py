"""The e2e emulators (tests/e2e/emulators) against a fake SLURM: what they print for the
states and exits the real PBS, Torque and LSF document, without the test cluster.

A copy of the emulators runs with stub squeue/sacct/scancel first on PATH; each stub answers
from files the test writes. hpclab's own parsers then read what the emulator printed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpclab.schedulers import JobState, get
from hpclab.schedulers.base import GUARD_MARK

EMULATORS = Path(__file__).parents[1] / "e2e" / "emulators"

STUB = """#!/bin/sh
# answers with $FAKE/<tool>.out, records its argv in $FAKE/<tool>.argv
name=$(basename "$0")
printf '%s\\n' "$*" >> "$FAKE/$name.argv"
[ -f "$FAKE/$name.out" ] && cat "$FAKE/$name.out"
exit 0
"""


@pytest.fixture
def emu(tmp_path: Path) -> Path:
    dest = tmp_path / "emulators"
    shutil.copytree(EMULATORS, dest, ignore=shutil.ignore_patterns("__pycache__", "spool", "force-state"))
    fake = tmp_path / "fake"
    fake.mkdir()
    for tool in ("squeue", "sacct", "scancel", "sbatch"):
        (fake / tool).write_text(STUB)
        (fake / tool).chmod(0o755)
    return dest


def slurm(emu: Path, squeue: str = "", sacct: str = "") -> None:
    """What squeue and sacct answer from now on."""
    fake = emu.parent / "fake"
    (fake / "squeue.out").write_text(squeue)
    (fake / "sacct.out").write_text(sacct)


def call(emu: Path, scheduler: str, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    fake = emu.parent / "fake"
    env = {"PATH": f"{fake}:/usr/bin:/bin", "FAKE": str(fake), "USER": "hpcuser"}
    return subprocess.run([str(emu / scheduler / tool), *args], capture_output=True, text=True, env=env, timeout=30)


def guarded_output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"{proc.stdout}\n{GUARD_MARK} {proc.returncode}\n{proc.stderr}"


# squeue -o "%i|%T|%N|%l|%M|%L|%r|%S" and sacct -o JobID,State,ExitCode,NodeList,Timelimit,Elapsed
RUNNING = "42|RUNNING|node1|30:00|1:00|29:00|None|2026-11-25T20:31:12\n"
CANCELLED_TRAPPED = "42|CANCELLED by 1001|0:0|node1|00:30:00|00:01:10\n"  # the script caught TERM, exited 0
CANCELLED_KILLED = "42|CANCELLED by 1001|0:15|node1|00:30:00|00:01:10\n"  # SIGTERM killed the shell
TIMEOUT = "42|TIMEOUT|0:15|node1|00:30:00|00:30:04\n"
FAILED = "42|FAILED|3:0|node1|00:30:00|00:00:04\n"


@pytest.mark.parametrize(("sacct", "pbs", "torque", "lsf"), [
    (CANCELLED_TRAPPED, 0, 0, "0"),
    (CANCELLED_KILLED, 271, 271, "143"),
    (TIMEOUT, -29, -11, "143"),
    (FAILED, 3, 3, "3"),
])
def test_exit_status_is_what_the_job_did(emu: Path, sacct: str, pbs: int, torque: int, lsf: str) -> None:
    slurm(emu, sacct=sacct)
    out = call(emu, "pbs", "qstat", "-f", "-F", "json", "-x", "42.tc-login")
    assert f'"Exit_status":{pbs}' in out.stdout
    out = call(emu, "torque", "qstat", "-x", "42.tc-login")
    assert f"<exit_status>{torque}</exit_status>" in out.stdout
    out = call(emu, "lsf", "bjobs", "-o", "jobid stat", "-json", "42")
    assert f'"EXIT_CODE":"{lsf}"' in out.stdout


def test_a_job_qdel_ended_through_its_trap_is_not_called_completed(emu: Path) -> None:
    """What real PBS reports for hpclab's job after qdel: the job script traps TERM and exits
    with Jupyter's status, 0, so Exit_status says nothing of the cancel: ended, not completed."""
    slurm(emu, sacct=CANCELLED_TRAPPED)
    out = call(emu, "pbs", "qstat", "-f", "-F", "json", "-x", "42.tc-login")
    assert get("pbs").parse_status(guarded_output(out), ["42.tc-login"])["42.tc-login"].state is JobState.ENDED


@pytest.mark.parametrize(("scheduler", "tool", "job", "rc", "message"), [
    ("pbs", "qdel", "42.tc-login", 35, "qdel: Job 42.tc-login has finished"),
    ("torque", "qdel", "42.tc-login", 170, "qdel: Invalid state for job - COMPLETE 42.tc-login"),
    ("lsf", "bkill", "42", 255, "Job <42>: Job has already finished"),
])
def test_cancel_of_a_finished_job(emu: Path, scheduler: str, tool: str, job: str, rc: int, message: str) -> None:
    slurm(emu, sacct=FAILED)
    out = call(emu, scheduler, tool, job)
    assert (out.returncode, out.stderr.strip()) == (rc, message)
    assert not (emu.parent / "fake" / "scancel.argv").exists()  # nothing was cancelled


@pytest.mark.parametrize(("scheduler", "tool", "job", "rc", "message"), [
    ("pbs", "qdel", "77.tc-login", 153, "qdel: Unknown Job Id 77.tc-login"),
    ("lsf", "bkill", "77", 255, "Job <77>: No matching job found"),
])
def test_cancel_of_an_unknown_job(emu: Path, scheduler: str, tool: str, job: str, rc: int, message: str) -> None:
    slurm(emu)
    out = call(emu, scheduler, tool, job)
    assert (out.returncode, out.stderr.strip()) == (rc, message)


@pytest.mark.parametrize(("scheduler", "raw", "job"), [
    ("pbs", "S", "42.tc-login"), ("pbs", "H", "42.tc-login"), ("torque", "S", "42.tc-login"),
    ("lsf", "USUSP", "42"), ("lsf", "PSUSP", "42"),
])
def test_forced_state_is_reported_and_read_as_pending(emu: Path, scheduler: str, raw: str, job: str) -> None:
    slurm(emu, squeue=RUNNING)
    argv = {"pbs": ["qstat", "-f", "-F", "json", "-x", job], "torque": ["qstat", "-x", job],
            "lsf": ["bjobs", "-o", "jobid stat", "-json", job]}[scheduler]
    assert get(scheduler).parse_status(guarded_output(call(emu, scheduler, *argv)), [job])[job].state \
        is JobState.RUNNING
    (emu / "force-state").write_text(raw + "\n")
    info = get(scheduler).parse_status(guarded_output(call(emu, scheduler, *argv)), [job])[job]
    assert info.raw_state == raw and info.state is JobState.PENDING


def test_torque_output_is_spooled_until_the_job_ends(emu: Path) -> None:
    script = "#!/bin/bash\n#PBS -o out.txt\n#PBS -e err.txt\n#PBS -l walltime=00:10:00\necho hi\n"
    fake = emu.parent / "fake"
    (fake / "sbatch").write_text("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$FAKE/sbatch.args\"\n"
                                 "cat > \"$FAKE/wrapper\"\necho 42\n")
    env = {"PATH": f"{fake}:/usr/bin:/bin", "FAKE": str(fake)}
    subprocess.run([str(emu / "torque" / "qsub")], input=script, text=True, env=env, check=True, capture_output=True)
    args = (fake / "sbatch.args").read_text().split("\n")
    assert args[args.index("-o") + 1] == "/dev/null"  # nothing goes to out.txt while it runs
    run = emu.parent / "run"
    run.mkdir()
    proc = subprocess.run(["bash", str(fake / "wrapper")], cwd=run, env={**env, "SLURM_JOB_ID": "42"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and (run / "out.txt").read_text() == "hi\n"  # ... and is there at the end


CHILD = """import os, signal, sys, time
def got(*a):
    open(sys.argv[1], "w").write("got")
    os._exit(0)
signal.signal(signal.SIGUSR1, got)
time.sleep(30)
"""


def test_lsf_warning_goes_to_every_process_of_the_job(emu: Path, tmp_path: Path) -> None:
    """-wa USR1 -wt 1 on a one-minute job: at once (limit - 1 min), USR1 reaches the job script
    and a process in a session of its own, as a kernel is (SLURM's B: reaches the script only)."""
    (tmp_path / "child.py").write_text(CHILD)
    script = ("#!/bin/bash\n#BSUB -W 0:01\n#BSUB -wa USR1\n#BSUB -wt 1\n"
              f"setsid {sys.executable} {tmp_path}/child.py {tmp_path}/child-got &\n"
              f"trap 'echo got > {tmp_path}/script-got; exit 0' USR1\n"
              "for i in $(seq 100); do sleep 0.1; done\n")
    fake = emu.parent / "fake"
    (fake / "sbatch").write_text("#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$FAKE/sbatch.args\"\n"
                                 "cat > \"$FAKE/wrapper\"\necho 42\n")
    env = {"PATH": f"{fake}:/usr/bin:/bin", "FAKE": str(fake)}
    subprocess.run([str(emu / "lsf" / "bsub")], input=script, text=True, env=env, check=True, capture_output=True)
    assert "--signal=B:" not in (fake / "sbatch.args").read_text()  # not only the batch shell
    proc = subprocess.run(["bash", str(fake / "wrapper")], cwd=tmp_path, env={**env, "SLURM_JOB_ID": "42"},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + 10
    while not (tmp_path / "child-got").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (tmp_path / "script-got").read_text() == "got\n"
    assert (tmp_path / "child-got").read_text() == "got"
