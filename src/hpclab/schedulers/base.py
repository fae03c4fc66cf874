"""What hpclab needs from a batch scheduler, and the procedure that is the same for all.

A scheduler subclass is mostly data: its directive prefix, the argv that submits a script
read on stdin, the argv that cancels, the variable that holds the job id inside the job, a
map from its state names to JobState. It adds the few pure functions that differ: resource
directives, and parsers for the submit and status output (fed with captured real output in
tests/unit). No method here runs anything; cluster.py sends the argv through a Remote.
"""

from __future__ import annotations

import abc
import enum
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import SchedulerError
from ..units import mem_mb as mem_mb  # re-exported: the scheduler modules render memory with it


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


class Scheduler(abc.ABC):
    """A batch scheduler, mostly as data. The procedures (directives, submit, status, cancel)
    live here once; a subclass names its commands and states and reads its own formats."""

    name: ClassVar[str]
    title: ClassVar[str]
    directive: ClassVar[str]  # e.g. "#SBATCH"
    submit: ClassVar[tuple[str, ...]]  # argv; the script arrives on stdin
    cancel: ClassVar[tuple[str, ...]]
    job_id_var: ClassVar[str]  # shell expression for the job id inside the job
    states: ClassVar[Mapping[str, JobState]]
    # True when the scheduler itself sends SIGUSR1 before the time limit (a directive asks
    # for it); otherwise the job script sets its own timer.
    signals_before_end: ClassVar[bool] = False
    # Directives of the plain options, as format strings of the value: adding such an option
    # is one line here per scheduler. Resources that combine (cpus, mem, gpus) are rendered
    # by resource_directives().
    option_directives: ClassVar[Mapping[str, str]] = {}
    # Whether the status query is wrapped by guarded(): its exit status and stderr then follow
    # its stdout, and the parser, not the exit status, tells "gone" from "the query failed".
    guarded_status: ClassVar[bool] = True

    # -- rendering ---------------------------------------------------------------------

    @abc.abstractmethod
    def resource_directives(self, spec: JobSpec) -> list[str]:
        """Name, output files, time and resources, without the directive prefix."""

    def directives(self, spec: JobSpec) -> list[str]:
        """Directive lines, extra_directives appended, skip_directives dropped (a skip entry
        drops every generated line that starts with it, with or without the prefix)."""
        generated = self.resource_directives(spec)
        for key, form in self.option_directives.items():
            value = getattr(spec, key)
            if value:
                generated.append(form.format(value))
        lines = [f"{self.directive} {d}" for d in generated]
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

    # -- submit ------------------------------------------------------------------------

    @abc.abstractmethod
    def parse_submit(self, stdout: str) -> str:
        """The job id from what the submit command printed; SchedulerError if there is none."""

    # -- status ------------------------------------------------------------------------

    @abc.abstractmethod
    def status_argv(self, job_ids: Sequence[str]) -> list[str]:
        """One query for all of `job_ids` (guarded() when guarded_status)."""

    @abc.abstractmethod
    def read_jobs(self, out: Guarded) -> Mapping[str, Any] | None:
        """The query's jobs by their key (see job_key), in whatever form job_info() reads;
        None when the output cannot be read (the query failed: ask again)."""

    @abc.abstractmethod
    def job_info(self, job_id: str, job: Any) -> JobInfo:
        """One job's JobInfo from its entry in read_jobs()."""

    def job_key(self, job_id: str) -> str:
        """How read_jobs() keys a job (PBS matches on the sequence number)."""
        return job_id

    def gone(self, out: Guarded) -> set[str]:
        """Keys of jobs the query says it does not know (they have left the queue)."""
        return set()

    def complete(self, out: Guarded) -> bool:
        """True when a job the output does not mention has surely ended."""
        return out.returncode == 0

    def parse_status(self, stdout: str, job_ids: Iterable[str]) -> dict[str, JobInfo]:
        """JobInfo for each of `job_ids`: as the query shows it; ENDED when the query knows it
        no more; UNKNOWN when the query failed ("ask again", never "gone")."""
        out = split_guarded(stdout) if self.guarded_status else Guarded(stdout, "", 0)
        jobs = self.read_jobs(out)
        gone = self.gone(out)
        found: dict[str, JobInfo] = {}
        for job_id in job_ids:
            key = self.job_key(job_id)
            if jobs is not None and key in jobs:
                found[job_id] = self.job_info(job_id, jobs[key])
            elif key in gone or (jobs is not None and self.complete(out)):
                found[job_id] = JobInfo(job_id=job_id, state=JobState.ENDED)
            else:
                found[job_id] = JobInfo(job_id=job_id, state=JobState.UNKNOWN)
        return found

    def state(self, raw: str) -> JobState:
        return self.states.get(raw.strip().upper(), JobState.UNKNOWN)

    # -- ended jobs and strays ----------------------------------------------------------

    def final_argv(self, job_id: str) -> list[str] | None:
        """A query for the final state of an ended job (accounting), or None if there is none."""
        return None

    def parse_final(self, stdout: str, job_id: str) -> JobInfo | None:
        return None

    def tagged_argv(self) -> list[str] | None:
        """A query that lists the user's queued and running jobs as "ID|NAME" lines, to find
        hpclab's jobs by their name; None where the scheduler cannot list names."""
        return None

    def parse_tagged(self, stdout: str) -> list[tuple[str, str]]:
        """(session id, job id) of every job whose name is exactly hpclab's tag: "hpclab-"
        and a session id (8 hex digits). Anything else, `hpclab-../x` included, is not ours."""
        found = []
        for line in stdout.splitlines():
            job_id, _, name = line.strip().partition("|")
            m = TAG.fullmatch(name)
            if m and job_id:
                found.append((m.group(1), job_id))
        return found


# hpclab's job name: "hpclab-" and the session id, as JobSpec.name makes it
TAG = re.compile(r"hpclab-([0-9a-f]{8})")


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


def gpu_request(gpus: str) -> tuple[str | None, int]:
    """'2' -> (None, 2); 'a100:2' -> ('a100', 2)."""
    kind, _, count = gpus.rpartition(":")
    return (kind or None), int(count)


def hms(seconds: int) -> str:
    """Seconds as H:MM:SS with hours past 24 ("48:00:00"): the form qsub's walltime and h_rt take."""
    s = max(0, int(seconds))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"
