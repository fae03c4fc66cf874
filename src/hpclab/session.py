"""The use cases: up, watch, stop, list. They return data and report progress through a
callback; they never print. cli.py decides how things look."""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import hostkeys, jobscript
from .errors import (
    ConfigError,
    ConnectError,
    HpclabError,
    JobEndedError,
    JobFailedError,
    MaxWaitError,
    RemoteError,
    SchedulerError,
    TimeLimitError,
)
from .paths import Paths
from .profiles import Profile
from .remote import SAFE_OPTIONS, Counters, SshRemote
from .schedulers import JobInfo, JobSpec, JobState, Scheduler, get
from .schedulers import names as scheduler_names
from .schedulers.detect import DETECT_SCRIPT, NONE_FOUND, parse_detect
from .state import SessionRecord, Store
from .timefmt import human
from .tunnel import Tunnel, free_local_port, probe, wait_ready

log = logging.getLogger(__name__)

MIN_JUPYTER_SERVER = (2, 18)

# One-line POSIX sh (no '!'): they pass unchanged through any login shell, csh included.
# $1 is the session id; the token is the first line of stdin, the job script the rest.
SUBMIT = (
    'umask 077 && mkdir -p "$HOME/.hpclab/sessions" && chmod 700 "$HOME/.hpclab" "$HOME/.hpclab/sessions" '
    '&& d="$HOME/.hpclab/sessions/$1" && mkdir "$d" && IFS= read -r t && printf %s "$t" > "$d/token" '
    '&& t= && cat > "$d/job.sh" && : > "$d/job.out" && : > "$d/job.err" && cd "$HOME" '
    '&& { SUBMIT > "$d/submitted" || { rc=$?; cat "$d/submitted"; rm -rf "$d"; exit $rc; }; } && cat "$d/submitted"'
)
# $1 session dir (relative to $HOME), $2 tenths of a second to wait at most, $3 1 to
# return as soon as the job has started; the rest is the scheduler's status argv (maybe none).
POLL = (
    'd="$HOME/$1"; n=$2; s=$3; shift 3; i=0; while [ "$i" -lt "$n" ]; do '
    '[ -e "$d/rendezvous.json" ] && break; [ -e "$d/ended.json" ] && break; '
    '[ "$s" = 1 ] && [ -e "$d/started" ] && break; sleep 0.1 2>/dev/null || sleep 1; i=$((i+1)); done; '
    'for f in started rendezvous.json ended.json; do printf "@@%s\\n" "$f"; cat "$d/$f" 2>/dev/null; done; '
    'printf "@@status\\n"; "$@"'
)
WRITE_FILE = 'umask 077 && printf %s "$2" > "$HOME/$1.tmp" && mv -f "$HOME/$1.tmp" "$HOME/$1"'
REMOVE_DIR = 'rm -rf "$HOME/$1"'
TAIL = 'tail -n "$2" "$HOME/$1" 2>/dev/null; :'
# Every session directory of the user: its id, what the submit command printed, its rendezvous.
DISCOVER = (
    'for d in "$HOME"/.hpclab/sessions/*/; do [ -f "$d/submitted" ] || continue; '
    'printf "@@session %s\\n" "$(basename "$d")"; cat "$d/submitted"; printf "@@rendezvous\\n"; '
    'cat "$d/rendezvous.json" 2>/dev/null; done; :'
)
READ_TOKEN = 'cat "$HOME/.hpclab/sessions/$1/token"'

Report = Callable[[str, str], None]  # (phase, detail)


def _quiet(phase: str, detail: str) -> None:
    log.info("%s: %s", phase, detail)


@dataclass
class Timings:
    phases: dict[str, float] = field(default_factory=dict)
    scheduler_queries: int = 0

    def mark(self, phase: str, start: float) -> float:
        now = time.monotonic()
        self.phases[phase] = self.phases.get(phase, 0.0) + now - start
        return now


@dataclass
class Snapshot:
    """What one poll saw: the session's files on the cluster and the scheduler's word."""

    started: str | None
    rendezvous: dict[str, Any] | None
    ended: dict[str, Any] | None
    job: JobInfo | None


class Cluster:
    """The connections and scheduler for one profile. Opens nothing until used."""

    def __init__(self, profile_host: str, ssh_options: tuple[str, ...] | list[str], scheduler: str,
                 paths: Paths, counters: Counters | None = None) -> None:
        self.login = SshRemote(profile_host, ssh_options, paths.control_dir, counters=counters)
        # "auto" is resolved by detect() on first contact
        self.scheduler: Scheduler = get("slurm" if scheduler == "auto" else scheduler)
        self.auto = scheduler == "auto"
        self.paths = paths
        self._nodes: dict[str, SshRemote] = {}

    @classmethod
    def for_record(cls, record: SessionRecord, paths: Paths, counters: Counters | None = None) -> Cluster:
        return cls(record.host, record.ssh_options, record.scheduler, paths, counters)

    def node(self, user: str | None, node: str) -> SshRemote:
        dest = f"{user}@{node}" if user else node
        if dest not in self._nodes:
            # The node's host key may be one the login node publishes (hostkeys.py): added, never relaxed.
            opts = self.login.ssh_options
            opts += tuple(hostkeys.for_node(self.login, dest, ["ssh", *SAFE_OPTIONS, *opts], self.paths.control_dir))
            self._nodes[dest] = SshRemote(dest, opts, self.paths.control_dir, via=self.login)
        return self._nodes[dest]

    # -- scheduler --------------------------------------------------------------------

    def detect(self) -> str:
        """Find which scheduler the login node runs (scheduler = "auto") and use it."""
        out = self.login.shell(DETECT_SCRIPT, what="scheduler detection", check=False).stdout
        name = parse_detect(out)
        if name == NONE_FOUND:
            raise ConfigError(
                f"could not tell which scheduler {self.login.host} runs",
                hint="set scheduler in the profile to one of: " + ", ".join(scheduler_names()),
            )
        self.scheduler = get(name)
        self.auto = False
        return name

    def status(self, job_ids: list[str]) -> dict[str, JobInfo]:
        """One batched query. A failing query means 'unknown, ask again', not 'gone'."""
        try:
            out = self.login.run(self.scheduler.status_argv(job_ids), what="job status query", timeout=60)
        except RemoteError as exc:
            log.debug("status query failed: %s", exc)
            return {j: JobInfo(job_id=j, state=JobState.UNKNOWN) for j in job_ids}
        return self.scheduler.parse_status(out.stdout, job_ids)

    def final_state(self, info: JobInfo) -> JobInfo:
        """For a job the queue no longer shows, ask accounting why it ended."""
        argv = self.scheduler.final_argv(info.job_id)
        if info.state is not JobState.ENDED or argv is None:
            return info
        try:
            out = self.login.run(argv, what="accounting query", check=False, timeout=30)
        except RemoteError:
            return info
        return self.scheduler.parse_final(out.stdout, info.job_id) or info

    def cancel(self, job_id: str, timeout: float = 60) -> JobInfo:
        """Cancel and wait until the scheduler reports the job ended (or `timeout`)."""
        self.login.run(self.scheduler.cancel_argv(job_id), check=False, what="cancel")
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            info = self.status([job_id])[job_id]
            if info.state.ended or time.monotonic() > deadline:
                return info
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    # -- session files ----------------------------------------------------------------

    def poll(self, session_id: str, wait: float, until_started: bool, job_id: str | None) -> Snapshot:
        status = self.scheduler.status_argv([job_id]) if job_id else []
        out = self.login.shell(
            POLL, jobscript.session_dir(session_id), str(int(wait * 10)), "1" if until_started else "0",
            *status, check=False, what="poll", timeout=wait + 60,
        )
        return parse_snapshot(self.scheduler, out.stdout, out.returncode, job_id)

    def tail(self, session_id: str, name: str, lines: int = 20) -> str:
        path = f"{jobscript.session_dir(session_id)}/{name}"
        return self.login.shell(TAIL, path, str(lines), check=False, what="tail").stdout

    def remove_session_dir(self, session_id: str) -> None:
        self.login.shell(REMOVE_DIR, jobscript.session_dir(session_id), check=False, what="cleanup")

    def close(self) -> None:
        for node in self._nodes.values():
            node.close()

    def discover(self) -> list[RemoteSession]:
        """The user's hpclab session directories on the cluster, with their job's live state."""
        out = self.login.shell(DISCOVER, what="list session directories").stdout
        found: list[RemoteSession] = []
        for chunk in out.split("@@session ")[1:]:
            head, _, rest = chunk.partition("\n")
            submitted, _, rdv = rest.partition("@@rendezvous\n")
            try:
                job_id = self.scheduler.parse_submit(submitted)
            except SchedulerError:
                continue
            found.append(RemoteSession(head.strip(), job_id, _json(rdv)))
        if found:
            infos = self.status([r.job_id for r in found])
            for r in found:
                r.job = infos.get(r.job_id)
        return found

    def read_token(self, session_id: str) -> str:
        return self.login.shell(READ_TOKEN, session_id, what="read the session token").stdout


@dataclass
class RemoteSession:
    id: str
    job_id: str
    rendezvous: dict[str, Any] | None
    job: JobInfo | None = None

    @property
    def alive(self) -> bool:
        return self.job is None or not self.job.state.ended


def parse_snapshot(scheduler: Scheduler, stdout: str, returncode: int, job_id: str | None) -> Snapshot:
    """Split the POLL script's output into its @@-headed sections."""
    sections: dict[str, str] = {}
    current = None
    for line in stdout.splitlines(keepends=True):
        if line.startswith("@@"):
            current = line[2:].strip()
            sections[current] = ""
        elif current:
            sections[current] += line
    job = None
    if job_id and "status" in sections:
        if returncode == 0:
            job = scheduler.parse_status(sections["status"], [job_id])[job_id]
        else:
            job = JobInfo(job_id=job_id, state=JobState.UNKNOWN)
    return Snapshot(
        started=sections.get("started", "").strip() or None,
        rendezvous=_json(sections.get("rendezvous.json")),
        ended=_json(sections.get("ended.json")),
        job=job,
    )


def _json(text: str | None) -> dict[str, Any] | None:
    if not text or not text.strip():
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def version_tuple(text: str) -> tuple[int, ...]:
    """Leading numeric release parts: '2.17.0rc1' -> (2, 17, 0)."""
    m = re.match(r"^\d+(?:\.\d+)*", text.strip())
    return tuple(int(p) for p in m.group(0).split(".")) if m else ()


def new_record(profile: Profile, transport: str) -> tuple[SessionRecord, str]:
    token = secrets.token_urlsafe(32)  # 256 bits
    record = SessionRecord(
        id=secrets.token_hex(4),
        profile=profile.name,
        host=profile.host,
        ssh_options=list(profile.ssh_options),
        scheduler=profile.scheduler,
        transport=transport,
        token=token,
        created=time.time(),
        time_limit=profile.time,
    )
    return record, token


class Launch:
    """`hpclab up`: submit, wait, discover, tunnel, probe. `run()` returns a ready record;
    on any failure or interrupt the caller calls `abort()`, which leaves nothing behind."""

    def __init__(self, profile: Profile, paths: Paths, store: Store, *, report: Report = _quiet,
                 max_wait: int | None = None, counters: Counters | None = None) -> None:
        self.profile = profile
        self.store = store
        self.report = report
        self.max_wait = max_wait if max_wait is not None else profile.max_wait
        self.counters = counters or Counters()
        self.timings = Timings()
        self.cluster = Cluster(profile.host, profile.ssh_options, profile.scheduler, paths, self.counters)
        self.record, self._token = new_record(profile, profile.transport)
        self.tunnel: Tunnel | None = None
        self.warnings: list[str] = []
        self._connected = False  # until the login master is up, nothing has reached the cluster

    def run(self) -> SessionRecord:
        rec, cluster, t = self.record, self.cluster, self.timings
        self.store.save(rec)
        start = time.monotonic()
        self.report("connect", f"connecting to {rec.host}")
        cluster.login.connect()
        self._connected = True
        if cluster.auto:
            rec.scheduler = cluster.detect()
            self.report("detect", f"{rec.host} runs {cluster.scheduler.title}")
        start = t.mark("connect", start)

        self.report("submit", f"submitting to {cluster.scheduler.title}")
        rec.job_id = self._submit()
        rec.state = "pending"
        self.store.save(rec)
        start = t.mark("submit", start)
        self.report("pending", f"job {rec.job_id} submitted")

        snap = self._wait_started()
        start = t.mark("queued", start)
        snap = self._wait_rendezvous(snap)
        start = t.mark("jupyter", start)

        self._open_tunnel(snap.rendezvous or {})
        start = t.mark("tunnel", start)
        self.report("tunnel", f"tunnel up on 127.0.0.1:{rec.local_port}")
        if not wait_ready(rec.local_port or 0, self._token, timeout=60):
            raise JobFailedError(
                "Jupyter started but does not answer through the tunnel",
                hint=self._err_tail() or None,
            )
        t.mark("ready", start)
        rec.state = "running"
        self.store.save(rec)
        self.report("ready", "JupyterLab answers through the tunnel")
        return rec

    # -- steps ------------------------------------------------------------------------

    def _submit(self) -> str:
        rec, sched = self.record, self.cluster.scheduler
        sdir = jobscript.session_dir(rec.id)
        spec = JobSpec(
            session_id=rec.id, time=self.profile.time, output=f"{sdir}/job.out", error=f"{sdir}/job.err",
            partition=self.profile.partition, account=self.profile.account, cpus=self.profile.cpus,
            mem=self.profile.mem, gpus=self.profile.gpus, extra_directives=self.profile.extra_directives,
            skip_directives=self.profile.skip_directives,
        )
        opts = jobscript.JobOptions(
            session_id=rec.id, transport=rec.transport, setup=self.profile.setup,
            notebook_dir=self.profile.notebook_dir, idle_timeout=self.profile.idle_timeout, env=self.profile.env,
        )
        template = jobscript.read_template(self.profile.template) if self.profile.template else None
        script = jobscript.render(sched, spec, opts, template)
        submit = SUBMIT.replace("SUBMIT", sched.submit_shell('"$d/job.sh"'))
        self.timings.scheduler_queries += 1
        try:
            out = self.cluster.login.shell(submit, rec.id, input=self._token + "\n" + script, what="submit")
        except RemoteError as exc:
            raise SchedulerError(
                f"{sched.title} refused the job",
                hint=(exc.stderr.strip() or exc.stdout.strip())[-800:] or None,
                stderr=exc.stderr,
            ) from None
        return sched.parse_submit(out.stdout)

    def _wait_started(self) -> Snapshot:
        rec, cluster = self.record, self.cluster
        assert rec.job_id
        submitted = time.monotonic()
        windows = iter([0.5, 1, 2, 4, 8])
        last = ""
        while True:
            window = next(windows, 15.0)
            if self.max_wait is not None:
                window = max(0.1, min(window, self.max_wait - (time.monotonic() - submitted)))
            snap = cluster.poll(rec.id, window, True, rec.job_id)
            self.timings.scheduler_queries += 1
            if snap.started or snap.rendezvous or snap.ended:
                rec.node = snap.started or (snap.rendezvous or {}).get("node")
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
            if self.max_wait is not None and time.monotonic() - submitted >= self.max_wait:
                cluster.cancel(rec.job_id)
                raise MaxWaitError(
                    f"job {rec.job_id} did not start within {self.max_wait} s; it was cancelled",
                    hint="raise --max-wait, or ask for fewer resources or another partition",
                )

    def _wait_rendezvous(self, snap: Snapshot) -> Snapshot:
        rec, cluster = self.record, self.cluster
        assert rec.job_id
        if rec.transport in ("socket", "auto") and rec.node and not snap.rendezvous and not snap.ended:
            self._prepare_node()
        while not snap.rendezvous:
            if snap.ended or (snap.job and snap.job.state.ended):
                raise self._failed(snap.job, snap.ended)
            snap = cluster.poll(rec.id, 5.0, False, rec.job_id)
            self.timings.scheduler_queries += 1
        self.report("jupyter", "Jupyter is up")
        return snap

    def _prepare_node(self) -> None:
        """Open the node master while Jupyter starts. In auto mode this decides the transport
        and tells the job through the `listen` file it waits for."""
        rec = self.record
        node = self.cluster.node(None, rec.node or "")
        try:
            node.connect()
            ok = True
        except ConnectError as exc:
            ok = False
            if rec.transport == "socket":
                raise ConnectError(
                    f"cannot open an SSH connection to the compute node {rec.node} through {rec.host}",
                    hint=f"{exc.message}. Use --transport tcp if the cluster does not allow SSH to nodes.",
                ) from None
            log.debug("node %s does not accept SSH (%s): using tcp", rec.node, exc)
        if rec.transport == "auto":
            rec.transport = "socket" if ok else "tcp"
            self.report("transport", f"transport: {rec.transport}" + ("" if ok else " (the node refuses SSH)"))
            self.cluster.login.shell(
                WRITE_FILE, f"{jobscript.session_dir(rec.id)}/listen", rec.transport, what="write listen file"
            )
            self.store.save(rec)

    def _open_tunnel(self, rdv: dict[str, Any]) -> None:
        rec = self.record
        rec.node = str(rdv.get("node") or rec.node)
        rec.user = str(rdv.get("user") or "") or None
        rec.transport = str(rdv.get("transport") or rec.transport)
        rec.jupyter_server = str(rdv.get("jupyter_server") or "") or None
        if rec.transport == "socket":
            rec.socket = str(rdv.get("socket") or "")
        else:
            rec.address = str(rdv.get("address") or rec.node)
            rec.port = int(rdv.get("port") or 0)
        if rec.jupyter_server and version_tuple(rec.jupyter_server) < MIN_JUPYTER_SERVER:
            self.warnings.append(
                f"the cluster runs jupyter_server {rec.jupyter_server}, older than 2.18, which fixed token and "
                "cookie leaks: upgrade it in the environment your setup lines activate "
                "(pip install -U 'jupyter_server>=2.18' jupyterlab)"
            )
        rec.local_port = free_local_port(self.profile.local_port)
        self.tunnel = tunnel_for(self.cluster, rec)
        self.tunnel.open()
        self.store.save(rec)

    def _failed(self, job: JobInfo | None, ended: dict[str, Any] | None = None) -> HpclabError:
        rec = self.record
        if job and job.state is JobState.ENDED:
            job = self.cluster.final_state(job)
        why = job.state.reason if job and job.state.ended else "the job ended"
        tail = self._err_tail()
        code = (ended or {}).get("exit_code")
        msg = f"job {rec.job_id} ended before Jupyter was ready: {why}"
        if code not in (None, 0):
            msg += f" (exit status {code})"
        return JobFailedError(msg, hint=("last lines of the job's error output:\n" + tail) if tail else
                              "the job wrote no error output")

    def _err_tail(self) -> str:
        text = self.cluster.tail(self.record.id, "job.err", 15)
        return text.replace(self._token, "********").rstrip()

    def abort(self) -> None:
        """Leave nothing behind: cancel the job, close forwards, remove files on both sides."""
        if not self._connected:
            # The login failed (a changed host key, say): there is nothing on the cluster to
            # remove, and connecting again to try would only contact that host once more.
            self.store.delete(self.record.id)
            return
        stop_session(self.record, self.cluster, self.store, tunnel=self.tunnel)


def tunnel_for(cluster: Cluster, rec: SessionRecord) -> Tunnel:
    assert rec.local_port
    if rec.transport == "socket":
        return Tunnel(cluster.node(None, rec.node or ""), rec.local_port, rec.socket or "")
    return Tunnel(cluster.login, rec.local_port, f"{rec.address}:{rec.port}")


def stop_session(rec: SessionRecord, cluster: Cluster, store: Store, *, tunnel: Tunnel | None = None) -> JobInfo | None:
    """Cancel the job (waiting until the scheduler says it ended), close the forward and the
    node connection, remove the session directory and the local record. Safe to repeat."""
    info = None
    if tunnel is None and rec.local_port and (rec.port or rec.socket):
        tunnel = tunnel_for(cluster, rec)
    if tunnel is not None:
        tunnel.close()
    cluster.close()
    if rec.job_id:
        info = cluster.status([rec.job_id])[rec.job_id]
        if not info.state.ended:
            info = cluster.cancel(rec.job_id)
    cluster.remove_session_dir(rec.id)
    store.delete(rec.id)
    (store.paths.state_dir / "open" / f"{rec.id}.html").unlink(missing_ok=True)
    return info


# -- foreground ---------------------------------------------------------------------------


class Watch:
    """Keeps a running session healthy while `up`/`attach` is in the foreground: probes the
    lab through the tunnel, re-opens master and forward when they die, watches the job."""

    def __init__(self, rec: SessionRecord, cluster: Cluster, *, report: Report = _quiet,
                 warnings: tuple[int, ...] = (600, 120), clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 lab_probe: Callable[[int, str], int | None] = probe) -> None:
        self.rec = rec
        self.cluster = cluster
        self.report = report
        self.warn_at = sorted(warnings, reverse=True)
        self.clock = clock
        self.sleep = sleep
        self.probe = lab_probe
        self.deadline: float | None = None
        self.reconnects = 0

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
                if self.probe(self.rec.local_port or 0, self.rec.token) != 200:
                    self._repair()
            except ConnectError as exc:
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
                                    f"lab at http://127.0.0.1:{self.rec.local_port}/lab")
            self.sleep(probe_every)

    def _check_job(self) -> None:
        rec = self.rec
        assert rec.job_id
        info = self.cluster.status([rec.job_id])[rec.job_id]
        if info.time_left is not None:
            self.deadline = self.clock() + info.time_left
        if info.state.ended:
            raise self.ended(info)

    def ended(self, info: JobInfo, ended: dict[str, Any] | None = None) -> JobEndedError:
        """The error that says why the job ended, from its end marker and the scheduler."""
        if ended is None:
            ended = self.cluster.poll(self.rec.id, 0, False, None).ended
        ended = ended or {}
        info = self.cluster.final_state(info)
        if info.state is JobState.TIMEOUT or ended.get("reason") == "timelimit":
            return TimeLimitError(f"time limit reached: job {info.job_id} has ended",
                                  hint="start a new session with a longer --time")
        if ended.get("reason") == "cancelled" and not info.state.ended:
            info = JobInfo(info.job_id, JobState.CANCELLED, raw_state="CANCELLED")
        why = info.state.reason if info.state.ended else "the lab stopped"
        if info.state in (JobState.ENDED, JobState.UNKNOWN, JobState.RUNNING) and ended.get("reason") == "exited":
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
            snap = self.cluster.poll(rec.id, 0, False, rec.job_id)
            if snap.ended or (snap.job and snap.job.state.ended):
                raise self.ended(snap.job or JobInfo(rec.job_id or "", JobState.ENDED), snap.ended)
            if self.probe(rec.local_port or 0, rec.token) == 200:
                return  # a blip
        self.report("reconnect", "the tunnel is down; reconnecting" if alive else
                    "the connection to the login node is gone; reconnecting")
        if not _try(self.cluster.login.connect):
            return
        self._check_job()
        tunnel = tunnel_for(self.cluster, rec)
        tunnel.close()
        if not _try(tunnel.open):
            return
        if wait_ready(rec.local_port or 0, rec.token, timeout=10):
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


# -- attach and cleanup -------------------------------------------------------------------


def record_from_remote(found: RemoteSession, profile: Profile, token: str) -> SessionRecord:
    """A local record for a session found on the cluster (attach from a second computer)."""
    rdv = found.rendezvous or {}
    rec = SessionRecord(
        id=found.id, profile=profile.name, host=profile.host, ssh_options=list(profile.ssh_options),
        scheduler=profile.scheduler, job_id=found.job_id, state="running", token=token, created=time.time(),
        transport=str(rdv.get("transport") or "tcp"), node=rdv.get("node"), user=rdv.get("user"),
        jupyter_server=rdv.get("jupyter_server"),
    )
    if rec.transport == "socket":
        rec.socket = rdv.get("socket")
    else:
        rec.address, rec.port = rdv.get("address"), int(rdv.get("port") or 0)
    return rec


def reattach(rec: SessionRecord, cluster: Cluster, store: Store, *, report: Report = _quiet) -> SessionRecord:
    """Bring the tunnel of a running session back, on the same local port when it is free,
    and probe the lab through it. Raises JobEndedError (and forgets the session) if the job ended."""
    assert rec.job_id
    report("connect", f"connecting to {rec.host}")
    cluster.login.connect()
    info = cluster.status([rec.job_id])[rec.job_id]
    if info.state.ended:
        cluster.remove_session_dir(rec.id)
        store.delete(rec.id)
        raise JobEndedError(f"session {rec.id} has ended: {cluster.final_state(info).state.reason}",
                            hint="start a new one with `hpclab up PROFILE`")
    if not (rec.port or rec.socket):
        raise JobFailedError(f"session {rec.id} has no running Jupyter yet",
                             hint=f"wait a moment, or look at `hpclab logs {rec.id}`")
    if rec.local_port and probe(rec.local_port, rec.token) == 200:
        report("tunnel", f"tunnel already up on 127.0.0.1:{rec.local_port}")
        return rec
    if rec.local_port:
        tunnel_for(cluster, rec).close()
    rec.local_port = free_local_port(rec.local_port)
    tunnel = tunnel_for(cluster, rec)
    tunnel.open()
    if not wait_ready(rec.local_port, rec.token, timeout=30):
        raise JobFailedError(f"session {rec.id} does not answer through the tunnel",
                             hint=f"look at `hpclab logs {rec.id}`, or stop it with `hpclab stop {rec.id}`")
    rec.state = "running"
    store.save(rec)
    report("tunnel", f"tunnel up on 127.0.0.1:{rec.local_port}")
    return rec


def orphans(cluster: Cluster, store: Store) -> list[RemoteSession]:
    """hpclab jobs of the user on this cluster that no local record covers: found through
    the session directories and, where the scheduler can list jobs by name, through the
    hpclab- job name tag."""
    known = {r.job_id for r in store.all() if r.host == cluster.login.host}
    found = [r for r in cluster.discover() if r.alive and r.job_id not in known]
    tagged = getattr(cluster.scheduler, "tagged_argv", None)
    if tagged is not None:
        out = cluster.login.run(tagged(), check=False, what="list hpclab jobs").stdout
        ids = {r.job_id for r in found}
        for session_id, job_id in cluster.scheduler.parse_tagged(out):  # type: ignore[attr-defined]
            if job_id not in known and job_id not in ids:
                found.append(RemoteSession(session_id, job_id, None))
    return found


def cancel_orphan(cluster: Cluster, orphan: RemoteSession) -> JobInfo:
    info = cluster.cancel(orphan.job_id)
    cluster.remove_session_dir(orphan.id)
    return info
