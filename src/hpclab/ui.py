"""How results look: the one renderer. Human lines on a terminal (a live status line), plain
lines otherwise, JSON with --json (its keys are documented in docs/json.md and pinned by a
test). NO_COLOR is honoured. Secrets registered with `mask` never reach a log line."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from . import apps
from .redact import redact
from .redact import register as mask
from .units import human

if TYPE_CHECKING:
    from .doctor import Diagnosis
    from .init import Made
    from .launch import Ready
    from .nodeaccess import Forwarded, HostBlock, Opened
    from .session import Listing, Orphan, Stopped
    from .state import SessionRecord

__all__ = ["Console", "mask", "redact", "setup_logging"]


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(debug: bool, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingFormatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger("hpclab")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)


class Console:
    """Progress and messages on stderr; results on stdout."""

    def __init__(self, *, json_mode: bool = False, err: TextIO | None = None, out: TextIO | None = None) -> None:
        self.err = err or sys.stderr
        self.out = out or sys.stdout
        self.json_mode = json_mode
        self.live = self.err.isatty() and os.environ.get("TERM") != "dumb"
        self.color = self.live and "NO_COLOR" not in os.environ
        self._line_open = False

    def _paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def status(self, phase: str, detail: str) -> None:
        """A progress update: rewrites one line on a terminal, prints a line otherwise.
        Periodic "tick" updates (time left) only show on a terminal."""
        if phase == "tick":
            if not self.live:
                return
            phase = "running"
        text = f"{phase:<10} {detail}"
        if self.live:
            self.err.write("\r\x1b[K" + self._paint("hpclab", "1") + " " + text)
            self._line_open = True
        else:
            self.err.write(f"hpclab: {text}\n")
        self.err.flush()

    def _end_line(self) -> None:
        if self._line_open:
            self.err.write("\n")
            self._line_open = False

    def info(self, message: str) -> None:
        self._end_line()
        self.err.write(message + "\n")
        self.err.flush()

    def warn(self, message: str) -> None:
        self._end_line()
        self.err.write(self._paint("warning:", "33;1") + " " + message + "\n")
        self.err.flush()

    def error(self, message: str, hint: str | None = None) -> None:
        self._end_line()
        self.err.write(self._paint("error:", "31;1") + " " + message + "\n")
        if hint:
            for line in hint.splitlines():
                self.err.write(f"  {line}\n")
        self.err.flush()

    def result(self, text: str) -> None:
        self._end_line()
        self.out.write(text + "\n")
        self.out.flush()

    def json(self, obj: Any) -> None:
        self._end_line()
        self.out.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
        self.out.flush()

    def table(self, rows: Sequence[Sequence[str]], headers: Sequence[str]) -> None:
        widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
        lines = [headers, *rows]
        self._end_line()
        for row in lines:
            self.out.write("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
        self.out.flush()


# -- results ----------------------------------------------------------------------------------


def summary(rec: SessionRecord, state: str | None = None) -> dict[str, Any]:
    """A session as JSON (docs/json.md): the keys every command's session object has."""
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
        "started": rec.started,
        "time_limit": rec.time_limit,
        "forwards": [{"node_port": f["node_port"], "local_port": f["local_port"],
                      "url": f"http://127.0.0.1:{f['local_port']}/"} for f in rec.forwards],
        "app": rec.app,
        "app_version": rec.app_version,
    }


def _password(rec: SessionRecord) -> str | None:
    """The session's secret where the app logs in with a password (code-server), else None."""
    return rec.token if apps.get(rec.app).secret_name == "password" else None


def _ready_line(rec: SessionRecord) -> str:
    app = apps.get(rec.app)
    line = f"{app.title} is ready: {rec.url}"
    if app.secret_name == "password":
        line += f" (the browser hpclab opens is logged in; `hpclab url {rec.id} --json` gives the password)"
    return line


def ready(console: Console, result: Ready, *, json_mode: bool) -> None:
    """`up`: the lab is ready."""
    for warning in result.warnings:
        console.warn(warning)
    rec = result.record
    if json_mode:
        console.json(summary(rec) | {
            "timings": {k: round(v, 3) for k, v in result.timings.phases.items()},
            "stats": {"ssh_connects": result.counters.connects, "ssh_commands": result.counters.commands,
                      "scheduler_queries": result.timings.scheduler_queries},
            "password": _password(rec),
        })
    else:
        console.result(_ready_line(rec))


def attached(console: Console, rec: SessionRecord, *, json_mode: bool) -> None:
    if json_mode:
        console.json(summary(rec))
    else:
        console.result(_ready_line(rec))


def listing(console: Console, result: Listing, *, json_mode: bool) -> None:
    from .state import lab_url  # state (and paths) stay unimported for `hpclab --help`

    for problem in result.problems:
        console.warn(problem.message)
    rows = [summary(r.record, r.state) | {"tunnel": r.tunnel, "time_left": r.time_left} for r in result.rows]
    if not rows:
        no_sessions(console, json_mode=json_mode)
    elif json_mode:
        console.json(rows)
    else:
        console.table(
            [[r["id"], r["profile"], r["job_id"] or "-", r["state"], r["node"] or "-",
              human(r["time_left"]) if r["time_left"] is not None else "-", r["tunnel"],
              lab_url(r["local_port"], app=r["app"]) if r["local_port"] else "-", r["app"]] for r in rows],
            ["ID", "PROFILE", "JOB", "STATE", "NODE", "LEFT", "TUNNEL", "URL", "APP"],
        )
        for r in rows:
            for f in r["forwards"]:
                console.result(f"{r['id']}: {f['url']} -> port {f['node_port']} of {r['node']} (hpclab forward)")


def no_sessions(console: Console, *, json_mode: bool) -> None:
    """`list` when there is no session to show."""
    if json_mode:
        console.json([])
    else:
        console.info("no sessions")


def stopped(console: Console, results: list[Stopped], *, json_mode: bool) -> None:
    if json_mode:
        console.json([{"id": r.id, "job_id": r.job_id, "state": r.state} for r in results])
    else:
        for r in results:
            console.info(f"stopped session {r.id} (job {r.job_id})")


def cleaned(console: Console, results: list[Orphan], *, json_mode: bool) -> None:
    if json_mode:
        console.json([{"profile": o.profile, "id": o.id, "job_id": o.job_id, "cancelled": o.cancelled}
                      for o in results])
    elif not results:
        console.info("no stray hpclab jobs")
    else:
        for o in results:
            if o.cancelled:
                console.info(f"cancelled job {o.job_id} (session {o.id})")
            else:
                console.info(f"left job {o.job_id} (session {o.id}); `hpclab cleanup --yes` cancels it")


def url(console: Console, rec: SessionRecord, *, json_mode: bool) -> None:
    if json_mode:
        password = _password(rec)
        console.json({"id": rec.id, "url": rec.url, "token": None if password else rec.token,
                      "password": password, "local_port": rec.local_port})
    else:
        console.result(rec.url or "")


def logs(console: Console, sections: list[tuple[str, str]]) -> None:
    for name, text in sections:
        if text.strip():
            console.result(f"==> {name} <==")
            console.result(text.rstrip())


def forwarded(console: Console, result: Forwarded, *, json_mode: bool) -> None:
    """`forward`: one more port of the node."""
    if json_mode:
        console.json({"id": result.record.id, "node": result.record.node, "node_port": result.node_port,
                      "local_port": result.local_port, "url": result.url, "warning": result.warning})
        return
    console.warn(result.warning)
    console.info(f"port {result.node_port} of {result.record.node} is forwarded until the session ends "
                 f"(hpclab stop {result.record.id} removes it)")
    console.result(result.url)


def host_block(console: Console, result: HostBlock, *, json_mode: bool) -> None:
    """`ssh-config`: the Host block on stdout, ready to append to ~/.ssh/config."""
    if json_mode:
        console.json({"id": result.record.id, "alias": result.alias, "node": result.record.node,
                      "config": result.text})
    else:
        console.result(result.text.rstrip("\n"))


def opened(console: Console, result: Opened, *, json_mode: bool) -> None:
    """`code`: VS Code was started on the session's node."""
    if json_mode:
        console.json({"id": result.record.id, "alias": result.alias, "node": result.record.node,
                      "argv": result.argv, "ssh_config": str(result.config)})
    else:
        console.info(f"VS Code opens {result.alias} ({result.record.node}, job {result.record.job_id}); "
                     f"its host block is in {result.config}")
# -- doctor -----------------------------------------------------------------------------------

CHECK_MARKS = {"ok": ("✓", "32"), "fail": ("✗", "31;1"), "warn": ("!", "33;1"), "skip": ("-", "2")}
ASCII_MARKS = {"ok": "ok", "fail": "FAIL", "warn": "!", "skip": "-"}


def _can_print(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def initialized(console: Console, made: Made, *, json_mode: bool) -> None:
    """`init`: the profile it wrote (with --json, `checks` prints it all at once)."""
    if not json_mode:
        from .init import profile_block

        console.info(f"wrote this profile to {made.config_file}:\n\n{profile_block(made.name, made.table)}")
        console.info(f"checking it: hpclab doctor {made.name}")


def checks(console: Console, result: Diagnosis, *, json_mode: bool, made: Made | None = None) -> None:
    """`doctor`: one line per check, ✓ ✗ ! or - (ok, FAIL, !, - where the terminal cannot print
    those), in color on a terminal without NO_COLOR; the hint indented below."""
    if json_mode:
        listed = [c.as_json() for c in result.checks]
        if made is None:
            console.json(listed)
        else:
            console.json({"profile": made.name, "config_file": str(made.config_file), "written": made.table,
                          "checks": listed})
        return
    console._end_line()
    fancy = _can_print(console.out, "✓✗")
    color = console.out.isatty() and os.environ.get("TERM") != "dumb" and "NO_COLOR" not in os.environ
    for c in result.checks:
        mark, code = CHECK_MARKS[c.status]
        mark = mark if fancy else ASCII_MARKS[c.status]
        console.out.write((f"\x1b[{code}m{mark}\x1b[0m" if color else mark) + f" {c.name}: {c.detail}\n")
        for line in (c.hint or "").splitlines():
            console.out.write(f"    {line}\n")
    failed = len(result.failed)
    warned = sum(1 for c in result.checks if c.status == "warn")
    summary = f"{failed} check(s) failed" if failed else "nothing failed"
    console.out.write(summary + (f", {warned} warning(s)\n" if warned else "\n"))
    console.out.flush()
