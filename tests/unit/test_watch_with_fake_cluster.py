"""Watch's decisions with a FAKE cluster and clock (the real thing is in tests/e2e/test_sessions.py):
walltime warnings, a lost login node is retried rather than fatal, an ended job says why."""

from __future__ import annotations

from typing import Any

import pytest

from hpclab.cluster import Snapshot
from hpclab.errors import JobEndedError, LoginRefused, MasterGone, TimeLimitError, Unreachable
from hpclab.schedulers import JobInfo, JobState
from hpclab.sessiondir import Ended
from hpclab.state import SessionRecord
from hpclab.watch import Watch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeLogin:
    host = "login"

    def alive(self) -> bool:
        return True

    def connect(self) -> None:
        pass


class FakeCluster:
    """Answers status queries from a script of (state, time_left) or exceptions."""

    def __init__(self, answers: list[Any], ended: Ended | None = None) -> None:
        self.answers = answers
        self.ended_marker = ended
        self.login = FakeLogin()
        self.queries = 0

    def status(self, job_ids: list[str]) -> dict[str, JobInfo]:
        self.queries += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            answer = answer()
        state, left = answer
        return {job_ids[0]: JobInfo(job_ids[0], state, node="node1", time_left=left, raw_state=state.name)}

    def final_state(self, info: JobInfo) -> JobInfo:
        return info

    def poll(self, *args: Any) -> Snapshot:
        return Snapshot(None, None, self.ended_marker, None)


def watch(cluster: FakeCluster, clock: Clock, reports: list[tuple[str, str]]) -> Watch:
    rec = SessionRecord(id="s1", profile="p", host="login", ssh_options=[], scheduler="slurm", job_id="7",
                        node="node1", local_port=1, token="t")
    return Watch(rec, cluster, report=lambda p, d: reports.append((p, d)),  # type: ignore[arg-type]
                 warnings=(600, 120), clock=clock, sleep=clock.sleep, lab_probe=lambda port, token: 200)


def test_warnings_then_time_limit() -> None:
    clock, reports = Clock(), []  # type: ignore[var-annotated]
    end = clock.now + 700

    def running_until_end() -> tuple[JobState, int | None]:
        left = int(end - clock.now)
        return (JobState.RUNNING, left) if left > 0 else (JobState.TIMEOUT, None)

    cluster = FakeCluster([running_until_end])
    with pytest.raises(TimeLimitError):
        watch(cluster, clock, reports).run(probe_every=2, job_every=30)
    warnings = [d for p, d in reports if p == "walltime"]
    assert warnings == ["10 min 0 s left before the time limit", "2 min 0 s left before the time limit"]
    assert cluster.queries < 700 / 30 + 5  # polite: about one query per job_every


def test_lost_login_node_is_retried_not_fatal() -> None:
    clock, reports = Clock(), []  # type: ignore[var-annotated]
    down = Unreachable("cannot reach login")
    cluster = FakeCluster([(JobState.RUNNING, 3000), down, down, down, (JobState.RUNNING, 2900),
                           (JobState.CANCELLED, None)])
    with pytest.raises(JobEndedError, match="cancelled"):
        watch(cluster, clock, reports).run(probe_every=2, job_every=30)
    phases = [p for p, _ in reports]
    assert phases.count("offline") == 1 and phases.count("online") == 1
    assert phases.index("offline") < phases.index("online")


def test_a_login_hpclab_may_not_make_yet_waits_like_a_lost_network() -> None:
    clock, reports = Clock(), []  # type: ignore[var-annotated]
    cluster = FakeCluster([(JobState.RUNNING, 3000), MasterGone("dropped again"), (JobState.RUNNING, 2900),
                           (JobState.CANCELLED, None)])
    with pytest.raises(JobEndedError, match="cancelled"):
        watch(cluster, clock, reports).run(probe_every=2, job_every=30)
    assert [p for p, _ in reports].count("offline") == 1


def test_a_refused_login_ends_the_watch_instead_of_asking_again() -> None:
    clock, reports = Clock(), []  # type: ignore[var-annotated]
    cluster = FakeCluster([(JobState.RUNNING, 3000), LoginRefused("login refused the login"),
                           (JobState.RUNNING, 2900), (JobState.CANCELLED, None)])
    with pytest.raises(LoginRefused):
        watch(cluster, clock, reports).run(probe_every=2, job_every=30)
    assert cluster.queries == 2  # asked once more after the refusal: never


def test_end_marker_says_time_limit_even_when_the_job_completed() -> None:
    clock, reports = Clock(), []  # type: ignore[var-annotated]
    cluster = FakeCluster([(JobState.COMPLETED, None)], ended=Ended("timelimit", 0))
    with pytest.raises(TimeLimitError):
        watch(cluster, clock, reports).run()
