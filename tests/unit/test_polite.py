"""The scheduler is asked politely (polite.py), counted on an injected clock with a FAKE cluster
whose waits take no time: while a job is pending, at most 6 status queries a minute after the
first minute; while it runs (Jupyter starting, the foreground watch), at most 2 a minute, even
when the lab never answers and every loop of the watch tries to repair its tunnel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hpclab import launch as launch_module
from hpclab import watch as watch_module
from hpclab.cluster import Snapshot
from hpclab.errors import JobEndedError
from hpclab.launch import Launch
from hpclab.paths import Paths
from hpclab.profiles import Profile
from hpclab.schedulers import JobInfo, JobState
from hpclab.session import Context
from hpclab.sessiondir import Ended, Rendezvous
from hpclab.state import SessionRecord
from hpclab.watch import Watch

MINUTE = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

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
    """A job that is pending until `starts`, running until `ends`; Jupyter up from `jupyter`.
    A poll waits (on the fake clock) as the real one does on the cluster, until the job starts
    (when asked to) or Jupyter is up, or its window runs out. Every scheduler query is logged."""

    def __init__(self, clock: Clock, starts: float = 0, jupyter: float = 0, ends: float = 10**9) -> None:
        self.clock = clock
        self.starts, self.jupyter, self.ends = starts, jupyter, ends
        self.login = FakeLogin()
        self.queries: list[float] = []

    def _job(self) -> JobInfo:
        self.queries.append(self.clock.now)
        now = self.clock.now
        state = JobState.PENDING if now < self.starts else JobState.RUNNING if now < self.ends else JobState.CANCELLED
        return JobInfo("7", state, node="node1" if state is JobState.RUNNING else None, time_left=3600)

    def status(self, job_ids: list[str]) -> dict[str, JobInfo]:
        return {"7": self._job()}

    def final_state(self, info: JobInfo) -> JobInfo:
        return info

    def poll(self, session_id: str, wait: float, until_started: bool, job_id: str | None) -> Snapshot:
        end = self.clock.now + wait
        wake = [end]
        if until_started and self.clock.now < self.starts:
            wake.append(self.starts)
        if self.clock.now < self.jupyter:
            wake.append(self.jupyter)
        self.clock.now = max(self.clock.now, min(wake))
        now = self.clock.now
        started = "node1" if now >= self.starts else None
        rdv = (Rendezvous(session=session_id, job_id="7", node="node1", user="u", transport="tcp",
                          address="10.0.0.1", port=8888, socket="", pid=1, runtime_dir="/r",
                          jupyter_server="2.18.0")
               if now >= self.jupyter and now >= self.starts else None)
        ended = Ended("cancelled", 0) if now >= self.ends else None
        return Snapshot(started, rdv, ended, self._job() if job_id else None)

    def cancel(self, job_id: str) -> JobInfo:
        return JobInfo(job_id, JobState.CANCELLED)

    def tail(self, *args: Any) -> str:
        return ""


def most_in_a_minute(times: list[float], after: float = 0.0) -> int:
    """The largest number of queries in any 60 s window that starts at or after `after`."""
    times = [t for t in times if t >= after]
    return max((sum(1 for u in times if t <= u < t + MINUTE) for t in times), default=0)


def new_launch(tmp_path: Path, clock: Clock, cluster: FakeCluster) -> Launch:
    ctx = Context(Paths.from_env({"HPCLAB_HOME": str(tmp_path), "HOME": str(tmp_path)}),
                  connect=lambda host, opts: FakeLogin())  # type: ignore[arg-type,return-value]
    launch = Launch(ctx, Profile(name="p", host="login", transport="tcp"))
    launch.cluster = cluster  # type: ignore[assignment]
    launch.clock = clock
    launch.record.job_id = "7"
    return launch


def test_pending_job_is_asked_about_at_most_6_times_a_minute_after_the_first(tmp_path: Path) -> None:
    clock = Clock()
    cluster = FakeCluster(clock, starts=20 * MINUTE, jupyter=0)
    snap = new_launch(tmp_path, clock, cluster)._wait_started()
    assert snap.started == "node1" and clock.now == 20 * MINUTE  # it saw the start when it came
    assert most_in_a_minute(cluster.queries, after=MINUTE) <= 6
    assert len(cluster.queries) >= 19 * 4  # and it still asks: a job can end while it waits


def test_jupyter_starting_slowly_is_asked_about_at_most_twice_a_minute(tmp_path: Path) -> None:
    clock = Clock()
    cluster = FakeCluster(clock, starts=0, jupyter=5 * MINUTE)
    launch = new_launch(tmp_path, clock, cluster)
    launch.record.node = "node1"
    rdv = launch._wait_rendezvous(Snapshot("node1", None, None, JobInfo("7", JobState.RUNNING)))
    assert rdv.port == 8888 and clock.now == 5 * MINUTE
    assert most_in_a_minute(cluster.queries) <= 2
    assert len(cluster.queries) >= 4  # but it asks: a job the scheduler ends writes no end marker


def watch(clock: Clock, cluster: FakeCluster, lab_answers: bool) -> Watch:
    rec = SessionRecord(id="s1", profile="p", host="login", ssh_options=[], scheduler="slurm", job_id="7",
                        node="node1", local_port=1, token="t", transport="tcp", address="10.0.0.1", port=8888)
    return Watch(rec, cluster, clock=clock, sleep=clock.sleep,  # type: ignore[arg-type]
                 lab_probe=lambda port, token: 200 if lab_answers else None)


class FakeTunnel:
    def close(self) -> None:
        pass

    def open(self) -> None:
        pass

    def hold(self) -> None:
        pass


@pytest.mark.parametrize("lab_answers", [True, False], ids=["healthy", "lab-never-answers"])
def test_foreground_watch_asks_at_most_twice_a_minute(lab_answers: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watch_module, "tunnel_for", lambda cluster, rec: FakeTunnel())
    monkeypatch.setattr(watch_module, "wait_ready", lambda port, token, timeout, app=None: False)
    clock = Clock()
    cluster = FakeCluster(clock, ends=30 * MINUTE)
    with pytest.raises(JobEndedError, match="cancelled"):
        watch(clock, cluster, lab_answers).run()
    assert clock.now < 31 * MINUTE  # the end is still seen within a minute
    assert most_in_a_minute(cluster.queries) <= 2
    assert len(cluster.queries) >= 29  # about two a minute, not none


def test_pending_windows_double_up_to_the_cap() -> None:
    windows = launch_module.polite.pending_windows()
    assert [next(windows) for _ in range(8)] == [0.5, 1, 2, 4, 8, 15, 15, 15]
