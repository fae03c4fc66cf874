"""The cluster-side protocol: the shell programs hpclab runs on the login node, and the
Cluster object that runs them and the scheduler's queries through a Remote.

The shell programs are one line of POSIX sh without '!': they pass unchanged through any
login shell, csh included. Their file names come from SessionDir. Secrets and scripts travel
on stdin, never on a command line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, ProtocolError, RemoteError, SchedulerError
from .remote import Remote
from .schedulers import JobInfo, JobState, Scheduler, get
from .schedulers import names as scheduler_names
from .schedulers.detect import DETECT_SCRIPT, NONE_FOUND, parse_detect
from .sessiondir import NODE, ROOT, SESSION_ID, SESSIONS, Ended, Rendezvous, SessionDir
from .state import SessionRecord
from .tunnel import Tunnel

log = logging.getLogger(__name__)

Report = Callable[[str, str], None]  # progress: (phase, detail); the session layer never prints


def quiet(phase: str, detail: str) -> None:
    log.info("%s: %s", phase, detail)

_F = SessionDir  # the file names (class attributes)

# What hpclab reads or writes on the cluster must be its own making. With a loose ~/.hpclab
# (0777 by mistake) another user could plant a session directory, or a link, that names a job
# id, a node, a port or a token of their choosing. hpclab_own succeeds only when every path it
# is given is the user's own and not a symbolic link (-O follows links, hence -h first);
# hpclab_ok is true for a regular file when it, its directory, and ~/.hpclab and sessions
# above it pass; hpclab_cat prints such a file. Anything else reads as absent.
_OWN = (
    'hpclab_own() { for p; do [ -h "$p" ] && return 1; [ -O "$p" ] || return 1; done; }; '
    f'hpclab_ok() {{ hpclab_own "$HOME/{ROOT}" "$HOME/{SESSIONS}" "${{1%/*}}" "$1" && [ -f "$1" ]; }}; '
    'hpclab_cat() { hpclab_ok "$1" && cat "$1"; }; '
)
# The refusal SUBMIT prints (on stderr, exit status UNSAFE_STATUS): "hpclab-unsafe: DIR WHY",
# DIR relative to $HOME and WHY one of UNSAFE_WHY's keys.
UNSAFE_MARK = "hpclab-unsafe:"
UNSAFE_STATUS = 97
UNSAFE_WHY = {
    "link": "is a symbolic link",
    "owner": "is not a directory of yours",
    "writable": "is writable by other users",
}
# ~/.hpclab and its sessions directory are made here (umask 077) or, when they exist, used only
# if they are the user's own directories, not links, and writable by nobody else: such a one is
# tightened to 0700; any other is refused, nothing is written into it, the scheduler is not called.
# (ls -ld's mode string: group write is its 6th character, others' write its 9th.)
_SAFE_TREE = (
    f'for p in {ROOT} {SESSIONS}; do q="$HOME/$p"; '
    'if [ -h "$q" ]; then w=link; elif [ -e "$q" ]; then w=; { [ -d "$q" ] && [ -O "$q" ]; } || w=owner; '
    'case "$(ls -ld "$q")" in ?????w*|????????w*) w="${w:-writable}";; esac; else mkdir "$q" || exit 1; w=; fi; '
    f'[ -z "$w" ] || {{ printf "{UNSAFE_MARK} %s %s\\n" "$p" "$w" >&2; exit {UNSAFE_STATUS}; }}; done'
)
# $1 is the session id; the token is the first line of stdin, the job script the rest.
# The session directory and every file in it are private whatever the umask.
SUBMIT = (
    f'umask 077 && {_SAFE_TREE} && chmod 700 "$HOME/{ROOT}" "$HOME/{SESSIONS}" '
    f'&& d="$HOME/{SESSIONS}/$1" && mkdir "$d" && IFS= read -r t && printf %s "$t" > "$d/{_F.token}" '
    f'&& t= && cat > "$d/{_F.script}" && : > "$d/{_F.output}" && : > "$d/{_F.error}" && cd "$HOME" '
    f'&& {{ SUBMIT > "$d/{_F.submitted}" || {{ rc=$?; cat "$d/{_F.submitted}"; rm -rf "$d"; exit $rc; }}; }} '
    f'&& cat "$d/{_F.submitted}"'
)
# $1 session dir (relative to $HOME), $2 tenths of a second to wait at most, $3 1 to
# return as soon as the job has started; the rest is the scheduler's status argv (maybe none).
# A planted file does not end the wait early (hpclab_ok, not -e): `up` would poll in a tight loop.
# Waiting for the rendezvous ($3 0: Jupyter starting, seconds), it looks every 0.02 s, since the
# lab is ready when it is seen; waiting in the queue (minutes, maybe), every 0.1 s.
POLL = (
    _OWN + 'd="$HOME/$1"; n=$2; s=$3; t=0.1; shift 3; [ "$s" = 1 ] || { t=0.02; n=$((n * 5)); }; '
    'i=0; while [ "$i" -lt "$n" ]; do '
    f'hpclab_ok "$d/{_F.rendezvous}" && break; hpclab_ok "$d/{_F.ended}" && break; '
    f'[ "$s" = 1 ] && hpclab_ok "$d/{_F.started}" && break; sleep "$t" 2>/dev/null || sleep 1; i=$((i+1)); done; '
    f'for f in {_F.started} {_F.rendezvous} {_F.ended}; do printf "@@%s\\n" "$f"; '
    'hpclab_cat "$d/$f" 2>/dev/null; done; '
    'printf "@@status\\n"; "$@"'
)
# $1 a file of a session directory (relative to $HOME), $2 its new content.
WRITE_FILE = (
    _OWN + f'f="$HOME/$1"; umask 077 && hpclab_own "$HOME/{ROOT}" "$HOME/{SESSIONS}" "${{f%/*}}" '
    '&& printf %s "$2" > "$f.tmp" && mv -f "$f.tmp" "$f"'
)
# A link or someone else's directory at the session's path is left alone.
REMOVE_DIR = _OWN + f'hpclab_own "$HOME/{ROOT}" "$HOME/{SESSIONS}" "$HOME/$1" && rm -rf "$HOME/$1"; :'
TAIL = _OWN + 'f="$HOME/$1"; hpclab_ok "$f" && tail -n "$2" "$f" 2>/dev/null; :'
# Every session directory of the user: its id, what the submit command printed, its rendezvous.
DISCOVER = (
    _OWN + f'for d in "$HOME"/{SESSIONS}/*; do '
    f'hpclab_own "$d" && [ -d "$d" ] && hpclab_ok "$d/{_F.submitted}" || continue; '
    f'printf "@@session %s\\n" "${{d##*/}}"; hpclab_cat "$d/{_F.submitted}"; printf "@@rendezvous\\n"; '
    f'hpclab_cat "$d/{_F.rendezvous}" 2>/dev/null; done; :'
)
READ_FILE = _OWN + 'hpclab_cat "$HOME/$1"'


@dataclass(frozen=True)
class Snapshot:
    """What one poll saw: the session's files on the cluster and the scheduler's word."""

    started: str | None
    rendezvous: Rendezvous | None
    ended: Ended | None
    job: JobInfo | None


@dataclass
class RemoteSession:
    """A session directory found on the cluster, with its job's live state."""

    id: str
    job_id: str
    rendezvous: Rendezvous | None
    job: JobInfo | None = None

    @property
    def alive(self) -> bool:
        return self.job is None or not self.job.state.ended


def scheduler(name: str) -> Scheduler:
    """The scheduler called `name`; a ConfigError naming the known ones otherwise."""
    try:
        return get(name)
    except KeyError:
        raise ConfigError(f"unknown scheduler {name!r}", hint="known: " + ", ".join(scheduler_names())) from None


class Cluster:
    """The login node, its compute nodes and its scheduler, for one profile or session.
    Opens nothing until used."""

    def __init__(self, login: Remote, scheduler_name: str) -> None:
        self.login = login
        # "auto" is resolved by detect() on first contact
        self.auto = scheduler_name == "auto"
        self.scheduler: Scheduler = scheduler("slurm" if self.auto else scheduler_name)
        self._nodes: dict[str, Remote] = {}

    def node(self, node: str, user: str | None = None) -> Remote:
        """The connection to a compute node, through the login node (opened on first use).
        The name comes from the cluster (the job's files, the scheduler): ProtocolError unless
        it is a host name, so that it never becomes an ssh option or a path."""
        if not NODE.fullmatch(node):
            raise ProtocolError(f"the cluster named the job's node {node[:80]!r}, which is not a host name",
                                hint="hpclab connects only to node names of letters, digits, '.', '_' and '-'")
        # The job's user, the one its socket belongs to: the login node's account, whatever the
        # ssh config says for node names (a `Host node*` with another User would log in as
        # someone who cannot open the lab's socket, where the scheduler lets that one in too).
        user = user or self.login.user()
        dest = f"{user}@{node}" if user else node
        if dest not in self._nodes:
            self._nodes[dest] = self.login.hop(dest)
        return self._nodes[dest]

    def close(self, keep: set[str] | frozenset[str] = frozenset()) -> None:
        """Close the node connections, except to the nodes in `keep` (other sessions' tunnels
        run through them); the login master stays for other sessions."""
        for dest, node in self._nodes.items():
            if dest.rpartition("@")[2] not in keep:
                node.close()

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

    def submit(self, sdir: SessionDir, token: str, script: str) -> str:
        """Create the session directory, store token and script, submit; the job id."""
        program = SUBMIT.replace("SUBMIT", self.scheduler.submit_shell(f'"$d/{sdir.script}"'))
        try:
            out = self.login.shell(program, sdir.id, input=token + "\n" + script, what="submit")
        except RemoteError as exc:
            unsafe = unsafe_dir(exc)
            if unsafe:
                raise unsafe from None
            raise SchedulerError(
                f"{self.scheduler.title} refused the job",
                hint=(exc.stderr.strip() or exc.stdout.strip())[-800:] or None,
                stderr=exc.stderr,
            ) from None
        return self.scheduler.parse_submit(out.stdout)

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

    def cancel(self, job_id: str, timeout: float = 60, *, sleep: Callable[[float], None] = time.sleep) -> JobInfo:
        """Cancel and wait until the scheduler reports the job ended (or `timeout`)."""
        self.login.run(self.scheduler.cancel_argv(job_id), check=False, what="cancel")
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            info = self.status([job_id])[job_id]
            if info.state.ended or time.monotonic() > deadline:
                return info
            sleep(delay)
            delay = min(delay * 2, 2.0)

    def tagged(self) -> list[tuple[str, str]] | None:
        """(session id, job id) of the user's queued and running jobs named as hpclab names
        them; None where the scheduler cannot list jobs by name."""
        argv = self.scheduler.tagged_argv()
        if argv is None:
            return None
        return self.scheduler.parse_tagged(self.login.run(argv, check=False, what="list hpclab jobs").stdout)

    # -- session files ----------------------------------------------------------------

    def poll(self, session_id: str, wait: float, until_started: bool, job_id: str | None) -> Snapshot:
        """Wait up to `wait` s on the cluster for the job to start (or write its rendezvous,
        or end), then read its files and, with `job_id`, the scheduler's word: one round trip."""
        status = self.scheduler.status_argv([job_id]) if job_id else []
        out = self.login.shell(
            POLL, SessionDir(session_id).path, str(int(wait * 10)), "1" if until_started else "0",
            *status, check=False, what="poll", timeout=wait + 60,
        )
        return parse_snapshot(self.scheduler, out.stdout, out.returncode, job_id, session_id)

    def write_listen(self, session_id: str, transport: str) -> None:
        sdir = SessionDir(session_id)
        self.login.shell(WRITE_FILE, sdir.file(sdir.listen), transport, what="write listen file")

    def tail(self, session_id: str, name: str, lines: int = 20) -> str:
        return self.login.shell(TAIL, SessionDir(session_id).file(name), str(lines), check=False, what="tail").stdout

    def remove_session_dir(self, session_id: str) -> None:
        if SESSION_ID.fullmatch(session_id):  # never a path of anybody's choosing
            self.login.shell(REMOVE_DIR, SessionDir(session_id).path, check=False, what="cleanup")

    def discover(self) -> list[RemoteSession]:
        """The user's hpclab session directories on the cluster, with their job's live state."""
        out = self.login.shell(DISCOVER, what="list session directories").stdout
        found: list[RemoteSession] = []
        for chunk in out.split("@@session ")[1:]:
            head, _, rest = chunk.partition("\n")
            submitted, _, rdv = rest.partition("@@rendezvous\n")
            session_id = head.strip()
            if not SESSION_ID.fullmatch(session_id):
                continue
            try:
                job_id = self.scheduler.parse_submit(submitted)
                rendezvous = Rendezvous.parse(rdv, session_id) if rdv.strip() else None
            except (SchedulerError, ProtocolError) as exc:
                log.debug("ignoring session directory %s: %s", session_id, exc)
                continue
            found.append(RemoteSession(session_id, job_id, rendezvous))
        if found:
            infos = self.status([r.job_id for r in found])
            for r in found:
                r.job = infos.get(r.job_id)
        return found

    def read_token(self, session_id: str) -> str:
        sdir = SessionDir(session_id)
        return self.login.shell(READ_FILE, sdir.file(sdir.token), what="read the session token").stdout


def unsafe_dir(exc: RemoteError) -> ConfigError | None:
    """The refusal of SUBMIT's checks of ~/.hpclab, as an error that says what to do; None
    for any other failure."""
    if exc.returncode != UNSAFE_STATUS:
        return None
    for line in exc.stderr.splitlines():
        if line.startswith(UNSAFE_MARK):
            path, _, why = line[len(UNSAFE_MARK):].strip().rpartition(" ")
            if path in (ROOT, SESSIONS) and why in UNSAFE_WHY:
                break
    else:
        return None
    fix = {
        "link": f"remove the link (rm ~/{path}) after checking where it points; hpclab makes the directory again",
        "owner": f"move ~/{path} out of the way (mv ~/{path} ~/{path}.suspect) and ask your admins who made it",
        "writable": f"look at what it holds (ls -la ~/{ROOT} ~/{SESSIONS}): if every entry is yours, "
                    f"chmod 700 ~/{ROOT} ~/{SESSIONS}; otherwise move ~/{ROOT} out of the way",
    }[why]
    return ConfigError(f"~/{path} on the cluster {UNSAFE_WHY[why]}: hpclab does not use it, "
                       "since someone else could have put files there", hint=fix)


def parse_snapshot(scheduler: Scheduler, stdout: str, returncode: int, job_id: str | None,
                   session_id: str | None = None) -> Snapshot:
    """Split the POLL program's output into its @@-headed sections."""
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
    rdv = sections.get(_F.rendezvous, "")
    ended = sections.get(_F.ended, "")
    started = sections.get(_F.started, "").strip() or None
    if started is not None and not NODE.fullmatch(started):
        raise ProtocolError(f"the session's started file names node {started[:80]!r}, which is not a host name")
    return Snapshot(
        started=started,
        rendezvous=Rendezvous.parse(rdv, session_id) if rdv.strip() else None,
        ended=Ended.parse(ended) if ended.strip() else None,
        job=job,
    )


def tunnel_for(cluster: Cluster, rec: SessionRecord) -> Tunnel:
    """The forward of a session: to the node's socket through the node connection, or to
    address:port through the login node."""
    assert rec.local_port
    if rec.transport == "socket":
        return Tunnel(cluster.node(rec.node or ""), rec.local_port, rec.socket or "")
    return Tunnel(cluster.login, rec.local_port, f"{rec.address}:{rec.port}")


def extra_tunnel(cluster: Cluster, rec: SessionRecord, entry: dict[str, Any]) -> Tunnel:
    """One of the session's extra forwards (`hpclab forward`): through the node's connection or
    the login's, as it was made."""
    via = cluster.node(rec.node or "") if entry.get("via") == "node" else cluster.login
    return Tunnel(via, int(entry["local_port"]), str(entry["target"]))
