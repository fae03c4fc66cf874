"""SLURM: sbatch, squeue, scancel, sacct."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from ..units import parse_duration
from .base import Guarded, JobInfo, JobSpec, JobState, Scheduler, bad_output

_FORMAT = "%i|%T|%N|%r|%S|%L"


class Slurm(Scheduler):
    name = "slurm"
    title = "SLURM"
    directive = "#SBATCH"
    submit = ("sbatch", "--parsable")
    cancel = ("scancel",)
    job_id_var = "${SLURM_JOB_ID:-}"
    signals_before_end = True
    option_directives = {"partition": "--partition={}", "account": "--account={}"}
    # squeue --me --states=all fails only as a whole (the runner reports it): no guard needed
    guarded_status = False
    states = {
        "PENDING": JobState.PENDING,
        "CONFIGURING": JobState.PENDING,
        "REQUEUED": JobState.PENDING,
        "REQUEUE_FED": JobState.PENDING,
        "REQUEUE_HOLD": JobState.PENDING,
        "RESV_DEL_HOLD": JobState.PENDING,
        # suspended or stopped: neither usable nor over (the same in every scheduler)
        "SUSPENDED": JobState.PENDING,
        "RUNNING": JobState.RUNNING,
        "COMPLETING": JobState.RUNNING,
        "SIGNALING": JobState.RUNNING,
        "STAGE_OUT": JobState.RUNNING,
        "RESIZING": JobState.RUNNING,
        "COMPLETED": JobState.COMPLETED,
        "FAILED": JobState.FAILED,
        "BOOT_FAIL": JobState.NODE_FAIL,
        "DEADLINE": JobState.TIMEOUT,
        "PREEMPTED": JobState.CANCELLED,
        "REVOKED": JobState.CANCELLED,
        # squeue(1): "requeued in a special state" (held until released), not an end
        "SPECIAL_EXIT": JobState.PENDING,
        "STOPPED": JobState.PENDING,
        "CANCELLED": JobState.CANCELLED,
        "TIMEOUT": JobState.TIMEOUT,
        "NODE_FAIL": JobState.NODE_FAIL,
        "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY,
    }

    def resource_directives(self, spec: JobSpec) -> list[str]:
        lines = [
            f"--job-name={spec.name}",
            "--comment=hpclab",
            f"--output={spec.output}",
            f"--error={spec.error}",
            f"--time={math.ceil(spec.time / 60)}",
            "--nodes=1",
            "--ntasks=1",
            f"--signal=B:USR1@{spec.signal_before}",
        ]
        if spec.cpus:
            lines.append(f"--cpus-per-task={spec.cpus}")
        if spec.mem:
            lines.append(f"--mem={spec.mem.upper().removesuffix('B')}")
        if spec.gpus:
            lines.append(f"--gpus={spec.gpus}")
        return lines

    def parse_submit(self, stdout: str) -> str:
        # sbatch --parsable prints "id" or "id;cluster"; the cluster part is not the id.
        first = stdout.strip().splitlines()[-1:] or [""]
        job_id = first[0].split(";")[0].strip()
        if not job_id.isdigit():
            raise bad_output("sbatch", "job id", stdout)
        return job_id

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        # One query for all of the user's jobs, including those that ended a moment ago:
        # -j with an id slurmctld has forgotten fails the whole query.
        return ["squeue", "--me", "--states=all", "--noheader", f"--format={_FORMAT}"]

    def read_jobs(self, out: Guarded) -> Mapping[str, list[str]]:
        jobs: dict[str, list[str]] = {}
        for line in out.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 6:
                jobs[parts[0]] = parts[:6]
        return jobs

    def job_info(self, job_id: str, job: list[str]) -> JobInfo:
        _, raw, nodes, reason, start, left = job
        state = self.state(raw)
        return JobInfo(
            job_id=job_id,
            state=state,
            node=(nodes.split(",")[0] or None) if state is not JobState.PENDING else None,
            reason=reason if reason not in ("None", "") else None,
            start_time=start if state is JobState.PENDING and start not in ("N/A", "") else None,
            time_left=_time_left(left) if state is JobState.RUNNING else None,
            raw_state=raw,
        )

    def tagged_argv(self) -> list[str]:
        return ["squeue", "--me", "--noheader", "--format=%i|%j"]

    def final_argv(self, job_id: str) -> list[str] | None:
        return ["sacct", "--noheader", "--parsable2", "--allocations", "--jobs", job_id,
                "--format=JobID,State,ExitCode,NodeList"]

    def parse_final(self, stdout: str, job_id: str) -> JobInfo | None:
        for line in stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 4 and parts[0] == job_id:
                raw = parts[1].split()[0] if parts[1].strip() else ""  # "CANCELLED by 1001"
                # a job that never started has NodeList "None assigned"
                node = parts[3] if parts[3] and parts[3] != "None assigned" else None
                return JobInfo(job_id=job_id, state=self.state(raw), node=node, raw_state=raw)
        return None


def _time_left(text: str) -> int | None:
    # squeue %L: "1-02:03:04", "2:03:04", "3:04", "UNLIMITED", "INVALID", "NOT_SET"
    if not re.match(r"^[0-9:-]+$", text):
        return None
    try:
        return parse_duration(text)
    except ValueError:
        return None
