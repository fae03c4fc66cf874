"""The foreground watcher: while `up` or `attach` runs in the terminal, keep the session
healthy (probe the lab through the tunnel, re-open master and forward when they die), watch
the job, warn before the time limit, and say why it ended."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .cluster import Cluster, Report, Snapshot, quiet, tunnel_for
from .errors import ForwardTaken, HpclabError, JobEndedError, MasterGone, TimeLimitError, Unreachable
from .polite import Budget
from .schedulers import JobInfo, JobState
from .sessiondir import Ended
from .state import SessionRecord, lab_url
from .tunnel import KERNEL_SOCKETS, free_local_port, probe, wait_ready
from .units import human

log = logging.getLogger(__name__)


class Watch:
    """Keeps a running session healthy while `up`/`attach` is in the foreground: probes the
    lab through the tunnel, re-opens master and forward when they die, watches the job."""

    def __init__(self, rec: SessionRecord, cluster: Cluster, *, report: Report = quiet,
                 warnings: tuple[int, ...] = (600, 120), clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 lab_probe: Callable[[int, str], int | None] | None = None,
                 moved: Callable[[int], object] = lambda port: None) -> None:
        self.rec = rec
        self.moved = moved  # the forward moved to this local port: the caller records it
        self.cluster = cluster
        self.report = report
        self.warn_at = sorted(warnings, reverse=True)
        self.clock = clock
        self.sleep = sleep
        self.probe = lab_probe or (lambda port, token: probe(port, token, app=rec.app))
        self.deadline: float | None = None
        self.reconnects = 0
        self.budget = Budget(clock=clock)  # scheduler queries: at most 2 a minute (polite.py)

    def run(self, probe_every: float = 2.0, job_every: float = 30.0) -> None:
        """Returns never; raises JobEndedError/TimeLimitError when the job ends. While the
        login node cannot be reached (laptop asleep, network changed) it keeps trying."""
        next_job = 0.0
        warned: set[int] = set()
        offline_since: float | None = None
        while True:
            now = self.clock()
            try:
                if now >= next_job:
                    self._check_job()
                    next_job = now + job_every
                if not self._held() or self.probe(self.rec.local_port or 0, self.rec.token) != 200:
                    self._repair()
            except (Unreachable, MasterGone) as exc:
                # No answer, or a login hpclab may not make yet (SshRemote.connect): try later.
                # A refused login or a host-key problem is not retried: it ends the watch.
                if offline_since is None:
                    offline_since = now
                    self.report("offline", f"cannot reach {self.rec.host} ({exc.message}); retrying")
                next_job = now  # ask the scheduler as soon as the login node answers again
                self.sleep(min(10.0, probe_every * 2))
                continue
            if offline_since is not None:
                self.report("online", f"{self.rec.host} answers again after {self.clock() - offline_since:.0f} s")
                offline_since = None
            if self.deadline is not None:
                left = self.deadline - self.clock()
                for mark in self.warn_at:
                    if left <= mark and mark not in warned:
                        warned.add(mark)
                        self.report("walltime", f"{int(left // 60)} min {int(left % 60)} s left before the time limit")
                        next_job = min(next_job, now + max(5.0, left - 5))
                if left <= 0:
                    next_job = min(next_job, now + 5)
                self.report("tick", f"job {self.rec.job_id} on {self.rec.node}, {human(max(0, left))} left, "
                                    f"lab at {lab_url(self.rec.local_port or 0, app=self.rec.app)}")
            self.sleep(probe_every)

    def _held(self) -> bool:
        """Whether the forward may be probed with the token. Where the kernel says who listens
        (probe checks it per connection) that is enough; elsewhere the master must confirm it."""
        if KERNEL_SOCKETS.exists():
            return True
        try:
            tunnel_for(self.cluster, self.rec).hold()
        except HpclabError as exc:
            log.debug("forward not held: %s", exc)
            return False
        return True

    def _check_job(self) -> None:
        rec = self.rec
        assert rec.job_id
        if not self.budget.allows():
            # Asked often enough this minute: the end marker alone says whether Jupyter exited.
            snap = self._poll()
            if snap.ended:
                raise self.ended(JobInfo(rec.job_id, JobState.ENDED), snap.ended)
            return
        info = self.cluster.status([rec.job_id])[rec.job_id]
        self.budget.spend()
        if info.time_left is not None:
            self.deadline = self.clock() + info.time_left
        if info.state.ended:
            raise self.ended(info)

    def _poll(self) -> Snapshot:
        """The session's files, and the scheduler's word when the budget allows a query."""
        ask = self.budget.allows()
        snap = self.cluster.poll(self.rec.id, 0, False, self.rec.job_id if ask else None)
        if ask:
            self.budget.spend()
        return snap

    def ended(self, info: JobInfo, ended: Ended | None = None) -> JobEndedError:
        """The error that says why the job ended, from its end marker and the scheduler."""
        if ended is None:
            ended = self.cluster.poll(self.rec.id, 0, False, None).ended
        reason = ended.reason if ended else None
        info = self.cluster.final_state(info)
        if info.state is JobState.TIMEOUT or reason == "timelimit":
            return TimeLimitError(f"time limit reached: job {info.job_id} has ended",
                                  hint="start a new session with a longer --time")
        if reason == "cancelled" and not info.state.ended:
            info = JobInfo(info.job_id, JobState.CANCELLED, raw_state="CANCELLED")
        why = info.state.reason if info.state.ended else "the lab stopped"
        if info.state in (JobState.ENDED, JobState.UNKNOWN, JobState.RUNNING) and reason == "exited":
            why = "Jupyter exited (idle shutdown, or shut down from the lab's menu)"
        return JobEndedError(f"job {info.job_id} has ended: {why}",
                             hint=f"the scheduler reports {info.raw_state or info.state.value}")

    def _repair(self) -> None:
        """The lab does not answer through the tunnel: tell a dead job from a dead tunnel."""
        rec = self.rec
        started = self.clock()
        alive = self.cluster.login.alive()
        if alive:
            # One round trip says whether the job has ended (its end marker, or the scheduler).
            snap = self._poll()
            if snap.ended or (snap.job and snap.job.state.ended):
                raise self.ended(snap.job or JobInfo(rec.job_id or "", JobState.ENDED), snap.ended)
            if self._held() and self.probe(rec.local_port or 0, rec.token) == 200:
                return  # a blip
        self.report("reconnect", "the tunnel is down; reconnecting" if alive else
                    "the connection to the login node is gone; reconnecting")
        self.cluster.login.connect()  # at most once, visibly: see SshRemote.connect
        # Forward again only to the Jupyter of a running job that has not written its end
        # marker: in tcp mode, once that Jupyter is gone its port on the node may be anyone's.
        snap = self._poll()
        if snap.ended or (snap.job and snap.job.state.ended):
            raise self.ended(snap.job or JobInfo(rec.job_id or "", JobState.ENDED), snap.ended)
        tunnel = tunnel_for(self.cluster, rec)
        tunnel.close()
        try:
            tunnel.open()
        except ForwardTaken:
            old = rec.local_port
            rec.local_port = free_local_port()
            self.report("moved", f"127.0.0.1:{old} is held by another program: hpclab sends it nothing; "
                                 f"the lab moves to {lab_url(rec.local_port, app=rec.app)}")
            self.moved(rec.local_port)
            if not _try(tunnel_for(self.cluster, rec).open):
                return
        except (Unreachable, MasterGone) as exc:
            log.debug("retry later: %s", exc)
            return
        if wait_ready(rec.local_port or 0, rec.token, timeout=10, app=rec.app):
            self.reconnects += 1
            self.report("reconnected", f"tunnel re-established on 127.0.0.1:{rec.local_port} "
                                       f"in {self.clock() - started:.1f} s")


def _try(fn: Callable[[], None]) -> bool:
    try:
        fn()
    except HpclabError as exc:
        log.debug("retry later: %s", exc)
        return False
    return True

