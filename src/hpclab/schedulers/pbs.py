"""PBS Professional and OpenPBS: qsub, qstat -f -F json -x, qdel.

Exit_status of a finished job (qstat -x, job_state F), from OpenPBS src/include/job.h and
the sites' tables: 0 the job script's own status (for hpclab's script: ended, see
exit_state); negative values are PBS's own (JOB_EXEC_KILL_WALLTIME -29,
JOB_EXEC_KILL_MEM -27, JOB_EXEC_KILL_VMEM -26, ...); 256 + N when a signal N killed the
job, so 271 after qdel's SIGTERM (older servers also report walltime kills as 271);
anything else is the job script's own exit status.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..errors import ConfigError
from ..units import parse_duration
from .base import (
    Guarded,
    JobInfo,
    JobSpec,
    JobState,
    Scheduler,
    bad_output,
    gpu_request,
    guarded,
    hms,
    mem_mb,
)

# "qstat: Unknown Job Id 1234.server" (PBS Pro), "qstat: Unknown Job Id Error 1234.server" (Torque)
UNKNOWN_JOB = re.compile(r"Unknown Job Id(?: Error)?\s+(\S+)")
JOB_ID = re.compile(r"^[0-9]+(?:\[[0-9]*\])?(?:\.[A-Za-z0-9_.-]+)?$")


def parse_qsub(stdout: str, tool: str = "qsub") -> str:
    """qsub prints the job id ("1234.server") on its last line; warnings may come before it."""
    lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    if not lines or not JOB_ID.match(lines[-1]):
        raise bad_output(tool, "job id", stdout)
    return lines[-1]


def sequence(job_id: str) -> str:
    """The number that identifies a PBS job: qsub may print "1234.pbs01" where qstat says
    "1234.pbs01.example.org"."""
    return job_id.split(".", 1)[0]


def first_host(exec_host: str | None) -> str | None:
    """exec_host "node1/0*4+node2/0" -> "node1"."""
    if not exec_host:
        return None
    return exec_host.split("+")[0].split("/")[0].split(":")[0] or None


def seconds(text: Any) -> int | None:
    if text is None or text == "":
        return None
    try:
        return parse_duration(str(text))
    except ValueError:
        return None


def unknown_ids(stderr: str) -> set[str]:
    return {sequence(m.group(1)) for m in UNKNOWN_JOB.finditer(stderr)}


def exit_state(code: int | None, walltime: int = -29, memory: tuple[int, ...] = (-27, -26)) -> JobState:
    """A finished job's state from its exit status (see the module docstring)."""
    if code is None or code == 0:
        # 0 is the job script's own status, and hpclab's script exits 0 however Jupyter was
        # stopped: idle shutdown, qdel's SIGTERM (which it traps), its own timer. PBS keeps
        # no record of the qdel, so 0 says "ended", and the session's end marker says why.
        return JobState.ENDED
    if code == walltime:
        return JobState.TIMEOUT
    if code in memory:
        return JobState.OUT_OF_MEMORY
    if code >= 256:  # killed by a signal: qdel
        return JobState.CANCELLED
    return JobState.FAILED


class Pbs(Scheduler):
    name = "pbs"
    title = "PBS Pro"
    directive = "#PBS"
    submit = ("qsub",)
    cancel = ("qdel",)
    job_id_var = "${PBS_JOBID:-}"
    # PBS sends no signal before the walltime: the job script keeps its own timer.
    signals_before_end = False
    option_directives = {"partition": "-q {}", "account": "-A {}"}
    # exit statuses PBS gives a job it killed at its walltime or memory limit
    walltime_exit: ClassVar[int] = -29
    memory_exits: ClassVar[tuple[int, ...]] = (-27, -26)
    states: ClassVar[Mapping[str, JobState]] = {
        "Q": JobState.PENDING,  # queued
        "H": JobState.PENDING,  # held
        "W": JobState.PENDING,  # waiting for its start time
        "T": JobState.PENDING,  # in transit
        "M": JobState.PENDING,  # moved to another server
        "S": JobState.PENDING,  # suspended
        "U": JobState.PENDING,  # suspended while the workstation is busy
        "R": JobState.RUNNING,
        "E": JobState.RUNNING,  # exiting
        "B": JobState.RUNNING,  # an array job has begun
        "F": JobState.ENDED,  # finished: Exit_status says how
        "X": JobState.ENDED,  # a finished subjob
    }

    def resource_directives(self, spec: JobSpec) -> list[str]:
        select = "select=1"
        if spec.cpus:
            select += f":ncpus={spec.cpus}"
        if spec.mem:
            select += f":mem={mem_mb(spec.mem)}mb"
        if spec.gpus:
            kind, count = gpu_request(spec.gpus)
            if kind:
                raise ConfigError(
                    f"PBS has no standard way to ask for GPUs of type {kind!r}",
                    hint=f"set gpus = {count} and name the type the way the site does, e.g. skip_directives = "
                    f"['-l select'] and extra_directives = ['-l {select}:ngpus={count}:gpu_model={kind}']",
                )
            select += f":ngpus={count}"
        lines = [
            f"-N {spec.name}",
            f"-o {spec.output}",
            f"-e {spec.error}",
            "-j n",
            # d: write output straight to -o/-e while the job runs, not to the node's spool
            # (PBS Pro 19 and later; skip_directives = ['-k'] for an older server).
            "-k oed",
            # PBS runs the script with the user's login shell unless told otherwise.
            "-S /bin/bash",
            f"-l walltime={hms(spec.time)}",
            f"-l {select}",
        ]
        return lines

    def parse_submit(self, stdout: str) -> str:
        return parse_qsub(stdout)

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        # -x includes finished jobs (with their Exit_status) while the server keeps history.
        return guarded(["qstat", "-f", "-F", "json", "-x", *job_ids])

    def read_jobs(self, out: Guarded) -> Mapping[str, Any] | None:
        if not out.stdout.strip():
            return None if out.returncode is None else {}
        try:
            data = json.loads(out.stdout, strict=False)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        jobs = data.get("Jobs", {})
        return {sequence(k): v for k, v in jobs.items() if isinstance(v, dict)} if isinstance(jobs, dict) else None

    def job_key(self, job_id: str) -> str:
        return sequence(job_id)

    def gone(self, out: Guarded) -> set[str]:
        return unknown_ids(out.stderr)

    def job_info(self, job_id: str, job: Mapping[str, Any]) -> JobInfo:
        raw = str(job.get("job_state", ""))
        state = self.state(raw)
        code = job.get("Exit_status")
        if state is JobState.ENDED and code is not None:
            state = exit_state(_int(code), self.walltime_exit, self.memory_exits)
        requested = job.get("Resource_List") or {}
        used = job.get("resources_used") or {}
        left = None
        if state is JobState.RUNNING:
            limit, spent = seconds(requested.get("walltime")), seconds(used.get("walltime"))
            if limit is not None:
                left = max(0, limit - (spent or 0))
        estimated = job.get("estimated") or {}
        return JobInfo(
            job_id=job_id,
            state=state,
            node=first_host(job.get("exec_host")) if state is JobState.RUNNING else None,
            reason=(str(job.get("comment") or "") or None) if state is JobState.PENDING else None,
            start_time=(str(estimated.get("start_time") or "") or None) if state is JobState.PENDING else None,
            time_left=left,
            raw_state=raw if code is None else f"{raw} (Exit_status {code})",
        )


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
