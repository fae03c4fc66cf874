"""SLURM's parsers on output captured from the test cluster's SLURM 22.05 (tests/unit/fixtures/slurm)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpclab.errors import SchedulerError
from hpclab.schedulers import JobState, get

FIXTURES = Path(__file__).parent / "fixtures" / "slurm"


def text(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_sbatch_parsable() -> None:
    assert get("slurm").parse_submit(text("sbatch-parsable.txt")) == "3"
    assert get("slurm").parse_submit("4242;cluster\n") == "4242"
    with pytest.raises(SchedulerError):
        get("slurm").parse_submit("sbatch: error: Batch job submission failed: Invalid account\n")


def test_squeue_running_and_held() -> None:
    found = get("slurm").parse_status(text("squeue-running-pending.txt"), ["3", "4", "77"])
    assert found["3"].state is JobState.RUNNING and found["3"].node == "node1" and found["3"].time_left == 9 * 60 + 59
    assert found["4"].state is JobState.PENDING and found["4"].reason == "JobHeldUser" and found["4"].node is None
    assert found["77"].state is JobState.ENDED  # not in the user's queue any more


@pytest.mark.parametrize(("job_id", "state"), [("2", JobState.CANCELLED), ("12", JobState.CANCELLED),
                                               ("1", JobState.COMPLETED), ("15", JobState.FAILED),
                                               ("21", JobState.PENDING)])
def test_squeue_states_all(job_id: str, state: JobState) -> None:
    info = get("slurm").parse_status(text("squeue-ended.txt"), [job_id])[job_id]
    assert info.state is state
    assert info.time_left is None  # only a running job has time left


def test_pending_job_has_no_estimate_when_slurm_has_none() -> None:
    info = get("slurm").parse_status(text("squeue-ended.txt"), ["21"])["21"]
    assert info.start_time is None  # "N/A"


@pytest.mark.parametrize(("name", "job_id", "state", "node"), [
    ("sacct-cancelled.txt", "3", JobState.CANCELLED, "node1"),  # "CANCELLED by 1001"
    ("sacct-cancelled-pending.txt", "4", JobState.CANCELLED, None),  # NodeList "None assigned"
    ("sacct-failed.txt", "5", JobState.FAILED, "node1"),
])
def test_sacct_final_state(name: str, job_id: str, state: JobState, node: str | None) -> None:
    info = get("slurm").parse_final(text(name), job_id)
    assert info is not None and info.state is state and info.node == node


def test_sacct_for_another_job_says_nothing() -> None:
    assert get("slurm").parse_final(text("sacct-failed.txt"), "6") is None
