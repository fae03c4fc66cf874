"""What hpclab needs from a batch scheduler, and the procedure that is the same for all.

A scheduler subclass is mostly data: its directive prefix, the argv that submits a script
read on stdin, the argv that cancels, the variable that holds the job id inside the job, a
map from its state names to JobState. It adds the few pure functions that differ: resource
directives, and parsers for the submit and status output (fed with captured real output in
tests/unit). No method here runs anything; session.py sends the argv through a Remote.
"""

from __future__ import annotations

import enum
import re
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
        skips = [s if s.startswith(self.directive) else f"{self.directive} {s}" for s in spec.skip_directives]
        # the skips apply to generated lines only: a site replaces "-pe smp 8" with "-pe threads 8"
        lines = [ln for ln in lines if not any(ln.startswith(s) for s in skips)]
        return lines + [
            d if d.startswith(self.directive) else f"{self.directive} {d}" for d in spec.extra_directives
        ]

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


# -- shared by the scheduler modules ------------------------------------------------------

# Status queries run inside this one-line sh: the query's own exit status and stderr come
# after its stdout, behind a marker, and the wrapper exits 0. qstat and bjobs exit non-zero
# when one of several ids is unknown (the job has left the queue), yet print what they know of
# the others: the parser, not the exit status, tells "gone" from "the query failed".
GUARD_MARK = "@@hpclab-guard"
_GUARD = '{ e=$("$@" 2>&1 >&3); r=$?; } 3>&1; printf "\\n%s %s\\n%s\\n" "' + GUARD_MARK + '" "$r" "$e"'


def guarded(argv: Sequence[str]) -> list[str]:
    """`argv` wrapped so that its exit status and stderr follow its stdout (see split_guarded)."""
    return ["sh", "-c", _GUARD, "hpclab", *argv]


@dataclass(frozen=True)
class Guarded:
    stdout: str
    stderr: str
    returncode: int | None  # None: the marker is missing, the wrapper did not finish


def split_guarded(text: str) -> Guarded:
    head, sep, tail = text.rpartition("\n" + GUARD_MARK + " ")
    if not sep:
        if text.startswith(GUARD_MARK + " "):
            head, tail = "", text[len(GUARD_MARK) + 1:]
        else:
            return Guarded(text, "", None)
    code, _, stderr = tail.partition("\n")
    try:
        rc: int | None = int(code.strip())
    except ValueError:
        rc = None
    return Guarded(head, stderr.strip("\n"), rc)


_MEM = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([KMGT]?)B?$", re.IGNORECASE)
_MEM_UNIT = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}


def mem_mb(mem: str) -> int:
    """'4G', '500M', '16GB', '1.5G', '2048' (megabytes, as sbatch reads a bare number) in whole MiB."""
    m = _MEM.match(mem.strip())
    if not m:
        raise ValueError(f"cannot read {mem!r} as an amount of memory")
    value = float(m.group(1)) * _MEM_UNIT[m.group(2).upper()]
    return max(1, int(-(-value // 1)))


def gpu_request(gpus: str) -> tuple[str | None, int]:
    """'2' -> (None, 2); 'a100:2' -> ('a100', 2)."""
    kind, _, count = gpus.rpartition(":")
    return (kind or None), int(count)


def hms(seconds: int) -> str:
    """Seconds as H:MM:SS with hours past 24 ("48:00:00"): the form qsub's walltime and h_rt take."""
    s = max(0, int(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
