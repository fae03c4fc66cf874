"""`hpclab up`: submit, wait in the queue, learn where Jupyter listens, tunnel, probe.

    with Launch(ctx, profile) as launch:      # leaving it by an error or Ctrl-C cleans up
        ready = launch.run()                  # a Ready: record, timings, stats, warnings
        launch.watch()                        # foreground: until the job ends (raises why)

Every way out of the `with` block other than a normal exit cancels the job and removes the
tunnel and the session's files on both sides (inside ctx.shield()). A normal exit leaves the
session running (`up --detach`).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass, field
from types import TracebackType

from . import apps, errors, jobscript, labcheck, polite
from .cluster import Snapshot, tunnel_for
from .errors import HpclabError, Interrupted, JobFailedError, LoginRefused, MaxWaitError, Unreachable, UnsafeLabError
from .options import JOB_KEYS
from .profiles import Profile
from .redact import redact, register
from .remote import Counters
from .schedulers import JobInfo, JobSpec, JobState
from .session import Context, open_forward, stop_session
from .sessiondir import Ended, Rendezvous, SessionDir
from .state import SessionRecord
from .transports import Transports
from .tunnel import Tunnel, free_local_port, wait_ready
from .watch import Watch

MIN_JUPYTER_SERVER = (2, 18)
# Identity providers (what the job's config holds the lab to its token with) came in 2.0.
REQUIRED_JUPYTER_SERVER = (2, 0)


def version_tuple(text: str) -> tuple[int, ...]:
    """Leading numeric release parts: '2.17.0rc1' -> (2, 17, 0)."""
    m = re.match(r"^\d+(?:\.\d+)*", text.strip())
    return tuple(int(p) for p in m.group(0).split(".")) if m else ()


@dataclass
class Timings:
    phases: dict[str, float] = field(default_factory=dict)
    scheduler_queries: int = 0

    def mark(self, phase: str, start: float) -> float:
        now = time.monotonic()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - start
        return now


@dataclass(frozen=True)
class Ready:
    """A lab that answers through its tunnel."""

    record: SessionRecord
    timings: Timings
    counters: Counters
    warnings: tuple[str, ...]


class _NodesChanged(Exception):
    """A node refused the SSH connection a recalled "socket" counted on (transports.py)."""


def new_record(profile: Profile) -> SessionRecord:
    return SessionRecord(
        id=secrets.token_hex(4),
        profile=profile.name,
        host=profile.host,
        ssh_options=list(profile.ssh_options),
        scheduler=profile.scheduler,
        transport=profile.transport,
        token=secrets.token_urlsafe(32),  # 256 bits
        created=time.time(),
        time_limit=profile.time,
        app=profile.app,
    )


class Launch:
    """`hpclab up` for one profile. The constructor only stores; `run()` does the work."""

    def __init__(self, ctx: Context, profile: Profile, *, max_wait: int | None = None) -> None:
        self.ctx = ctx
        self.profile = profile
        self.store = ctx.store
        self.report = ctx.report
        self.max_wait = max_wait if max_wait is not None else profile.max_wait
        self.timings = Timings()
        self.cluster = ctx.cluster(profile.host, profile.ssh_options, profile.scheduler)
        self.record = new_record(profile)
        register(self.record.token)  # no log line shows it
        self.tunnel: Tunnel | None = None
        self.warnings: list[str] = []
        self._connected = False  # until the login master is up, nothing has reached the cluster
        self.clock = time.monotonic  # the queue waits' clock (tests count queries on their own)
        self.transports = Transports(ctx.paths)
        self._recalled: str | None = None  # the transport auto mode took from transports.py

    # -- lifetime -----------------------------------------------------------------------

    def __enter__(self) -> Launch:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            return
        interrupted = isinstance(exc, (KeyboardInterrupt, Interrupted))
        with self.ctx.shield():
            if interrupted:
                self.ctx.info("stopping: cancelling the job and removing the session's files")
            try:
                self.abort()
            except HpclabError as cleanup_error:
                self.ctx.error(f"cleanup failed: {cleanup_error.message}", cleanup_error.hint)
                self.ctx.error(f"the job may still exist: check with `hpclab list` and "
                               f"`hpclab stop {self.record.id}`", None)
            else:
                if interrupted:
                    job = f"job {self.record.job_id} cancelled, " if self.record.job_id else ""
                    raise Interrupted(f"stopped: {job}session {self.record.id} removed") from None
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted("interrupted") from None

    def abort(self) -> None:
        """Leave nothing behind: cancel the job, close forwards, remove files on both sides."""
        if not self._connected:
            # The login failed (a changed host key, say): there is nothing on the cluster to
            # remove, and connecting again to try would only contact that host once more.
            self.store.delete(self.record.id)
            return
        stop_session(self.ctx, self.record, self.cluster, tunnel=self.tunnel)

    # -- the flow -----------------------------------------------------------------------

    def run(self) -> Ready:
        try:
            return self._run()
        except _NodesChanged:
            # This job's Jupyter listens on a socket hpclab cannot reach: cancel it and start
            # again in auto mode, which finds out afresh. The new record is saved first, so that
            # the login master stays for it.
            old = self.record
            self.record = new_record(self.profile)
            register(self.record.token)
            self.store.save(self.record)
            stop_session(self.ctx, old, self.cluster)
            return self._run()

    def _run(self) -> Ready:
        rec, cluster, t = self.record, self.cluster, self.timings
        app = apps.get(rec.app)
        self.store.save(rec)
        start = time.monotonic()
        self.report("connect", f"connecting to {rec.host}")
        cluster.login.connect()
        self._connected = True
        if cluster.auto:
            rec.scheduler = cluster.detect()
            self.report("detect", f"{rec.host} runs {cluster.scheduler.title}")
        start = t.mark("connect", start)
        self._recall_transport()

        self.report("submit", f"submitting to {cluster.scheduler.title}")
        rec.job_id = self._submit()
        rec.state = "pending"
        self.store.save(rec)
        start = t.mark("submit", start)
        self.report("pending", f"job {rec.job_id} submitted")

        snap = self._wait_started()
        start = t.mark("queued", start)
        rdv = self._wait_rendezvous(snap)
        start = t.mark("jupyter", start)

        self._open_tunnel(rdv)
        start = t.mark("tunnel", start)
        self.report("tunnel", f"tunnel up on 127.0.0.1:{rec.local_port}")
        if not wait_ready(rec.local_port or 0, rec.token, timeout=60, app=rec.app):
            raise JobFailedError(f"{app.title} started but does not answer through the tunnel",
                                 hint=self._err_tail() or None)
        labcheck.check(rec.local_port or 0, rec.token, app=rec.app)  # refuses a lab open without its secret
        t.mark("ready", start)
        rec.state = "running"
        self.store.save(rec)
        self.report("ready", f"{app.title} answers through the tunnel")
        return Ready(rec, t, self.cluster.login.counters, tuple(self.warnings))

    def watch(self) -> None:
        """Keep the session healthy in the foreground; raises JobEndedError when it ends."""
        rec = self.record
        Watch(rec, self.cluster, report=self.report, warnings=self.profile.walltime_warnings,
              moved=lambda port: self.store.update(rec.id, local_port=port)).run()

    # -- steps ------------------------------------------------------------------------

    def _submit(self) -> str:
        rec, profile = self.record, self.profile
        sdir = SessionDir(rec.id)
        spec = JobSpec(session_id=rec.id, output=sdir.file(sdir.output), error=sdir.file(sdir.error),
                       **{key: getattr(profile, key) for key in JOB_KEYS})
        opts = jobscript.JobOptions(
            session_id=rec.id, transport=rec.transport, setup=profile.setup,
            notebook_dir=profile.notebook_dir, idle_timeout=profile.idle_timeout, env=profile.env,
            environment=profile.environment, kernels=profile.kernels,
            app=rec.app,
        )
        template = jobscript.read_template(profile.template) if profile.template else None
        script = jobscript.render(self.cluster.scheduler, spec, opts, template)
        self.timings.scheduler_queries += 1
        return self.cluster.submit(sdir, rec.token, script)

    def _wait_started(self) -> Snapshot:
        rec, cluster = self.record, self.cluster
        assert rec.job_id
        submitted = self.clock()
        windows = polite.pending_windows()
        last = ""
        while True:
            window = next(windows)
            if self.max_wait is not None:
                window = max(0.1, min(window, self.max_wait - (self.clock() - submitted)))
            snap = cluster.poll(rec.id, window, True, rec.job_id)
            self.timings.scheduler_queries += 1
            if snap.started or snap.rendezvous or snap.ended:
                rec.node = snap.started or (snap.rendezvous.node if snap.rendezvous else None)
                rec.started = time.time()
                rec.state = "starting"
                self.store.save(rec)
                self.report("running", f"job {rec.job_id} running on {rec.node}")
                return snap
            job = snap.job
            if job and job.state.ended:
                raise self._failed(job)
            if job and job.state is JobState.PENDING:
                detail = f"job {rec.job_id} pending"
                if job.reason:
                    detail += f" ({job.reason})"
                if job.start_time:
                    detail += f", estimated start {job.start_time}"
                if detail != last:
                    self.report("pending", detail)
                    last = detail
            if self.max_wait is not None and self.clock() - submitted >= self.max_wait:
                cluster.cancel(rec.job_id)
                raise MaxWaitError(
                    f"job {rec.job_id} did not start within {self.max_wait} s; it was cancelled",
                    hint="raise --max-wait, or ask for fewer resources or another partition",
                )

    def _wait_rendezvous(self, snap: Snapshot) -> Rendezvous:
        rec, cluster = self.record, self.cluster
        assert rec.job_id
        # Also when the rendezvous is already there (a job that started, and whose Jupyter came up,
        # between two looks at the queue): the socket still needs the node connection, and a node
        # that refuses a remembered socket must be found out here, where starting again is possible.
        if rec.transport in ("socket", "auto") and rec.node and not snap.ended:
            self._prepare_node()
        budget = polite.Budget(clock=self.clock)  # the job runs: ask as rarely as the watch does
        budget.spend()  # the query that saw it start
        while not snap.rendezvous:
            if snap.ended or (snap.job and snap.job.state.ended):
                raise self._failed(snap.job, snap.ended)
            ask = budget.allows()
            snap = cluster.poll(rec.id, 5.0, False, rec.job_id if ask else None)
            if ask:
                budget.spend()
                self.timings.scheduler_queries += 1
        self.report("jupyter", f"{apps.get(rec.app).server} is up")
        return snap.rendezvous

    def _recall_transport(self) -> None:
        """auto: the transport this cluster's nodes called for last time, if hpclab knows it, so
        that Jupyter starts with the job instead of waiting for the node connection."""
        rec = self.record
        self._recalled = None
        if rec.transport != "auto":
            return
        known = self.transports.recall(rec.host, rec.ssh_options, rec.scheduler)
        if known is None:
            return
        self._recalled = rec.transport = known
        self.report("transport", f"transport: {known} (as {rec.host}'s nodes allowed before)")
        if known == "tcp":
            self.ctx.warn(f"the lab listens on its node's network address (transport tcp): {rec.host}'s nodes "
                          "refused SSH before. Other users of the cluster can reach its port; the token keeps them out")

    def _prepare_node(self) -> None:
        """Open the node connection while Jupyter starts. In auto mode this decides the
        transport and tells the job through the `listen` file it waits for."""
        rec = self.record
        refused = ""
        try:
            self.cluster.node(rec.node or "").connect()
        except (LoginRefused, Unreachable) as exc:
            # The node answered "no" (pam_slurm_adopt, no sshd, a firewall): tcp is what the site
            # allows. A host-key problem, or anything else, is an error, never a reason to downgrade.
            if self._recalled == "socket":
                self.transports.remember(rec.host, rec.ssh_options, rec.scheduler, None)
                self.report("transport", f"{rec.node} refuses SSH now ({exc.message}); starting again in auto mode")
                raise _NodesChanged from None
            if rec.transport == "socket":
                raise type(exc)(
                    f"cannot open an SSH connection to the compute node {rec.node} through {rec.host}",
                    hint=f"{exc.message}. Use --transport tcp if the cluster does not allow SSH to nodes.",
                ) from None
            refused = exc.message
        if rec.transport == "auto":
            rec.transport = "tcp" if refused else "socket"
            self.report("transport", f"transport: {rec.transport}" +
                        (f" (the node refuses SSH: {refused})" if refused else ""))
            if refused:
                self.ctx.warn(f"the lab listens on {rec.node}'s network address (transport tcp): {refused}. "
                              f"Other users of the cluster can reach its port; the "
                              f"{apps.get(rec.app).secret_name} keeps them out")
            self.cluster.write_listen(rec.id, rec.transport)
            self.store.save(rec)
            self.transports.remember(rec.host, rec.ssh_options, rec.scheduler, rec.transport)

    def _open_tunnel(self, rdv: Rendezvous) -> None:
        rec = self.record
        rec.node = rdv.node
        rec.transport = rdv.transport
        rec.jupyter_server = rdv.jupyter_server or None
        rec.app_version = rdv.app_version or None
        if rdv.app != rec.app:
            raise errors.ProtocolError(f"the job runs {rdv.app}, not the {rec.app} it was asked for")
        if rec.transport == "socket":
            rec.socket = rdv.socket
        else:
            rec.address, rec.port = rdv.address, rdv.port
        if rec.jupyter_server and version_tuple(rec.jupyter_server) < REQUIRED_JUPYTER_SERVER:
            raise UnsafeLabError(
                f"the cluster runs jupyter_server {rec.jupyter_server}, older than 2.0, which hpclab cannot hold "
                "to its token; hpclab stopped the job",
                hint="upgrade it in the environment your setup lines activate "
                     "(pip install -U 'jupyter_server>=2.18' jupyterlab)",
            )
        if rec.jupyter_server and version_tuple(rec.jupyter_server) < MIN_JUPYTER_SERVER:
            self.warnings.append(
                f"the cluster runs jupyter_server {rec.jupyter_server}, older than 2.18, which fixed token and "
                "cookie leaks: upgrade it in the environment your setup lines activate "
                "(pip install -U 'jupyter_server>=2.18' jupyterlab)"
            )
        rec.local_port = open_forward(self.cluster, rec, free_local_port(self.profile.local_port))
        self.tunnel = tunnel_for(self.cluster, rec)
        self.store.save(rec)

    def _failed(self, job: JobInfo | None, ended: Ended | None = None) -> HpclabError:
        rec = self.record
        if job and job.state is JobState.ENDED:
            job = self.cluster.final_state(job)
        why = job.state.reason if job and job.state.ended else "the job ended"
        tail = self._err_tail()
        code = ended.exit_code if ended else None
        msg = f"job {rec.job_id} ended before {apps.get(rec.app).server} was ready: {why}"
        if code not in (None, 0):
            msg += f" (exit status {code})"
        return JobFailedError(msg, hint=("last lines of the job's error output:\n" + tail) if tail else
                              "the job wrote no error output")

    def _err_tail(self) -> str:
        return redact(self.cluster.tail(self.record.id, SessionDir.error, 15), self.record.token).rstrip()
