"""The command line: parse the arguments, call a use case, render its result. The only module
that decides how things look and that exits: every failure arrives here as an HpclabError and
leaves as a message, a hint and an exit code."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

# Only what parsing and rendering need is imported here: `hpclab --help` must answer at once.
# A command imports the use cases it runs (session, launch: SSH, HTTP, schedulers) in its handler.
from . import __version__, options, ui
from .errors import ExitCode, HpclabError, Interrupted

if TYPE_CHECKING:
    from . import session
    from .state import SessionRecord

log = logging.getLogger("hpclab")

Handler = Callable[[argparse.Namespace, "App"], int]


class App:
    """What a command handler gets: the console to render on and the use cases' Context."""

    def __init__(self, console: ui.Console, connector: session.Connector | None = None) -> None:
        from .paths import Paths

        self.console = console
        self.paths = Paths.from_env()
        self.connector = connector
        self._ctx: session.Context | None = None

    @property
    def ctx(self) -> session.Context:
        """Made on first use, so that a command that needs no use case never imports them."""
        if self._ctx is None:
            from . import session

            console = self.console
            callbacks: dict[str, Any] = dict(report=console.status, info=console.info, warn=console.warn,
                                             error=console.error, shield=lambda: shielded(console))
            self._ctx = (session.Context(self.paths, self.connector, **callbacks) if self.connector is not None
                         else session.Context.ssh(self.paths, **callbacks))
        return self._ctx


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
def shielded(console: ui.Console) -> Iterator[None]:
    """Cleanup must finish: further Ctrl-C, SIGTERM and SIGHUP are acknowledged, not obeyed."""

    def note(signum: int, frame: object) -> None:
        console.warn("still cleaning up so that no job is left running; please wait")

    old = {s: signal.signal(s, note) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _browser(args: argparse.Namespace, app: App, rec: SessionRecord) -> None:
    if not args.no_browser:
        from .browser import open_lab

        if not open_lab(app.paths, rec):
            app.console.info("no browser could be opened here; open the URL above yourself")


# -- commands ---------------------------------------------------------------------------------


def _add_up(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("up", parents=[common], help="start JupyterLab on a compute node and tunnel to it")
    p.add_argument("profile", help="a profile name from the config file")
    for o in options.FLAGS:
        if o.flag_type is bool:
            p.add_argument(o.flag_name, dest=o.key, action=argparse.BooleanOptionalAction, help=o.help)
        else:
            p.add_argument(o.flag_name, dest=o.key, type=o.flag_type, choices=o.choices, help=o.help)
    p.add_argument("--no-browser", action="store_true", help="print the URL, do not open a browser")
    p.add_argument("--detach", action="store_true", help="return once the lab is ready; keep it running")
    p.set_defaults(func=_cmd_up)


def _cmd_up(args: argparse.Namespace, app: App) -> int:
    from .launch import Launch

    profile = app.ctx.profile(args.profile, {o.key: getattr(args, o.key) for o in options.FLAGS})
    if profile.reuse:
        from .reuse import running_session

        found = running_session(app.ctx, profile)
        if found is not None:  # a running session of this profile: from here on, `up` is `attach`
            return _attached(args, app, found, opened=True)
    with interruptible(), Launch(app.ctx, profile) as launch:
        ready = launch.run()
        ui.ready(app.console, ready, json_mode=args.json)
        _browser(args, app, ready.record)
        if args.detach:
            if not args.json:
                app.console.info(f"session {ready.record.id} (job {ready.record.job_id}) keeps running; "
                                 f"stop it with: hpclab stop {ready.record.id}")
            return ExitCode.OK
        app.console.info(f"press Ctrl-C to stop the session; job {ready.record.job_id} will be cancelled")
        launch.watch()
    return ExitCode.OK


def _add_attach(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("attach", parents=[common], help="reconnect to a running session (also from another computer)")
    p.add_argument("id", nargs="?", help="session id; optional with --profile when only one runs")
    p.add_argument("--profile", help="find the session on this profile's cluster (no local record needed)")
    p.add_argument("--no-browser", action="store_true")
    p.add_argument("--detach", action="store_true", help="return once the lab answers; keep the tunnel")
    p.set_defaults(func=_cmd_attach)


def _cmd_attach(args: argparse.Namespace, app: App) -> int:
    from . import session

    return _attached(args, app, session.Attachment(app.ctx, args.id, args.profile))


def _attached(args: argparse.Namespace, app: App, attachment: session.Attachment, *, opened: bool = False) -> int:
    """`attach` (and `up` that reuses a session): the tunnel up, then, in the foreground, kept
    healthy until Ctrl-C, which closes the tunnel and leaves the session running."""
    with interruptible():
        try:
            rec = attachment.record if opened else attachment.open()
            ui.attached(app.console, rec, json_mode=args.json)
            _browser(args, app, rec)
            if args.detach:
                return ExitCode.OK
            app.console.info(f"press Ctrl-C to close the tunnel; the session keeps running "
                             f"(hpclab stop {rec.id} ends it)")
            attachment.watch()
        except (KeyboardInterrupt, Interrupted):
            attachment.detach()
            app.console.info(f"tunnel closed; session {attachment.record.id} keeps running")
    return ExitCode.OK


def _add_list(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("list", parents=[common], help="list sessions with their live state")
    p.add_argument("profile", nargs="?", help="only this profile's sessions")
    p.set_defaults(func=_cmd_list)


def _cmd_list(args: argparse.Namespace, app: App) -> int:
    if not any(app.paths.sessions_dir.glob("*.json")):
        # No record, readable or not: no cluster to ask, so the use cases (SSH, HTTP) stay unloaded.
        ui.no_sessions(app.console, json_mode=args.json)
        return ExitCode.OK
    from . import session

    ui.listing(app.console, session.list_sessions(app.ctx, args.profile), json_mode=args.json)
    return ExitCode.OK


def _add_stop(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("stop", parents=[common], help="cancel a session's job and remove its tunnel and files")
    p.add_argument("id", nargs="?", help="session id (see hpclab list)")
    p.add_argument("--all", action="store_true", help="stop every session (of --profile, if given)")
    p.add_argument("--profile", help="with --all: only this profile's sessions")
    p.set_defaults(func=_cmd_stop)


def _cmd_stop(args: argparse.Namespace, app: App) -> int:
    from . import session

    results = session.stop(app.ctx, args.id, every=args.all, profile=args.profile)
    ui.stopped(app.console, results, json_mode=args.json)
    return ExitCode.OK


def _add_url(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("url", parents=[common], help="print a session's URL with its token (for editors)")
    p.add_argument("id")
    p.set_defaults(func=_cmd_url)


def _cmd_url(args: argparse.Namespace, app: App) -> int:
    from . import session

    ui.url(app.console, session.url(app.ctx, args.id), json_mode=args.json)
    return ExitCode.OK


def _add_logs(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("logs", parents=[common], help="show a session's job output and error (token masked)")
    p.add_argument("id")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-n", "--lines", type=int, default=200)
    p.set_defaults(func=_cmd_logs)


def _cmd_logs(args: argparse.Namespace, app: App) -> int:
    from . import session

    ui.logs(app.console, session.logs(app.ctx, args.id, args.lines))
    if args.follow:
        with interruptible():
            try:
                for text in session.follow_logs(app.ctx, args.id):
                    app.console.result(text.rstrip())
            except (KeyboardInterrupt, Interrupted):
                pass
    return ExitCode.OK


def _add_cleanup(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("cleanup", parents=[common], help="find hpclab jobs no session record covers and cancel them")
    p.add_argument("--profile", help="the cluster to look at (default: every profile's)")
    p.add_argument("--yes", action="store_true", help="cancel without asking")
    p.set_defaults(func=_cmd_cleanup)


def _cmd_cleanup(args: argparse.Namespace, app: App) -> int:
    from . import session

    def confirm(o: session.Orphan) -> bool:
        question = f"cancel job {o.job_id} (hpclab session {o.id}) on {o.host}? [y/N] "
        return args.yes or (sys.stdin.isatty() and input(question).strip().lower() in ("y", "yes"))

    ui.cleaned(app.console, session.cleanup(app.ctx, args.profile, confirm), json_mode=args.json)
    return ExitCode.OK


def _add_completion(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("completion", help="print a shell completion script: eval \"$(hpclab completion bash)\"")
    p.add_argument("shell", choices=("bash", "zsh", "fish"))
    p.set_defaults(func=_cmd_completion)
    # What the completion scripts ask for while the user types: names from local files, no SSH.
    q = sub.add_parser("_complete")
    q.add_argument("what", choices=("profiles", "sessions"))
    q.set_defaults(func=_cmd_complete)


def _cmd_completion(args: argparse.Namespace, app: App) -> int:
    from .completion import script

    app.console.result(script(args.shell, parser()))
    return ExitCode.OK


def _cmd_complete(args: argparse.Namespace, app: App) -> int:
    from .completion import names

    for name in names(app.paths, args.what):
        app.console.result(name)
    return ExitCode.OK


def _add_forward(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("forward", parents=[common],
                       help="forward one more port of a session's node (a dashboard) to 127.0.0.1")
    p.add_argument("id", help="session id (see hpclab list)")
    p.add_argument("port", type=int, help="the port on the node")
    p.add_argument("--local-port", type=int, help="local port (default: the same number if free, else any)")
    p.set_defaults(func=_cmd_forward)


def _cmd_forward(args: argparse.Namespace, app: App) -> int:
    from .nodeaccess import forward

    ui.forwarded(app.console, forward(app.ctx, args.id, args.port, args.local_port), json_mode=args.json)
    return ExitCode.OK


def _add_ssh_config(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("ssh-config", parents=[common],
                       help="print an OpenSSH Host block (hpclab-ID) that reaches the session's node")
    p.add_argument("id", help="session id (see hpclab list)")
    p.set_defaults(func=_cmd_ssh_config)


def _cmd_ssh_config(args: argparse.Namespace, app: App) -> int:
    from .nodeaccess import ssh_config

    ui.host_block(app.console, ssh_config(app.ctx, args.id), json_mode=args.json)
    return ExitCode.OK


def _add_code(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("code", parents=[common], help="open VS Code (Remote-SSH) on the session's node")
    p.add_argument("id", help="session id (see hpclab list)")
    p.add_argument("path", nargs="?", help="folder on the cluster to open")
    p.add_argument("--yes", action="store_true", help="add hpclab's Include line to ~/.ssh/config without asking")
    p.set_defaults(func=_cmd_code)


def _cmd_code(args: argparse.Namespace, app: App) -> int:
    from .nodeaccess import code

    def confirm(question: str) -> bool:
        return args.yes or (sys.stdin.isatty() and input(question + " [y/N] ").strip().lower() in ("y", "yes"))

    ui.opened(app.console, code(app.ctx, args.id, args.path, confirm), json_mode=args.json)
    return ExitCode.OK
def _add_doctor(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("doctor", parents=[common], help="check a profile step by step (submits nothing without --job)")
    p.add_argument("profile", help="a profile name from the config file")
    p.add_argument("--job", action="store_true",
                   help="also run a short job: SSH to its node and load the environment there; it is cancelled")
    p.set_defaults(func=_cmd_doctor)


def _cmd_doctor(args: argparse.Namespace, app: App) -> int:
    from . import doctor

    with interruptible():
        result = doctor.diagnose(app.ctx, args.profile, job=args.job)
    ui.checks(app.console, result, json_mode=args.json)
    return result.exit_code


def _add_init(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("init", parents=[common], help="probe a cluster's login node and write a profile for it")
    p.add_argument("name", help="the new profile's name")
    p.add_argument("--host", required=True, help="SSH destination of the login node")
    p.add_argument("--ssh-options", default="", help='extra ssh arguments as one string, e.g. "-F path/to/ssh_config"')
    p.add_argument("--yes", action="store_true", help="take the probed defaults without asking")
    p.set_defaults(func=_cmd_init)


def _cmd_init(args: argparse.Namespace, app: App) -> int:
    import shlex

    from . import doctor, init
    from .errors import ConfigError

    def ask(question: str, default: str, shown: Sequence[str]) -> str:
        for line in shown:
            app.console.info(f"  {line}")
        app.console.err.write(f"{question} [{default}]: ")
        app.console.err.flush()
        return sys.stdin.readline().strip()

    def confirm(question: str) -> bool:
        return ask(question + " (y/N)", "N", []).lower() in ("y", "yes")

    try:
        ssh_options = shlex.split(args.ssh_options)
    except ValueError as exc:
        raise ConfigError(f"cannot read --ssh-options: {exc}", hint='quote it as one argument: '
                          '--ssh-options "-F ~/.ssh/cluster_config"') from None
    interactive = not args.yes and sys.stdin.isatty()
    with interruptible():
        made = init.init(app.ctx, args.name, args.host, ssh_options,
                         ask=ask if interactive else None, confirm=confirm if interactive else None)
        ui.initialized(app.console, made, json_mode=args.json)
        result = doctor.diagnose(app.ctx, args.name)
    ui.checks(app.console, result, json_mode=args.json, made=made)
    return result.exit_code


# -- main -------------------------------------------------------------------------------------

COMMANDS: Sequence[Callable[[Any, argparse.ArgumentParser], None]] = (
    _add_up, _add_attach, _add_list, _add_stop, _add_url, _add_logs, _add_cleanup, _add_completion,
    _add_forward, _add_ssh_config, _add_code,
    _add_doctor, _add_init,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hpclab",
                                description="JupyterLab on an HPC compute node, from your laptop, safely.")
    p.add_argument("--version", action="version", version=f"hpclab {__version__}")
    p.add_argument("--debug", action="store_true", help="log every step (secrets masked); show tracebacks")
    # Every command takes --json and --debug too; SUPPRESS keeps a --debug given before the
    # command from being reset by the command's own default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=False, help="print JSON on stdout (docs/json.md)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub, common)
    return p


def main(argv: Sequence[str] | None = None, *, connector: session.Connector | None = None) -> int:
    """Run one command. `connector` replaces SSH (tests reach a LocalRemote through it)."""
    args = parser().parse_args(argv)
    ui.setup_logging(args.debug)
    console = ui.Console(json_mode=getattr(args, "json", False))
    os.umask(0o077)  # every file hpclab creates is private, whatever the user's umask
    try:
        return int(args.func(args, App(console, connector)))
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
