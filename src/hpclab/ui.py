"""How results look: human lines on a terminal (a live status line), plain lines otherwise,
one JSON object with --json. NO_COLOR is honoured. Secrets registered with `mask` never
reach a log line."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

_SECRETS: set[str] = set()


def mask(secret: str) -> None:
    """Register a secret that log output must never show."""
    if secret:
        _SECRETS.add(secret)


def redact(text: str) -> str:
    for secret in _SECRETS:
        text = text.replace(secret, "********")
    return text


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
