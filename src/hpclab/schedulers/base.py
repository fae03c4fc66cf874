"""What hpclab needs from a batch scheduler, and the procedure that is the same for all.

A scheduler subclass is mostly data: its directive prefix, the argv that submits a script
read on stdin, the argv that cancels, the variable that holds the job id inside the job, a
map from its state names to JobState. It adds the few pure functions that differ: resource
directives, and parsers for the submit and status output (fed with captured real output in
tests/unit). No method here runs anything; session.py sends the argv through a Remote.
"""

from __future__ import annotations

import enum
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from ..errors import SchedulerError


class JobState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    NODE_FAIL = "node_fail"
    OUT_OF_MEMORY = "out_of_memory"
    ENDED = "ended"  # gone from the scheduler, reason unknown
    UNKNOWN = "unknown"  # the query failed or said nothing useful: ask again later

    @property
    def ended(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING, JobState.UNKNOWN)

    @property
    def reason(self) -> str:
        return {
            JobState.COMPLETED: "the job finished",
            JobState.FAILED: "the job failed",
            JobState.CANCELLED: "the job was cancelled",
            JobState.TIMEOUT: "time limit reached",
            JobState.NODE_FAIL: "the compute node failed",
            JobState.OUT_OF_MEMORY: "the job ran out of memory",
            JobState.ENDED: "the job has ended",
        }.get(self, self.value)


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: JobState
    node: str | None = None
    reason: str | None = None  # why it is pending, as the scheduler says it
    start_time: str | None = None  # estimated start while pending, as the scheduler prints it
    time_left: int | None = None  # seconds, while running
    raw_state: str = ""


@dataclass(frozen=True)
class JobSpec:
    """Everything a scheduler needs to render its directives. Paths are relative to $HOME."""

    session_id: str
    time: int  # seconds
    output: str
    error: str
    partition: str | None = None
    account: str | None = None
    cpus: int | None = None
    mem: str | None = None
    gpus: str | None = None
    signal_before: int = 90  # seconds before the time limit at which the job gets SIGUSR1
    extra_directives: tuple[str, ...] = ()
    skip_directives: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return f"hpclab-{self.session_id}"


class Scheduler:
    name: ClassVar[str]
    title: ClassVar[str]
    directive: ClassVar[str]  # e.g. "#SBATCH"
    submit: ClassVar[tuple[str, ...]]  # argv; the script arrives on stdin
    cancel: ClassVar[tuple[str, ...]]
    job_id_var: ClassVar[str]  # shell expression for the job id inside the job
    states: ClassVar[Mapping[str, JobState]]
    # commands whose presence on the login node identifies this scheduler, in order of trust
    probe: ClassVar[tuple[str, ...]] = ()
    # True when the scheduler itself sends SIGUSR1 before the time limit (a directive asks
    # for it); otherwise the job script sets its own timer.
    signals_before_end: ClassVar[bool] = False

    # -- rendering ---------------------------------------------------------------------

    def resource_directives(self, spec: JobSpec) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def directives(self, spec: JobSpec) -> list[str]:
        """Directive lines, extra_directives appended, skip_directives dropped (a skip entry
        drops every generated line that starts with it, with or without the prefix)."""
        lines = [f"{self.directive} {d}" for d in self.resource_directives(spec)]
        lines += [
            d if d.startswith(self.directive) else f"{self.directive} {d}" for d in spec.extra_directives
        ]
        skips = [s if s.startswith(self.directive) else f"{self.directive} {s}" for s in spec.skip_directives]
        return [ln for ln in lines if not any(ln.startswith(s) for s in skips)]

    def submit_shell(self, script: str) -> str:
        """Shell text (run in $HOME) that submits the job script stored at `script`."""
        return f"{shlex.join(self.submit)} < {script}"

    def cancel_argv(self, job_id: str) -> list[str]:
        return [*self.cancel, job_id]

    # -- parsing -----------------------------------------------------------------------

    def parse_submit(self, stdout: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def status_argv(self, job_ids: Sequence[str]) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def parse_status(self, stdout: str, job_ids: Iterable[str]) -> dict[str, JobInfo]:  # pragma: no cover
        """JobInfo for each of `job_ids`; a job the output does not mention is ENDED."""
        raise NotImplementedError

    def final_argv(self, job_id: str) -> list[str] | None:
        """A query for the final state of an ended job (accounting), or None if there is none."""
        return None

    def parse_final(self, stdout: str, job_id: str) -> JobInfo | None:
        return None

    def state(self, raw: str) -> JobState:
        return self.states.get(raw.strip().upper(), JobState.UNKNOWN)


def bad_output(scheduler: str, what: str, text: str) -> SchedulerError:
    return SchedulerError(
        f"could not read the {what} from {scheduler}'s output",
        hint=f"it said: {text.strip()[:300] or '(nothing)'}",
        stdout=text,
    )
