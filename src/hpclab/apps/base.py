"""What every app says about itself. An app is mostly data (class attributes); the few
functions return text (bash, a URL, a page) or a request, and do no I/O."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# (method, path, headers) -> an answer with `.status` and `.header(name)`: labcheck.Ask
Ask = Callable[[str, str, dict[str, str]], Any]


@dataclass(frozen=True)
class Probe:
    """One HTTP request through the tunnel that only a holder of the session's secret gets
    `ok` for: the readiness and health probe."""

    method: str
    path: str
    headers: dict[str, str]
    ok: int


class App:
    name = ""  # the `app` value
    title = ""  # for people: "JupyterLab is ready: URL"
    server = ""  # the program, for people: "the job ended before Jupyter was ready"
    secret_name = "token"  # what the session's secret is to the app: "token" or "password"
    programs: tuple[str, ...] = ()  # what must be on PATH once the environment is loaded (doctor checks)
    jupyter_server = True  # runs on jupyter_server (whose version hpclab holds to a minimum)
    version_args: tuple[str, ...] = ("--version",)  # what prints a program's version and changes nothing
    socket_name = ""  # its unix socket's name in the job's private runtime dir
    # bash words of `hpclab_listen=(...)`: on the socket "$hpclab_sock", or on "$hpclab_addr"
    # (an app whose start part chooses the port sets hpclab_listen itself).
    socket_args = ""
    tcp_args = ""
    idle = ""  # how the app detects idleness, in words (README)
    check_timeout = 10.0  # seconds the lab check waits for each answer
    check_hint = ""  # what to do when its own lab check (problems) finds it open

    def start(self, notebook_dir: str, listen: str, extra_args: str, secret_file: str) -> str:
        """The bash that checks the app is installed, enters `notebook_dir` (shell-quoted),
        runs `listen` (which sets hpclab_mode, hpclab_sock, hpclab_addr, hpclab_listen), starts
        the app in the background (hpclab_pid) and waits until it listens, then sets
        hpclab_version (the app's), hpclab_jupyter_server (or empty) and hpclab_port (tcp)."""
        raise NotImplementedError

    def probe(self, secret: str) -> Probe:
        raise NotImplementedError

    def url(self, port: int, secret: str | None = None) -> str:
        """What the user opens, through the local forward on `port`; with the secret in it
        when the app takes it so and `secret` is given."""
        raise NotImplementedError

    def open_page(self, port: int, secret: str) -> str | None:
        """A local page that opens the app logged in, or None: a redirect to url(port, secret)."""
        return None

    def problems(self, ask: Ask, secret: str) -> list[str] | None:
        """What is open to a request without the secret, in words; None: Jupyter's own check
        (labcheck.problems)."""
        return None
