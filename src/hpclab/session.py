"""The use cases: attach, stop, list, cleanup, logs, url (and `up` in launch.py). Each takes a
Context and returns data; progress goes through the Context's callbacks; nothing here prints.
cli.py decides how results look.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from . import profiles
from .cluster import Cluster, RemoteSession, Report, extra_tunnel, quiet, tunnel_for
from .errors import ConfigError, ForwardTaken, HpclabError, JobEndedError, JobFailedError, NotFoundError
from .paths import Paths
from .profiles import Profile
from .redact import redact, register
from .remote import Counters, Remote, SshRemote
from .schedulers import JobInfo, JobState
from .sessiondir import SessionDir
from .sshconfig import drop_block
from .state import CorruptRecord, SessionRecord, Store
from .tunnel import Tunnel, free_local_port, probe, wait_ready
from .watch import Watch

log = logging.getLogger(__name__)

Connector = Callable[[str, tuple[str, ...]], Remote]  # (host, ssh_options) -> the login node


@dataclass
class Context:
    """What every use case needs: where hpclab's files are, how to reach a login node, and
    how to tell the user what happens. The CLI makes one with SSH; tests with LocalRemote."""

    paths: Paths
    connect: Connector
    report: Report = quiet  # progress: (phase, detail)
    info: Callable[[str], None] = log.info  # a line for the user
    warn: Callable[[str], None] = log.warning
    error: Callable[[str, str | None], None] = lambda message, hint: log.error("%s (%s)", message, hint)
    # Cleanup that must finish runs inside it (the CLI ignores further Ctrl-C there).
    shield: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext

    @classmethod
    def ssh(cls, paths: Paths, **kw: Any) -> Context:
        """The real thing: the system ssh, one ControlMaster per login node."""
        counters = Counters()  # what this command cost, over all its connections
        # One SshRemote per login node and options in a command, so that its rule of one visible
        # re-login (SshRemote.connect) holds for the whole command.
        remotes: dict[tuple[str, tuple[str, ...]], SshRemote] = {}

        def connect(host: str, opts: tuple[str, ...]) -> Remote:
            if (host, opts) not in remotes:
                remotes[host, opts] = SshRemote(host, opts, paths.control_dir, counters=counters,
                                                notify=lambda message: ctx.report("reconnect", message))
            return remotes[host, opts]

        ctx = cls(paths, connect, **kw)
        return ctx

    @property
    def store(self) -> Store:
        return Store(self.paths)

    def cluster(self, host: str, ssh_options: tuple[str, ...] | list[str], scheduler: str) -> Cluster:
        return Cluster(self.connect(host, tuple(ssh_options)), scheduler)

    def cluster_for(self, rec: SessionRecord) -> Cluster:
        return self.cluster(rec.host, rec.ssh_options, rec.scheduler)

    def profile(self, name: str, flags: dict[str, object] | None = None) -> Profile:
        return profiles.resolve(name, self.paths.config_file, flags)

    def close_unused(self, cluster: Cluster) -> None:
        """Close the connections no remaining session needs: a node connection goes with the
        last socket session on that node, the login master with the last session of its cluster."""
        left = [r for r in self.store.all() if r.host == cluster.login.host]
        cluster.close(keep={r.node for r in left if r.transport == "socket" and r.node})
        if not left:
            cluster.login.close()


def find(store: Store, session_id: str) -> SessionRecord:
    """The session `session_id` names: its id, a unique prefix of it, or its job id."""
    record = store.load(session_id)
    if record is None:
        matches = [r for r in store.all() if r.id.startswith(session_id) or r.job_id == session_id]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(r.id for r in store.all()) or "none"
        raise NotFoundError(f"no session {session_id!r}", hint=f"sessions known here: {known} (see `hpclab list`)")
    return record


def stop_session(ctx: Context, rec: SessionRecord, cluster: Cluster, *, tunnel: Tunnel | None = None) -> JobInfo | None:
    """Cancel the job (waiting until the scheduler says it ended), then forget the session
    (see forget). Safe to repeat."""
    info = None
    if rec.job_id:
        info = cluster.status([rec.job_id])[rec.job_id]
        if not info.state.ended:
            info = cluster.cancel(rec.job_id)
    forget(ctx, rec, cluster, tunnel=tunnel)
    return info


def forget(ctx: Context, rec: SessionRecord, cluster: Cluster, *, tunnel: Tunnel | None = None) -> None:
    """A session whose job has ended (or was cancelled): close its forward, remove its files on
    both sides, and close the connections no other session needs. Safe to repeat."""
    if tunnel is None and rec.local_port and (rec.port or rec.socket):
        tunnel = tunnel_for(cluster, rec)
    if tunnel is not None:
        tunnel.close()
    for entry in rec.forwards:  # `hpclab forward`'s
        extra_tunnel(cluster, rec, entry).close()
    cluster.remove_session_dir(rec.id)
    ctx.store.delete(rec.id)
    (ctx.paths.state_dir / "open" / f"{rec.id}.html").unlink(missing_ok=True)
    drop_block(ctx.paths.state_dir, rec)
    ctx.close_unused(cluster)


# -- stop -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stopped:
    id: str
    job_id: str | None
    state: str  # the job's state after the stop, "none" when it had no job


def stop(ctx: Context, session_id: str | None = None, *, every: bool = False,
         profile: str | None = None) -> list[Stopped]:
    """Stop one session, or every session (of `profile`)."""
    store = ctx.store
    if every:
        records = [r for r in store.all() if not profile or r.profile == profile]
    elif session_id:
        records = [find(store, session_id)]
    else:
        raise ConfigError("say which session to stop", hint="hpclab stop ID, or hpclab stop --all")
    results = []
    with ctx.shield():
        for rec in records:
            ctx.report("stop", f"stopping session {rec.id} (job {rec.job_id})")
            cluster = ctx.cluster_for(rec)
            info = stop_session(ctx, rec, cluster)
            results.append(Stopped(rec.id, rec.job_id, info.state.value if info else "none"))
    return results


# -- list -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    record: SessionRecord
    state: str  # the scheduler's word now: pending, running, completed, ..., unknown
    tunnel: str  # up, down (hpclab does not hold it now), taken (another program has its port), none
    time_left: int | None


@dataclass(frozen=True)
class Listing:
    rows: list[Row]
    problems: list[CorruptRecord]


def list_sessions(ctx: Context, profile: str | None = None) -> Listing:
    """Every session with its live state: one scheduler query per cluster. A session whose
    job has ended is shown once, then forgotten (its forward closed, its files on both sides
    removed, connections no other session needs closed). The token goes only to a forward
    hpclab has just proven to hold (tunnel_state)."""
    store = ctx.store
    records = [r for r in store.all() if not profile or r.profile == profile]
    problems = list(store.problems)
    groups: dict[tuple[str, tuple[str, ...], str], list[SessionRecord]] = {}
    for rec in records:
        groups.setdefault((rec.host, tuple(rec.ssh_options), rec.scheduler), []).append(rec)
    rows = []
    for (host, opts, sched), recs in groups.items():
        cluster = ctx.cluster(host, opts, sched)
        ids = [r.job_id for r in recs if r.job_id]
        try:
            infos = cluster.status(ids) if ids else {}
        except HpclabError as exc:
            ctx.warn(f"cannot ask {host} about its jobs: {exc.message}")
            infos = {}
        for rec in recs:
            info = infos.get(rec.job_id or "")
            ended = bool(info and info.state.ended)
            tunnel = "none" if ended else tunnel_state(cluster, rec)
            rows.append(Row(rec, info.state.value if info else "unknown", tunnel, info.time_left if info else None))
            if ended:
                forget(ctx, rec, cluster)
    return Listing(rows, problems)


def tunnel_state(cluster: Cluster, rec: SessionRecord) -> str:
    """up, down, taken or none: whether hpclab holds the session's forward now and the lab
    answers through it. The master must confirm the forward before the token is sent."""
    if not (rec.local_port and (rec.port or rec.socket)):
        return "none"
    try:
        tunnel_for(cluster, rec).hold()
    except ForwardTaken:
        return "taken"
    except HpclabError as exc:
        log.debug("forward of %s not held: %s", rec.id, exc)
        return "down"
    return "up" if probe(rec.local_port, rec.token, timeout=2, app=rec.app) == 200 else "down"


# -- url and logs -----------------------------------------------------------------------------


def url(ctx: Context, session_id: str) -> SessionRecord:
    """The session whose URL (with its token) the user asks for, once hpclab holds its forward
    and the lab answers through it (re-forwarded, on another port if need be: see reattach)."""
    rec = find(ctx.store, session_id)
    if not rec.local_port:
        raise NotFoundError(f"session {rec.id} has no tunnel", hint=f"hpclab attach {rec.id}")
    return reattach(ctx, rec, ctx.cluster_for(rec))


LOG_FILES = (SessionDir.output, SessionDir.error)


def logs(ctx: Context, session_id: str, lines: int = 200) -> list[tuple[str, str]]:
    """(file name, last `lines` lines) of the job's output and error, the token masked."""
    rec = find(ctx.store, session_id)
    cluster = ctx.cluster_for(rec)
    return [(name, redact(cluster.tail(rec.id, name, lines), rec.token)) for name in LOG_FILES]


def follow_logs(ctx: Context, session_id: str, *, every: float = 2.0,
                sleep: Callable[[float], None] = time.sleep) -> Iterator[str]:
    """New text of the job's output and error as it comes (token masked), until the caller stops."""
    rec = find(ctx.store, session_id)
    cluster = ctx.cluster_for(rec)
    seen = {name: len(cluster.tail(rec.id, name, 100000)) for name in LOG_FILES}
    while True:
        sleep(every)
        for name in LOG_FILES:
            text = cluster.tail(rec.id, name, 100000)
            if len(text) > seen[name]:
                yield redact(text[seen[name]:], rec.token)
                seen[name] = len(text)


# -- attach -----------------------------------------------------------------------------------


def record_from_remote(found: RemoteSession, profile: Profile, token: str) -> SessionRecord:
    """A local record for a session found on the cluster (attach from a second computer)."""
    rdv = found.rendezvous
    assert rdv is not None
    return SessionRecord(
        id=found.id, profile=profile.name, host=profile.host, ssh_options=list(profile.ssh_options),
        scheduler=profile.scheduler, job_id=found.job_id, state="running", token=token, created=time.time(),
        transport=rdv.transport, node=rdv.node, jupyter_server=rdv.jupyter_server or None,
        app=rdv.app, app_version=rdv.app_version or None,
        socket=rdv.socket if rdv.transport == "socket" else None,
        address=rdv.address if rdv.transport == "tcp" else None,
        port=rdv.port if rdv.transport == "tcp" else None,
    )


def discover(ctx: Context, profile_name: str, session_id: str | None = None) -> SessionRecord:
    """Find the user's running session on a profile's cluster (no local record needed) and
    keep a local record of it."""
    profile = ctx.profile(profile_name)
    cluster = ctx.cluster(profile.host, profile.ssh_options, profile.scheduler)
    if cluster.auto:
        profile = dataclasses.replace(profile, scheduler=cluster.detect())
    ctx.report("discover", f"looking for your sessions on {profile.host}")
    found = [r for r in ours(cluster) if r.alive and r.rendezvous]
    if session_id:
        found = [r for r in found if r.id == session_id or r.job_id == session_id]
    if not found:
        raise NotFoundError(f"no running hpclab session of yours on {profile.host}",
                            hint=f"start one with `hpclab up {profile.name}`")
    if len(found) > 1:
        listing = "\n".join(f"{r.id}  job {r.job_id} on {r.rendezvous.node if r.rendezvous else '?'}" for r in found)
        raise ConfigError(f"{len(found)} sessions run on {profile.host}; say which one",
                          hint=f"hpclab attach --profile {profile.name} ID, with ID one of:\n{listing}")
    token = cluster.read_token(found[0].id)
    rec = record_from_remote(found[0], profile, token)
    ctx.store.save(rec)
    return rec


class Attachment:
    """`hpclab attach`: bring a running session's tunnel back; then, in the foreground,
    keep it healthy until Ctrl-C (which closes the tunnel and leaves the session running)."""

    def __init__(self, ctx: Context, session_id: str | None, profile: str | None = None) -> None:
        self.ctx = ctx
        store = ctx.store
        rec = store.load(session_id) if session_id else None
        if rec is None and session_id and not profile:
            rec = find(store, session_id)
        if rec is None:
            if not profile:
                raise ConfigError("say which session to attach to",
                                  hint="hpclab attach ID, or hpclab attach --profile P")
            rec = discover(ctx, profile, session_id)
        register(rec.token)  # no log line shows it
        self.record = rec
        self.cluster = ctx.cluster_for(rec)

    def open(self) -> SessionRecord:
        """The tunnel up and the lab answering through it. Raises JobEndedError (and forgets
        the session) if the job has ended."""
        self.record = reattach(self.ctx, self.record, self.cluster)
        return self.record

    def watch(self) -> None:
        """Until the job ends: then its forward and connections are closed, and JobEndedError says why."""
        try:
            warnings = self.ctx.profile(self.record.profile).walltime_warnings
        except ConfigError:  # attaching works without the profile; its warnings fall back to the defaults
            warnings = Profile(name=self.record.profile, host=self.record.host).walltime_warnings
        rec = self.record
        try:
            Watch(rec, self.cluster, report=self.ctx.report, warnings=warnings,
                  moved=lambda port: self.ctx.store.update(rec.id, local_port=port)).run()
        except JobEndedError:
            with self.ctx.shield():
                forget(self.ctx, rec, self.cluster)
            raise

    def detach(self) -> None:
        """Close the tunnel; the session keeps running, without a forward (list shows none)."""
        with self.ctx.shield():
            if self.record.local_port:
                tunnel_for(self.cluster, self.record).close()
            self.record.local_port = None
            with contextlib.suppress(NotFoundError, CorruptRecord):
                self.ctx.store.update(self.record.id, local_port=None)
            self.ctx.close_unused(self.cluster)


def reattach(ctx: Context, rec: SessionRecord, cluster: Cluster) -> SessionRecord:
    """Bring the tunnel of a running session back and probe the lab through it. The token goes
    only to a forward hpclab has just proven to hold: when another program has taken the old
    local port, the forward moves to a free one and the user is told. Raises JobEndedError (and
    forgets the session) if the job has ended."""
    assert rec.job_id
    ctx.report("connect", f"connecting to {rec.host}")
    cluster.login.connect()
    # One round trip: the job's state and its end marker. A running job without an end marker
    # still runs the Jupyter that listens where the rendezvous says (in tcp mode, the node's
    # port is not re-forwarded once that Jupyter is gone: another user may hold it by then).
    snap = cluster.poll(rec.id, 0, False, rec.job_id)
    info = snap.job or JobInfo(rec.job_id, JobState.UNKNOWN)
    if info.state.ended or snap.ended:
        forget(ctx, rec, cluster)
        why = cluster.final_state(info).state.reason if info.state.ended else "Jupyter has exited"
        raise JobEndedError(f"session {rec.id} has ended: {why}", hint="start a new one with `hpclab up PROFILE`")
    if not (rec.port or rec.socket):
        raise JobFailedError(f"session {rec.id} has no running Jupyter yet",
                             hint=f"wait a moment, or look at `hpclab logs {rec.id}`")
    if rec.local_port:
        try:
            tunnel_for(cluster, rec).hold()
            if probe(rec.local_port, rec.token, app=rec.app) == 200:
                ctx.report("tunnel", f"tunnel up on 127.0.0.1:{rec.local_port}")
                reopen_forwards(ctx, cluster, rec)
                return rec
        except ForwardTaken:
            ctx.warn(f"127.0.0.1:{rec.local_port} is held by another program: hpclab sends it nothing "
                     "and forwards the lab to another port")
        except HpclabError as exc:
            log.debug("forward of %s not held: %s", rec.id, exc)
        tunnel_for(cluster, rec).close()
    old = rec.local_port
    rec.local_port = open_forward(cluster, rec, free_local_port(rec.local_port))
    if not wait_ready(rec.local_port, rec.token, timeout=30, app=rec.app):
        raise JobFailedError(f"session {rec.id} does not answer through the tunnel",
                             hint=f"look at `hpclab logs {rec.id}`, or stop it with `hpclab stop {rec.id}`")
    rec.state = "running"
    ctx.store.update(rec.id, local_port=rec.local_port, state=rec.state)
    reopen_forwards(ctx, cluster, rec)
    moved = f" (was 127.0.0.1:{old}; the old URL no longer works)" if old and old != rec.local_port else ""
    ctx.report("tunnel", f"tunnel up on 127.0.0.1:{rec.local_port}{moved}")
    return rec


def open_forward(cluster: Cluster, rec: SessionRecord, port: int, tries: int = 5) -> int:
    """Open the session's forward on `port`, or on another free port when a program takes
    that one first (between our check and ssh's bind); the port it holds."""
    for _ in range(tries):
        rec.local_port = port
        try:
            tunnel_for(cluster, rec).open()
            return port
        except ForwardTaken:
            port = free_local_port()
    raise ForwardTaken(f"no free local port held for session {rec.id} after {tries} tries")


def reopen_forwards(ctx: Context, cluster: Cluster, rec: SessionRecord) -> None:
    """After a reattach: bring the session's extra forwards (`hpclab forward`) back on their
    local ports; one whose port another program took now is dropped, and the user told."""
    if not rec.forwards:
        return
    kept = []
    for entry in rec.forwards:
        try:
            extra_tunnel(cluster, rec, entry).hold()
            kept.append(entry)
        except ForwardTaken:
            ctx.warn(f"127.0.0.1:{entry['local_port']} (port {entry['node_port']} of {rec.node}) is held by "
                     f"another program now; `hpclab forward {rec.id} {entry['node_port']}` forwards it again")
        except HpclabError as exc:
            log.debug("extra forward %s not restored: %s", entry, exc)
            kept.append(entry)
    if kept != rec.forwards:
        rec.forwards = kept
        ctx.store.update(rec.id, forwards=kept)


# -- cleanup ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Orphan:
    profile: str
    host: str
    id: str
    job_id: str
    cancelled: bool = False


def cleanup(ctx: Context, profile: str | None, confirm: Callable[[Orphan], bool]) -> list[Orphan]:
    """hpclab jobs of the user that no local record covers, on `profile`'s cluster (or every
    profile's), each cancelled when `confirm` says so."""
    names = [profile] if profile else sorted(profiles.load_profiles(ctx.paths.config_file))
    seen: set[tuple[str, tuple[str, ...]]] = set()
    report = []
    for name in names:
        prof = ctx.profile(name)
        if (prof.host, prof.ssh_options) in seen:
            continue
        seen.add((prof.host, prof.ssh_options))
        cluster = ctx.cluster(prof.host, prof.ssh_options, prof.scheduler)
        if cluster.auto:
            cluster.detect()
        ctx.report("cleanup", f"looking for stray hpclab jobs on {prof.host}")
        for found in orphans(ctx.store, cluster):
            orphan = Orphan(name, prof.host, found.id, found.job_id)
            if confirm(orphan):
                cluster.cancel(found.job_id)
                cluster.remove_session_dir(found.id)
                orphan = dataclasses.replace(orphan, cancelled=True)
            report.append(orphan)
        ctx.close_unused(cluster)
    return report


def orphans(store: Store, cluster: Cluster) -> list[RemoteSession]:
    """hpclab jobs of the user on this cluster that no local record covers."""
    known = {r.job_id for r in store.all() if r.host == cluster.login.host}
    return [r for r in ours(cluster) if r.alive and r.job_id not in known]


def ours(cluster: Cluster) -> list[RemoteSession]:
    """The user's hpclab sessions on this cluster: a session directory of the user's own (links
    and other users' directories are not read, see cluster.py) whose job, where the scheduler
    can list jobs by name, is named exactly hpclab-<that session's id>. A tagged job without
    its directory, or a directory naming a job with another name, is not hpclab's to touch."""
    found = cluster.discover()
    tagged = cluster.tagged() if found else None  # no directory, nothing to match: no query
    if tagged is None:
        return found
    tags = set(tagged)
    return [r for r in found if (r.id, r.job_id) in tags]
