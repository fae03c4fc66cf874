"""Torque (with Moab or Maui): qsub, qstat -x (XML), qdel.

exit_status of a completed job (job_state C), from Adaptive Computing's documentation
("Job exit status"): 0 is the job script's own status (ended, as for PBS); Torque's own
negative codes (-10 memory limit, -11 walltime limit, -12 CPU time limit, -1 to -9 and
-13, -14 failures to start); 271 (256 + SIGTERM) for a running job that qdel's signal
killed; anything else is the job script's own exit status. A completed job stays visible
for the server's keep_completed seconds, then qstat says "Unknown Job Id".
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

from ..errors import ConfigError
from .base import JobInfo, JobSpec, JobState, Scheduler, gpu_request, guarded, hms, mem_mb, split_guarded
from .pbs import exit_state, first_host, parse_qsub, seconds, sequence, unknown_ids


class Torque(Scheduler):
    name = "torque"
    title = "Torque"
    directive = "#PBS"
    submit = ("qsub",)
    cancel = ("qdel",)
    job_id_var = "${PBS_JOBID:-}"
    probe = ("qsub", "qstat")
    # Only Moab's "-l signal=" asks for a signal before the end, and pbs_sched/Maui ignore
    # it: the job script keeps its own timer.
    signals_before_end = False
    states: ClassVar[Mapping[str, JobState]] = {
        "Q": JobState.PENDING,
        "H": JobState.PENDING,
        "W": JobState.PENDING,
        "T": JobState.PENDING,
        "S": JobState.PENDING,  # suspended
        "R": JobState.RUNNING,
        "E": JobState.RUNNING,  # exiting
        "C": JobState.ENDED,  # completed: exit_status says how
    }

    def resource_directives(self, spec: JobSpec) -> list[str]:
        nodes = f"nodes=1:ppn={spec.cpus or 1}"
        if spec.gpus:
            kind, count = gpu_request(spec.gpus)
            if kind:
                raise ConfigError(
                    f"Torque has no standard way to ask for GPUs of type {kind!r}",
                    hint=f"set gpus = {count} and add the site's node property, e.g. "
                    f"skip_directives = ['-l nodes'] and extra_directives = ['-l {nodes}:gpus={count}:{kind}']",
                )
            nodes += f":gpus={count}"
        lines = [
            f"-N {spec.name}",
            f"-o {spec.output}",
            f"-e {spec.error}",
            "-j n",
            # Torque runs the script with the user's login shell unless told otherwise.
            "-S /bin/bash",
            f"-l walltime={hms(spec.time)}",
            f"-l {nodes}",
        ]
        if spec.mem:
            lines.append(f"-l mem={mem_mb(spec.mem)}mb")
        if spec.partition:
            lines.append(f"-q {spec.partition}")
        if spec.account:
            lines.append(f"-A {spec.account}")
        return lines

    def parse_submit(self, stdout: str) -> str:
        return parse_qsub(stdout)

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        # Torque's -x is XML (not PBS Pro's "history"); one query for all ids.
        return guarded(["qstat", "-x", *job_ids])

    def parse_status(self, stdout: str, job_ids: Iterable[str]) -> dict[str, JobInfo]:
        wanted = list(job_ids)
        out = split_guarded(stdout)
        jobs: dict[str, ET.Element] | None = None
        text = out.stdout.strip()
        if text:
            try:
                root = ET.fromstring(text)
                jobs = {sequence(j.findtext("Job_Id", "")): j for j in root.iter("Job")}
            except ET.ParseError:
                jobs = None
        elif out.returncode is not None:
            jobs = {}
        gone = unknown_ids(out.stderr)
        found: dict[str, JobInfo] = {}
        for job_id in wanted:
            seq = sequence(job_id)
            if jobs is not None and seq in jobs:
                found[job_id] = self._info(job_id, jobs[seq])
            elif seq in gone or (jobs is not None and out.returncode == 0):
                found[job_id] = JobInfo(job_id=job_id, state=JobState.ENDED)
            else:
                found[job_id] = JobInfo(job_id=job_id, state=JobState.UNKNOWN)
        return found

    def _info(self, job_id: str, job: ET.Element) -> JobInfo:
        raw = (job.findtext("job_state") or "").strip()
        state = self.state(raw)
        code_text = job.findtext("exit_status")
        if state is JobState.ENDED and code_text is not None:
            with contextlib.suppress(ValueError):
                state = exit_state(int(code_text), walltime=-11, memory=(-10,))
        left = None
        if state is JobState.RUNNING:
            remaining = job.findtext("Walltime/Remaining")
            if remaining and remaining.strip().lstrip("-").isdigit():
                left = max(0, int(remaining))
            else:
                limit = seconds(job.findtext("Resource_List/walltime"))
                spent = seconds(job.findtext("resources_used/walltime"))
                if limit is not None:
                    left = max(0, limit - (spent or 0))
        comment = (job.findtext("comment") or "").strip() or None
        return JobInfo(
            job_id=job_id,
            state=state,
            node=first_host(job.findtext("exec_host")) if state is JobState.RUNNING else None,
            reason=comment if state is JobState.PENDING else None,
            time_left=left,
            raw_state=raw if code_text is None else f"{raw} (exit_status {code_text})",
        )

