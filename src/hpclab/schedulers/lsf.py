"""IBM Spectrum LSF (and OpenLava-derived schedulers with the same commands): bsub < script,
bjobs -o ... -json, bkill.

bjobs shows a finished job (DONE, EXIT) for CLEAN_PERIOD (an hour by default) when asked
by id. EXIT_REASON says why an EXIT job ended ("TERM_OWNER: job killed by owner",
"TERM_RUNLIMIT: job killed after reaching LSF run time limit", "TERM_MEMLIMIT: ...").
bkill sends SIGINT, SIGTERM, then SIGKILL: a killed job's EXIT_CODE is often 130.

Memory: rusage[mem=] and -M carry an explicit unit (MB) so that LSF_UNIT_FOR_LIMITS does
not matter; whether they count per slot or per job is the site's RESOURCE_RESERVE_PER_TASK.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from .base import Guarded, JobInfo, JobSpec, JobState, Scheduler, bad_output, gpu_request, guarded, mem_mb

FIELDS = "jobid stat exec_host pend_reason time_left exit_code exit_reason"
SUBMITTED = re.compile(r"Job <([0-9]+)> is submitted")
NOT_FOUND = re.compile(r"Job <([0-9]+)(?:\[[0-9]+\])?> is not found")


class Lsf(Scheduler):
    name = "lsf"
    title = "LSF"
    directive = "#BSUB"
    submit = ("bsub",)  # bsub < script: the directives are read from the script on stdin
    cancel = ("bkill",)
    job_id_var = "${LSB_JOBID:-}"
    # LSF's own warning (-wa USR1 -wt MINUTES) goes to every process of the job, kernels
    # included, and a kernel dies of SIGUSR1: the job script keeps its own timer instead.
    signals_before_end = False
    option_directives = {"partition": "-q {}", "account": "-P {}"}
    states: ClassVar[Mapping[str, JobState]] = {
        "PEND": JobState.PENDING,
        "PSUSP": JobState.PENDING,
        "WAIT": JobState.PENDING,  # a chunk job waiting for its turn
        "PROV": JobState.PENDING,  # its host is being provisioned
        "RUN": JobState.RUNNING,
        # suspended after dispatch (bstop, or by LSF for load or preemption): the lab does not
        # answer but the job is not over, as SLURM's SUSPENDED and PBS's S
        "USUSP": JobState.PENDING,
        "SSUSP": JobState.PENDING,
        "DONE": JobState.COMPLETED,
        "EXIT": JobState.FAILED,  # EXIT_REASON / EXIT_CODE refine it
        "ZOMBI": JobState.ENDED,  # killed while its host was unreachable
        "UNKWN": JobState.UNKNOWN,
    }

    def resource_directives(self, spec: JobSpec) -> list[str]:
        minutes = math.ceil(spec.time / 60)
        lines = [
            f"-J {spec.name}",
            f"-o {spec.output}",
            f"-e {spec.error}",
            f"-W {minutes // 60}:{minutes % 60:02d}",
            f"-n {spec.cpus or 1}",
            '-R "span[hosts=1]"',
        ]
        if spec.mem:
            mb = mem_mb(spec.mem)
            lines += [f'-R "rusage[mem={mb}MB]"', f"-M {mb}MB"]
        if spec.gpus:
            kind, count = gpu_request(spec.gpus)
            lines.append(f'-gpu "num={count}' + (f":gmodel={kind}" if kind else "") + '"')
        return lines

    def parse_submit(self, stdout: str) -> str:
        # "Job <1234> is submitted to queue <normal>." or "... to default queue <normal>."
        m = SUBMITTED.search(stdout)
        if not m:
            raise bad_output("bsub", "job id", stdout)
        return m.group(1)

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        return guarded(["bjobs", "-o", FIELDS, "-json", *job_ids])

    def read_jobs(self, out: Guarded) -> Mapping[str, Mapping[str, Any]] | None:
        text = out.stdout.strip()
        if not text:
            return None if out.returncode is None else {}
        try:
            data = json.loads(text, strict=False)
            records = [r for r in data.get("RECORDS", []) if isinstance(r, dict)]
        except (ValueError, AttributeError):
            return None
        # a record with ERROR ("Job <12> is not found") is no job: gone() reads it
        return {str(r.get("JOBID", "")).strip(): r for r in records if r.get("JOBID") and not r.get("ERROR")}

    def gone(self, out: Guarded) -> set[str]:
        found = set(NOT_FOUND.findall(out.stderr))
        with contextlib.suppress(ValueError, AttributeError):
            for record in json.loads(out.stdout.strip() or "{}", strict=False).get("RECORDS", []):
                if isinstance(record, dict):
                    found.update(NOT_FOUND.findall(str(record.get("ERROR", ""))))
        return found

    def job_info(self, job_id: str, rec: Mapping[str, Any]) -> JobInfo:
        raw = str(rec.get("STAT", "")).strip()
        state = self.state(raw)
        reason = str(rec.get("EXIT_REASON") or "").strip()
        if raw == "EXIT":
            state = exit_state(reason, str(rec.get("EXIT_CODE") or "").strip())
        pend = str(rec.get("PEND_REASON") or "").strip().rstrip(";").strip()
        return JobInfo(
            job_id=job_id,
            state=state,
            node=first_host(str(rec.get("EXEC_HOST") or "")) if state is JobState.RUNNING else None,
            reason=(pend or None) if state is JobState.PENDING else None,
            time_left=time_left(str(rec.get("TIME_LEFT") or "")) if state is JobState.RUNNING else None,
            raw_state=f"{raw} ({reason})" if reason else raw,
        )


def exit_state(reason: str, exit_code: str) -> JobState:
    word = reason.split(":")[0].strip().upper()
    if word in ("TERM_OWNER", "TERM_ADMIN", "TERM_FORCE_OWNER", "TERM_FORCE_ADMIN", "TERM_REQUEUE_OWNER",
                "TERM_REQUEUE_ADMIN"):
        return JobState.CANCELLED
    if word in ("TERM_RUNLIMIT", "TERM_DEADLINE"):
        return JobState.TIMEOUT
    if word in ("TERM_MEMLIMIT", "TERM_SWAP"):
        return JobState.OUT_OF_MEMORY
    if word in ("TERM_HOST", "TERM_LOAD", "TERM_ZOMBIE"):
        return JobState.NODE_FAIL
    if not word and exit_code == "130":  # SIGINT, bkill's first signal
        return JobState.CANCELLED
    return JobState.FAILED


def first_host(exec_host: str) -> str | None:
    """EXEC_HOST "4*node1:2*node2" or "node1:node1" -> "node1"."""
    first = exec_host.strip().split(":")[0].split()[0] if exec_host.strip() else ""
    return first.split("*")[-1] or None


def time_left(text: str) -> int | None:
    """TIME_LEFT "1:29 L" (run limit) or "0:05 E" (estimate): hours:minutes."""
    m = re.match(r"^\s*([0-9]+):([0-9]{2})", text)
    if not m:
        return None
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60
