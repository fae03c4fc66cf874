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
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from ..errors import ConfigError
from .base import Guarded, JobInfo, JobSpec, JobState, gpu_request, guarded, hms, mem_mb
from .pbs import Pbs, exit_state, first_host, seconds, sequence


class Torque(Pbs):
    """What Torque shares with PBS Pro (qsub, qdel, the job id, "Unknown Job Id" for a job
    it no longer knows) is inherited; the status format, states, exit codes and resource
    syntax are its own."""

    name = "torque"
    title = "Torque"
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
    walltime_exit = -11
    memory_exits = (-10,)

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
        return lines

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        # Torque's -x is XML (not PBS Pro's "history"); one query for all ids.
        return guarded(["qstat", "-x", *job_ids])

    def read_jobs(self, out: Guarded) -> Mapping[str, ET.Element] | None:
        text = out.stdout.strip()
        if not text:
            return None if out.returncode is None else {}
        try:
            root = ET.fromstring(text)
        except ET.ParseError:
            return None
        return {sequence(j.findtext("Job_Id", "")): j for j in root.iter("Job")}

    def job_info(self, job_id: str, job: Any) -> JobInfo:
        raw = (job.findtext("job_state") or "").strip()
        state = self.state(raw)
        code_text = job.findtext("exit_status")
        if state is JobState.ENDED and code_text is not None:
            with contextlib.suppress(ValueError):
                state = exit_state(int(code_text), self.walltime_exit, self.memory_exits)
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

