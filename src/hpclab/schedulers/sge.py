"""Grid Engine (Son of Grid Engine 8.1, Open/Univa/Altair Grid Engine): qsub -terse,
qstat -xml, qdel, qacct.

A job that has ended leaves qstat at once; qacct -j reads its accounting record, whose
`failed` and `exit_status` fields sge_status(5) explains: failed 0 and exit_status 0 is
success, failed 37 "qmaster enforced h_rt, h_cpu, or h_vmem limit", failed 100 "ran, but
killed by a signal" (qdel, or a limit the execd enforced) with exit_status 128 + signal.

Parallel environments are site specific: cpus > 1 asks for `-pe smp N`; a site whose PE
has another name drops it with skip_directives = ["-pe"] and adds its own with
extra_directives = ["-pe threads 8"]. The same goes for GPUs, which Grid Engine knows only
as a site-defined consumable.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import ClassVar

from ..errors import ConfigError
from .base import Guarded, JobInfo, JobSpec, JobState, Scheduler, bad_output, guarded, hms, mem_mb


class Sge(Scheduler):
    name = "sge"
    title = "Grid Engine"
    directive = "#$"
    submit = ("qsub", "-terse")
    cancel = ("qdel",)
    job_id_var = "${JOB_ID:-}"
    # s_rt would send SIGUSR1 before h_rt, but to every process of the job, kernels
    # included; -notify only warns before a suspend or a kill. The job keeps its own timer.
    signals_before_end = False
    option_directives = {"partition": "-q {}", "account": "-P {}"}
    # The common codes; state() reads the letters of any combination (sge_status(5)).
    states: ClassVar[Mapping[str, JobState]] = {
        "qw": JobState.PENDING,
        "hqw": JobState.PENDING,
        "hRwq": JobState.PENDING,
        "Rq": JobState.PENDING,
        "r": JobState.RUNNING,
        "t": JobState.RUNNING,
        "Rr": JobState.RUNNING,
        "Rt": JobState.RUNNING,
        "hr": JobState.RUNNING,
        "dr": JobState.RUNNING,  # being deleted
        "s": JobState.PENDING,  # suspended, like SLURM's SUSPENDED
        "S": JobState.PENDING,
        "T": JobState.PENDING,
        "Eqw": JobState.FAILED,  # an error keeps it queued until someone clears or deletes it
        "Ehqw": JobState.FAILED,
        # zombie: finished, how is for qacct to say (ENDED makes the caller ask it)
        "z": JobState.ENDED,
    }

    def resource_directives(self, spec: JobSpec) -> list[str]:
        if spec.gpus:
            raise ConfigError(
                "Grid Engine has no standard GPU request",
                hint="leave gpus unset and ask the way the site does, e.g. extra_directives = ['-l gpu=1']",
            )
        lines = [
            f"-N {spec.name}",
            # relative to the job's working directory, $HOME (no -cwd)
            f"-o {spec.output}",
            f"-e {spec.error}",
            "-j n",
            # The queue's shell (often csh) would run the script otherwise.
            "-S /bin/bash",
            f"-l h_rt={hms(spec.time)}",
        ]
        cpus = spec.cpus or 1
        if cpus > 1:
            lines.append(f"-pe smp {cpus}")
        if spec.mem:
            # h_vmem is per slot: divide the job's memory among them
            lines.append(f"-l h_vmem={math.ceil(mem_mb(spec.mem) / cpus)}M")
        return lines

    def parse_submit(self, stdout: str) -> str:
        # -terse prints "42", or "42.1-10:1" for an array
        lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
        job_id = lines[-1].split(".")[0] if lines else ""
        if not job_id.isdigit():
            raise bad_output("qsub", "job id", stdout)
        return job_id

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        # qstat takes no list of ids in this form: one query for the user's jobs, filtered here.
        return guarded(["qstat", "-xml"])

    def read_jobs(self, out: Guarded) -> Mapping[str, ET.Element] | None:
        # qstat -xml exits 0 with the user's jobs; anything else is a failed query
        if not (out.returncode == 0 or (out.returncode is None and out.stdout.strip())):
            return None
        try:
            root = ET.fromstring(out.stdout.strip())
        except ET.ParseError:
            return None
        return {(j.findtext("JB_job_number") or "").strip(): j for j in root.iter("job_list")}

    def job_info(self, job_id: str, job: ET.Element) -> JobInfo:
        raw = (job.findtext("state") or "").strip()
        state = self.state(raw)
        queue = (job.findtext("queue_name") or "").strip()
        return JobInfo(
            job_id=job_id,
            state=state,
            node=(queue.partition("@")[2] or None) if state is JobState.RUNNING else None,
            raw_state=raw,
        )

    def state(self, raw: str) -> JobState:
        raw = raw.strip()
        if raw in self.states:
            return self.states[raw]
        if not raw or set(raw) - set("qwhrtRsSTEdz"):
            return JobState.UNKNOWN
        if "E" in raw:
            return JobState.FAILED
        if any(c in raw for c in "sST"):  # suspended (ts, Rs, dS ...): not usable, not over
            return JobState.PENDING
        if "z" in raw:
            return JobState.ENDED
        if "r" in raw or "t" in raw:
            return JobState.RUNNING
        if "q" in raw or "w" in raw:
            return JobState.PENDING
        return JobState.UNKNOWN

    def final_argv(self, job_id: str) -> list[str] | None:
        return ["qacct", "-j", job_id]

    def parse_final(self, stdout: str, job_id: str) -> JobInfo | None:
        fields: dict[str, str] = {}
        for line in stdout.splitlines():
            key, _, value = line.strip().partition(" ")
            if key == "jobnumber" and fields.get("jobnumber") not in (None, job_id):
                fields = {}
            fields.setdefault(key, value.strip())
        if fields.get("jobnumber") != job_id or "failed" not in fields:
            return None
        failed = fields["failed"].split(":")[0].strip()
        exit_status = fields.get("exit_status", "").split()[0] if fields.get("exit_status") else ""
        if failed == "0" and exit_status == "0":
            state = JobState.COMPLETED
        elif failed == "37":
            state = JobState.TIMEOUT
        elif failed in ("17", "100") and exit_status in ("137", "143"):
            state = JobState.CANCELLED  # SIGKILL/SIGTERM: qdel (or a limit the execd enforced)
        else:
            state = JobState.FAILED
        return JobInfo(
            job_id=job_id,
            state=state,
            node=(fields.get("hostname") or None),
            raw_state=f"failed {fields['failed']}, exit_status {fields.get('exit_status', '?')}",
        )
