"""The command line. The only module that prints or exits: every failure arrives here as an
HpclabError and leaves as a message, a hint and an exit code."""

from __future__ import annotations

import argparse
import dataclasses
import html
import logging
import os
import signal
import sys
import time
import webbrowser
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from . import __version__, profiles, session
from .errors import ConfigError, ExitCode, HpclabError, Interrupted, NotFoundError
from .paths import Paths, private_dir, write_private
from .remote import Counters
from .state import SessionRecord, Store
from .timefmt import human, parse_duration
from .tunnel import probe
from .ui import Console, mask, setup_logging

log = logging.getLogger("hpclab")


# -- signals --------------------------------------------------------------------------------


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(f"received {signal.Signals(signum).name}")


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGHUP end the foreground work like Ctrl-C does: through cleanup."""
    old = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def shielded(console: Console) -> Iterator[None]:
    """Cleanup must finish: further Ctrl-C, SIGTERM and SIGHUP are acknowledged, not obeyed."""

    def note(signum: int, frame: object) -> None:
        console.warn("still cleaning up so that no job is left running; please wait")

    old = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- helpers ----------------------------------------------------------------------------------


def _paths() -> Paths:
    return Paths.from_env()


def _profile(args: argparse.Namespace, paths: Paths) -> profiles.Profile:
    flags = {
        "time": getattr(args, "time", None),
        "partition": getattr(args, "partition", None),
        "account": getattr(args, "account", None),
        "cpus": getattr(args, "cpus", None),
        "mem": getattr(args, "mem", None),
        "gpus": getattr(args, "gpus", None),
        "notebook_dir": getattr(args, "notebook_dir", None),
        "transport": getattr(args, "transport", None),
        "max_wait": getattr(args, "max_wait", None),
        "local_port": getattr(args, "local_port", None),
    }
    return profiles.resolve(args.profile, paths.config_file, flags)


def _find(store: Store, session_id: str) -> SessionRecord:
    record = store.load(session_id)
    if record is None:
        matches = [r for r in store.all() if r.id.startswith(session_id) or r.job_id == session_id]
        if len(matches) == 1:
            return matches[0]
        known = ", ".join(r.id for r in store.all()) or "none"
        raise NotFoundError(f"no session {session_id!r}", hint=f"sessions known here: {known} (see `hpclab list`)")
    return record


def _summary(rec: SessionRecord, state: str | None = None) -> dict[str, Any]:
    return {
        "id": rec.id,
        "profile": rec.profile,
        "job_id": rec.job_id,
        "node": rec.node,
        "transport": rec.transport,
        "local_port": rec.local_port,
        "url": rec.url,
        "state": state or rec.state,
        "scheduler": rec.scheduler,
        "host": rec.host,
        "jupyter_server": rec.jupyter_server,
    }


def _open_browser(console: Console, paths: Paths, rec: SessionRecord) -> None:
    """Open the lab through a private local redirect file, as Jupyter itself does: the
    browser's command line then carries a file path, not the token."""
    if not rec.url:
        return
    private_dir(paths.state_dir / "open")
    page = paths.state_dir / "open" / f"{rec.id}.html"
    url = html.escape(rec.url, quote=True)
    write_private(page, f'<!DOCTYPE html><html><head><meta charset="utf-8">'
                        f'<meta http-equiv="refresh" content="0;url={url}"><title>hpclab</title></head>'
                        f'<body><a href="{url}">Open JupyterLab</a></body></html>\n')
    try:
        opened = webbrowser.open(page.as_uri())
    except webbrowser.Error:
        opened = False
    if not opened:
        console.info("no browser could be opened here; open the URL above yourself")


# -- up ---------------------------------------------------------------------------------------


def _add_up(sub: Any) -> None:
    p = sub.add_parser("up", help="start JupyterLab on a compute node and tunnel to it")
    p.add_argument("profile", help="a profile name from the config file")
    p.add_argument("--time", help="time limit, e.g. 01:30:00, 90m, 2h")
    p.add_argument("--partition", help="partition or queue")
    p.add_argument("--account", help="account or project to charge")
    p.add_argument("--cpus", type=int, help="CPU cores")
    p.add_argument("--mem", help="memory, e.g. 8G")
    p.add_argument("--gpus", help="GPUs, a count or type:count")
    p.add_argument("--notebook-dir", help="directory JupyterLab opens in (on the cluster)")
    p.add_argument("--transport", choices=profiles.TRANSPORTS, help="how the tunnel reaches Jupyter")
    p.add_argument("--max-wait", help="cancel the job if it has not started after this long, e.g. 10m")
    p.add_argument("--local-port", type=int, help="local port for the tunnel")
    p.add_argument("--no-browser", action="store_true", help="print the URL, do not open a browser")
    p.add_argument("--detach", action="store_true", help="return once the lab is ready; keep it running")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=_cmd_up)


def _cmd_up(args: argparse.Namespace, console: Console) -> int:
    paths = _paths()
    profile = _profile(args, paths)
    store = Store(paths)
    launch = session.Launch(profile, paths, store, report=console.status, counters=Counters())
    mask(launch.record.token)
    rec = launch.record
    try:
        with interruptible():
            rec = launch.run()
            for warning in launch.warnings:
                console.warn(warning)
            rec.detached = args.detach
            store.save(rec)
            if args.json:
                console.json(_summary(rec) | {
                    "timings": {k: round(v, 3) for k, v in launch.timings.phases.items()},
                    "stats": {"ssh_connects": launch.counters.connects, "ssh_commands": launch.counters.commands,
                              "scheduler_queries": launch.timings.scheduler_queries},
                })
            else:
                console.result(f"JupyterLab is ready: {rec.url}")
            if not args.no_browser:
                _open_browser(console, paths, rec)
            if args.detach:
                if not args.json:
                    console.info(f"session {rec.id} (job {rec.job_id}) keeps running; "
                                 f"stop it with: hpclab stop {rec.id}")
                return ExitCode.OK
            console.info(f"press Ctrl-C to stop the session; job {rec.job_id} will be cancelled")
            session.Watch(rec, launch.cluster, report=console.status,
                          warnings=profile.walltime_warnings).run()
    except (KeyboardInterrupt, Exception) as exc:  # every way out goes through cleanup
        with shielded(console):
            if isinstance(exc, (KeyboardInterrupt, Interrupted)):
                console.info("stopping: cancelling the job and removing the session's files")
            try:
                launch.abort()
            except HpclabError as cleanup_error:
                console.error(f"cleanup failed: {cleanup_error.message}", cleanup_error.hint)
                console.error(f"the job may still exist: check with `hpclab list` and `hpclab stop {rec.id}`")
            else:
                _close_master_if_unused(launch.cluster, store)
                if isinstance(exc, (KeyboardInterrupt, Interrupted)):
                    job = f"job {rec.job_id} cancelled, " if rec.job_id else ""
                    raise Interrupted(f"stopped: {job}session {rec.id} removed") from None
        if isinstance(exc, KeyboardInterrupt):
            raise Interrupted("interrupted") from None
        raise
    return ExitCode.OK


def _close_master_if_unused(cluster: session.Cluster, store: Store) -> None:
    if not any(r.host == cluster.login.host for r in store.all()):
        cluster.login.close()


# -- attach -----------------------------------------------------------------------------------


def _add_attach(sub: Any) -> None:
    p = sub.add_parser("attach", help="reconnect to a running session (also from another computer)")
    p.add_argument("id", nargs="?", help="session id; optional with --profile when only one runs")
    p.add_argument("--profile", help="find the session on this profile's cluster (no local record needed)")
    p.add_argument("--no-browser", action="store_true")
    p.add_argument("--detach", action="store_true", help="return once the lab answers; keep the tunnel")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_attach)


def _cmd_attach(args: argparse.Namespace, console: Console) -> int:
    paths = _paths()
    store = Store(paths)
    rec = None
    if args.id:
        rec = store.load(args.id)
        if rec is None and not args.profile:
            rec = _find(store, args.id)
    if rec is None:
        if not args.profile:
            raise ConfigError("say which session to attach to", hint="hpclab attach ID, or hpclab attach --profile P")
        rec = _discover(args, paths, store, console)
    mask(rec.token)
    cluster = session.Cluster.for_record(rec, paths)
    try:
        walltime = profiles.resolve(rec.profile, paths.config_file).walltime_warnings
    except ConfigError:  # attaching works without the profile; its warnings fall back to the defaults
        walltime = profiles.Profile(name=rec.profile, host=rec.host).walltime_warnings
    with interruptible():
        try:
            rec = session.reattach(rec, cluster, store, report=console.status)
            rec.detached = True
            store.save(rec)
            if args.json:
                console.json(_summary(rec))
            else:
                console.result(f"JupyterLab is ready: {rec.url}")
            if not args.no_browser:
                _open_browser(console, paths, rec)
            if args.detach:
                return ExitCode.OK
            console.info(f"press Ctrl-C to close the tunnel; the session keeps running (hpclab stop {rec.id} ends it)")
            session.Watch(rec, cluster, report=console.status, warnings=walltime).run()
        except (KeyboardInterrupt, Interrupted):
            with shielded(console):
                session.tunnel_for(cluster, rec).close()
                cluster.close()
            console.info(f"tunnel closed; session {rec.id} keeps running")
            return ExitCode.OK
    return ExitCode.OK


def _discover(args: argparse.Namespace, paths: Paths, store: Store, console: Console) -> SessionRecord:
    profile = profiles.resolve(args.profile, paths.config_file)
    cluster = session.Cluster(profile.host, profile.ssh_options, profile.scheduler, paths)
    if cluster.auto:
        profile = dataclasses.replace(profile, scheduler=cluster.detect())
    console.status("discover", f"looking for your sessions on {profile.host}")
    found = [r for r in cluster.discover() if r.alive and r.rendezvous]
    if args.id:
        found = [r for r in found if r.id == args.id or r.job_id == args.id]
    if not found:
        raise NotFoundError(f"no running hpclab session of yours on {profile.host}",
                            hint=f"start one with `hpclab up {profile.name}`")
    if len(found) > 1:
        listing = "\n".join(f"{r.id}  job {r.job_id} on {(r.rendezvous or {}).get('node')}" for r in found)
        raise ConfigError(f"{len(found)} sessions run on {profile.host}; say which one",
                          hint=f"hpclab attach --profile {profile.name} ID, with ID one of:\n{listing}")
    chosen = found[0]
    token = cluster.read_token(chosen.id)
    rec = session.record_from_remote(chosen, profile, token)
    store.save(rec)
    return rec


# -- cleanup ----------------------------------------------------------------------------------


def _add_cleanup(sub: Any) -> None:
    p = sub.add_parser("cleanup", help="find hpclab jobs no session record covers and cancel them")
    p.add_argument("--profile", help="the cluster to look at (default: every profile's)")
    p.add_argument("--yes", action="store_true", help="cancel without asking")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_cleanup)


def _cmd_cleanup(args: argparse.Namespace, console: Console) -> int:
    paths = _paths()
    store = Store(paths)
    names = [args.profile] if args.profile else sorted(profiles.load_profiles(paths.config_file))
    seen: set[tuple[str, tuple[str, ...]]] = set()
    report = []
    for name in names:
        profile = profiles.resolve(name, paths.config_file)
        key = (profile.host, profile.ssh_options)
        if key in seen:
            continue
        seen.add(key)
        cluster = session.Cluster(profile.host, profile.ssh_options, profile.scheduler, paths)
        if cluster.auto:
            cluster.detect()
        console.status("cleanup", f"looking for stray hpclab jobs on {profile.host}")
        for orphan in session.orphans(cluster, store):
            entry = {"profile": name, "id": orphan.id, "job_id": orphan.job_id, "cancelled": False}
            question = f"cancel job {orphan.job_id} (hpclab session {orphan.id}) on {profile.host}? [y/N] "
            if args.yes or (sys.stdin.isatty() and input(question).strip().lower() in ("y", "yes")):
                session.cancel_orphan(cluster, orphan)
                entry["cancelled"] = True
                if not args.json:
                    console.info(f"cancelled job {orphan.job_id} (session {orphan.id})")
            elif not args.json:
                console.info(f"left job {orphan.job_id} (session {orphan.id}); `hpclab cleanup --yes` cancels it")
            report.append(entry)
        _close_master_if_unused(cluster, store)
    if args.json:
        console.json(report)
    elif not report:
        console.info("no stray hpclab jobs")
    return ExitCode.OK


# -- stop -------------------------------------------------------------------------------------


def _add_stop(sub: Any) -> None:
    p = sub.add_parser("stop", help="cancel a session's job and remove its tunnel and files")
    p.add_argument("id", nargs="?", help="session id (see hpclab list)")
    p.add_argument("--all", action="store_true", help="stop every session (of --profile, if given)")
    p.add_argument("--profile", help="with --all: only this profile's sessions")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_stop)


def _cmd_stop(args: argparse.Namespace, console: Console) -> int:
    paths = _paths()
    store = Store(paths)
    if args.all:
        records = [r for r in store.all() if not args.profile or r.profile == args.profile]
    elif args.id:
        records = [_find(store, args.id)]
    else:
        raise ConfigError("say which session to stop", hint="hpclab stop ID, or hpclab stop --all")
    results = []
    with shielded(console):
        for rec in records:
            console.status("stop", f"stopping session {rec.id} (job {rec.job_id})")
            cluster = session.Cluster.for_record(rec, paths)
            info = session.stop_session(rec, cluster, store)
            _close_master_if_unused(cluster, store)
            results.append({"id": rec.id, "job_id": rec.job_id, "state": info.state.value if info else "none"})
            if not args.json:
                console.info(f"stopped session {rec.id} (job {rec.job_id})")
    if args.json:
        console.json(results)
    return ExitCode.OK


# -- list -------------------------------------------------------------------------------------


def _add_list(sub: Any) -> None:
    p = sub.add_parser("list", help="list sessions with their live state")
    p.add_argument("profile", nargs="?", help="only this profile's sessions")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_list)


def _cmd_list(args: argparse.Namespace, console: Console) -> int:
    paths = _paths()
    store = Store(paths)
    records = [r for r in store.all() if not args.profile or r.profile == args.profile]
    for problem in store.problems:
        console.warn(f"unreadable session record {problem.path}: {problem.why}")
    groups: dict[tuple[str, tuple[str, ...], str], list[SessionRecord]] = {}
    for rec in records:
        groups.setdefault((rec.host, tuple(rec.ssh_options), rec.scheduler), []).append(rec)
    rows = []
    for (host, opts, sched), recs in groups.items():
        cluster = session.Cluster(host, opts, sched, paths)
        ids = [r.job_id for r in recs if r.job_id]
        try:
            infos = cluster.status(ids) if ids else {}
        except HpclabError as exc:
            console.warn(f"cannot ask {host} about its jobs: {exc.message}")
            infos = {}
        for rec in recs:
            info = infos.get(rec.job_id or "")
            state = info.state.value if info else "unknown"
            tunnel = "none"
            if rec.local_port:
                tunnel = "up" if probe(rec.local_port, rec.token, timeout=2) == 200 else "down"
            left = info.time_left if info else None
            row = _summary(rec, state) | {"tunnel": tunnel, "time_left": left}
            rows.append(row)
            if info and info.state.ended:
                # shown once as ended, then forgotten
                cluster.remove_session_dir(rec.id)
                store.delete(rec.id)
    if args.json:
        console.json(rows)
    elif not rows:
        console.info("no sessions")
    else:
        console.table(
            [[r["id"], r["profile"], r["job_id"] or "-", r["state"], r["node"] or "-",
              human(r["time_left"]) if r["time_left"] is not None else "-", r["tunnel"],
              f"http://127.0.0.1:{r['local_port']}/lab" if r["local_port"] else "-"] for r in rows],
            ["ID", "PROFILE", "JOB", "STATE", "NODE", "LEFT", "TUNNEL", "URL"],
        )
    return ExitCode.OK


# -- url --------------------------------------------------------------------------------------


def _add_url(sub: Any) -> None:
    p = sub.add_parser("url", help="print a session's URL with its token (for editors' 'existing server')")
    p.add_argument("id")
    p.set_defaults(func=_cmd_url)


def _cmd_url(args: argparse.Namespace, console: Console) -> int:
    rec = _find(Store(_paths()), args.id)
    if not rec.url:
        raise NotFoundError(f"session {rec.id} has no tunnel yet", hint=f"hpclab attach {rec.id}")
    console.result(rec.url)
    return ExitCode.OK


# -- logs -------------------------------------------------------------------------------------


def _add_logs(sub: Any) -> None:
    p = sub.add_parser("logs", help="show a session's job output and error (token masked)")
    p.add_argument("id")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-n", "--lines", type=int, default=200)
    p.set_defaults(func=_cmd_logs)


def _cmd_logs(args: argparse.Namespace, console: Console) -> int:
    paths = _paths()
    rec = _find(Store(paths), args.id)
    cluster = session.Cluster.for_record(rec, paths)

    def masked(text: str) -> str:
        return text.replace(rec.token, "********")

    for name in ("job.out", "job.err"):
        text = cluster.tail(rec.id, name, args.lines)
        if text.strip():
            console.result(f"==> {name} <==")
            console.result(masked(text.rstrip()))
    if args.follow:
        seen = {name: len(cluster.tail(rec.id, name, 100000)) for name in ("job.out", "job.err")}
        with interruptible():
            try:
                while True:
                    time.sleep(2)
                    for name in ("job.out", "job.err"):
                        text = cluster.tail(rec.id, name, 100000)
                        if len(text) > seen[name]:
                            console.result(masked(text[seen[name]:].rstrip()))
                            seen[name] = len(text)
            except (KeyboardInterrupt, Interrupted):
                return ExitCode.OK
    return ExitCode.OK


# -- main -------------------------------------------------------------------------------------

COMMANDS: Sequence[Callable[[Any], None]] = (
    _add_up, _add_attach, _add_list, _add_stop, _add_url, _add_logs, _add_cleanup,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hpclab",
        description="JupyterLab on an HPC compute node, from your laptop, safely.",
    )
    p.add_argument("--version", action="version", version=f"hpclab {__version__}")
    p.add_argument("--debug", action="store_true", help="log every step (secrets masked); show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.debug)
    console = Console(json_mode=getattr(args, "json", False))
    os.umask(0o077)  # every file hpclab creates is private, whatever the user's umask
    try:
        if getattr(args, "max_wait", None) is not None:
            try:
                parse_duration(args.max_wait)
            except ValueError as exc:
                raise ConfigError(f"bad --max-wait {args.max_wait!r}", hint=str(exc)) from None
        return int(args.func(args, console))
    except Interrupted as exc:
        console.info(exc.message)
        return exc.exit_code
    except HpclabError as exc:
        if args.debug:
            log.debug("traceback", exc_info=True)
        console.error(exc.message, exc.hint)
        return exc.exit_code
    except KeyboardInterrupt:
        console.error("interrupted")
        return ExitCode.INTERRUPTED


def run() -> None:
    sys.exit(main())

