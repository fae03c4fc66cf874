"""No scheduler: Jupyter runs on `host` itself (a workstation, a node already allocated).

The "job" is the job script started in the background in a session of its own (setsid),
stdin from /dev/null and its output in the session's files, so that it outlives the SSH
command that started it; its pid is the job id and its process group is what cancel
signals. Nothing sends a signal before the time limit: the script keeps its own timer.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import ClassVar

from .base import Guarded, JobInfo, JobSpec, JobState, Scheduler, bad_output, guarded

# What `ps -o args=` shows for the script: it tells our process from a reused pid.
SCRIPT_MARK = ".hpclab/sessions/"


class NoScheduler(Scheduler):
    name = "none"
    title = "no scheduler"
    directive = "#"
    submit = ("setsid",)
    # `env kill`: the system's kill, not the login shell's builtin (dash and tcsh refuse "--",
    # and dash a negative pid, so the process group would survive a cancel there)
    cancel = ("env", "kill", "-TERM", "--")
    job_id_var = "$$"
    signals_before_end = False
    states: ClassVar[Mapping[str, JobState]] = {
        "R": JobState.RUNNING,
        "S": JobState.RUNNING,
        "D": JobState.RUNNING,
        "T": JobState.RUNNING,  # stopped, still there
        "t": JobState.RUNNING,
        "I": JobState.RUNNING,
        "Z": JobState.ENDED,  # exited, not yet reaped
        "X": JobState.ENDED,
    }

    def resource_directives(self, spec: JobSpec) -> list[str]:
        return []

    def directives(self, spec: JobSpec) -> list[str]:
        """No directives: the script itself sends its output to the spec's files (paths
        relative to $HOME), which a scheduler would otherwise open for it."""
        return [f'exec </dev/null >>"$HOME"/{shlex.quote(spec.output)} 2>>"$HOME"/{shlex.quote(spec.error)}']

    def submit_shell(self, script: str) -> str:
        """Start `script` in the background in a session of its own, every descriptor away from
        the SSH channel, and print its pid. One line without '!' (so no $!): the job writes its
        own pid next to the script, and this waits for that file (30 s at most)."""
        pid = f"{script}.pid"
        return (
            f"setsid sh -c 'echo $$ > \"$1.pid\" && exec bash \"$1\"' hpclab {script} </dev/null >/dev/null 2>&1 & "
            f'i=0; until [ -s {pid} ] || [ "$i" -ge 300 ]; do sleep 0.1 2>/dev/null || sleep 1; i=$((i+1)); done; '
            f"cat {pid}"
        )

    def cancel_argv(self, job_id: str) -> list[str]:
        return [*self.cancel, f"-{job_id}"]  # the whole process group: bash, jupyter, kernels

    def parse_submit(self, stdout: str) -> str:
        lines = [ln.strip() for ln in stdout.splitlines() if ln.strip()]
        if not lines or not lines[-1].isdigit():
            raise bad_output("the job start", "process id", stdout)
        return lines[-1]

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        # ps exits 1 when none of the pids exists: the guard keeps that apart from a failure.
        # -ww: the whole command line, however long the path (ps cuts it to 80 columns otherwise)
        return guarded(["ps", "-ww", "-o", "pid=,stat=,args=", "-p", ",".join(job_ids) or "0"])

    def read_jobs(self, out: Guarded) -> Mapping[str, str]:
        seen: dict[str, str] = {}
        for line in out.stdout.splitlines():
            parts = line.split(None, 2)
            if len(parts) == 3 and SCRIPT_MARK in parts[2]:
                seen[parts[0]] = parts[1]
        return seen

    def complete(self, out: Guarded) -> bool:
        # ps: 0 = some found, 1 = none found; anything else (or no guard) = ask again
        return out.returncode in (0, 1) and not out.stderr.strip()

    def job_info(self, job_id: str, job: str) -> JobInfo:
        return JobInfo(job_id=job_id, state=self.state(job[:1]), raw_state=job)

    def state(self, raw: str) -> JobState:
        return self.states.get(raw.strip()[:1], JobState.UNKNOWN)
