"""The one table of options. Each row says what a profile key means once: its validator, its
`hpclab up` flag and help, and whether it becomes part of the job's spec (and so a scheduler
directive). profiles.py validates with it, cli.py makes the flags from it, the session layer
builds the JobSpec from it. Adding an option is one row here (plus, where it becomes a
directive, one line per scheduler in its `option_directives`).

A validator takes the raw value (from TOML or a flag) and returns the value the Profile holds,
or raises Invalid with what would be accepted. Every pattern matches the whole value: a
trailing newline is not part of a plain name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import apps, envs
from .units import is_memory, parse_duration, parse_walltime

TRANSPORTS = ("auto", "socket", "tcp")


class Invalid(ValueError):
    """A value a validator refuses; the message says what it must be."""


Check = Callable[[Any], Any]


@dataclass(frozen=True)
class Option:
    key: str
    check: Check
    help: str
    flag: bool = False  # an `hpclab up --KEY` flag
    flag_type: type = str  # bool: a --KEY / --no-KEY pair
    choices: tuple[str, ...] | None = None
    job: bool = False  # part of the JobSpec the scheduler renders

    @property
    def flag_name(self) -> str:
        return "--" + self.key.replace("_", "-")


# Values that end up in scheduler directives or ssh arguments are plain words: no shell,
# no spaces, no option injection. Anything a site needs beyond that goes in extra_directives.
WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+@=,:-]*")
HOST = re.compile(r"[A-Za-z0-9_\[][A-Za-z0-9_.@:%\[\]-]*")
GPUS = re.compile(r"([A-Za-z0-9_.-]+:)?[0-9]+")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _host(value: Any) -> str:
    if not isinstance(value, str) or not HOST.fullmatch(value):
        raise Invalid("an SSH destination such as 'login.example.org' or 'me@login' (no spaces, not starting with '-')")
    return value


def _word(value: Any) -> str:
    if not isinstance(value, str) or not WORD.fullmatch(value):
        raise Invalid("a plain name (letters, digits, '_', '.', '-'); no spaces or shell characters")
    return value


def _choice(choices: Callable[[], tuple[str, ...]]) -> Check:
    def check(value: Any) -> str:
        if value not in choices():
            raise Invalid(f"one of {', '.join(choices())}")
        return str(value)

    return check


def _walltime(value: Any) -> int:
    try:
        return parse_walltime(value)
    except ValueError as exc:
        raise Invalid(f"a time limit like '01:30:00', '90m' or '2h' ({exc})") from None


def _duration(value: Any) -> int:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise Invalid(f"a duration like '90s', '10m' or '2h' ({exc})") from None


def _max_wait(value: Any) -> int | None:
    return _duration(value) or None  # 0: wait as long as the queue takes


def _durations(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise Invalid("a list of durations, e.g. ['10m', '2m']")
    return tuple(sorted((_duration(v) for v in value), reverse=True))


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid("true or false")
    return value


def _positive(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Invalid("a positive whole number")
    return value


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= 65535:
        raise Invalid("a port number between 1024 and 65535")
    return value


def _memory(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not is_memory(str(value)):
        raise Invalid("an amount like '4G', '500M' or '16GB'")
    return str(value)


def _gpus(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not GPUS.fullmatch(str(value)):
        raise Invalid("a count like 1, or type:count like 'a100:2'")
    return str(value)


def str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.splitlines()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid("a list of strings")
    return tuple(value)


def _one_line_list(value: Any) -> tuple[str, ...]:
    lines = str_list(value)
    for line in lines:
        if "\n" in line or "\r" in line or not line.strip():
            raise Invalid("a list of non-empty single-line strings")
    return lines


def _cluster_path(value: Any) -> str:
    if not isinstance(value, str) or not value or "\0" in value:
        raise Invalid("a directory path on the cluster")
    return value


def _local_file(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid("the path of a job script template on this computer")
    return value


def _env(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and ENV_NAME.fullmatch(k) and isinstance(v, str) for k, v in value.items()
    ):
        raise Invalid('a table of NAME = "value" strings')
    return tuple(sorted(value.items()))


# -- ssh_options -----------------------------------------------------------------------------

# ssh flags and -o settings that would weaken what hpclab promises, or fight its own use of ssh.
_UNSAFE_FLAGS = {"-A", "-X", "-Y", "-g", "-M", "-S", "-f", "-N", "-O", "-W", "-L", "-R", "-D", "-J"}
_VALUE_FLAGS = set("BbcDEeFIiJLlmOoPpQRSWw")  # ssh flags that take a value
_UNSAFE_SETTINGS: dict[str, Callable[[str], bool]] = {
    "forwardagent": lambda v: v not in ("no", "false"),
    "forwardx11": lambda v: v not in ("no", "false"),
    "forwardx11trusted": lambda v: v not in ("no", "false"),
    "stricthostkeychecking": lambda v: v in ("no", "off", "false", "accept-new"),
    "userknownhostsfile": lambda v: v.strip() == "/dev/null",
    "gatewayports": lambda v: v not in ("no", "false"),
    "permitlocalcommand": lambda v: v not in ("no", "false"),
    "controlmaster": lambda v: True,
    "controlpath": lambda v: True,
    "controlpersist": lambda v: True,
    "localforward": lambda v: True,
    "remoteforward": lambda v: True,
    "dynamicforward": lambda v: True,
}


def unsafe_ssh_option(opts: tuple[str, ...]) -> str | None:
    """The first argument that hpclab refuses, or None. Reads flags the way ssh's getopt does:
    bundled letters (-vA), and values either attached (-oX=y) or in the next argument."""
    settings: list[str] = []
    it = iter(opts)
    for arg in it:
        if not arg.startswith("-") or arg.startswith("--") or arg == "-":
            continue
        letters = arg[1:]
        for i, letter in enumerate(letters):
            if f"-{letter}" in _UNSAFE_FLAGS:
                return arg
            if letter in _VALUE_FLAGS:
                rest = letters[i + 1:] or next(it, "")
                if letter == "o":
                    settings.append(rest)
                break
    for setting in settings:
        name, _, val = setting.replace("=", " ", 1).partition(" ")
        check = _UNSAFE_SETTINGS.get(name.strip().lower())
        if check is not None and check(val.strip().lower()):
            return setting
    return None


def _ssh_options(value: Any) -> tuple[str, ...]:
    opts = str_list(value)
    bad = unsafe_ssh_option(opts)
    if bad:
        raise Invalid(f"free of {bad!r}: hpclab never forwards the agent or X11, never relaxes host-key "
                      "checking and manages its own connection sharing")
    return opts


def _from_envs(check: Callable[[Any], Any]) -> Check:
    """One of envs' checks, its ValueError as Invalid."""

    def wrapped(value: Any) -> Any:
        try:
            return check(value)
        except ValueError as exc:
            raise Invalid(str(exc)) from None

    return wrapped


def _schedulers() -> tuple[str, ...]:
    from .schedulers import names as scheduler_names  # imports every scheduler: only when a profile names one

    return (*scheduler_names(), "auto")


OPTIONS: tuple[Option, ...] = (
    Option("host", _host, "SSH destination of the login node"),
    Option("ssh_options", _ssh_options, "extra ssh arguments, e.g. ['-F', 'path/to/ssh_config']"),
    Option("scheduler", _choice(_schedulers), "the cluster's scheduler, or auto to detect it"),
    Option("partition", _word, "partition or queue", flag=True, job=True),
    Option("account", _word, "account or project to charge", flag=True, job=True),
    Option("time", _walltime, "time limit, e.g. 01:30:00, 90m, 2h", flag=True, job=True),
    Option("cpus", _positive, "CPU cores", flag=True, flag_type=int, job=True),
    Option("mem", _memory, "memory, e.g. 8G", flag=True, job=True),
    Option("gpus", _gpus, "GPUs, a count or type:count", flag=True, job=True),
    Option("setup", str_list, "shell lines the job runs before Jupyter starts"),
    Option("notebook_dir", _cluster_path, "directory JupyterLab opens in (on the cluster)", flag=True),
    Option("transport", _choice(lambda: TRANSPORTS), "how the tunnel reaches Jupyter", flag=True,
           choices=TRANSPORTS),
    Option("extra_directives", _one_line_list, "raw scheduler directives to add", job=True),
    Option("skip_directives", _one_line_list, "generated directives to drop", job=True),
    Option("local_port", _port, "local port for the tunnel", flag=True, flag_type=int),
    Option("max_wait", _max_wait, "cancel the job if it has not started after this long, e.g. 10m", flag=True),
    Option("idle_timeout", _duration, "shut the lab down after this long unused; 0 = never"),
    Option("walltime_warnings", _durations, "warn this long before the time limit, e.g. ['10m', '2m']"),
    Option("template", _local_file, "a site's job script frame with {directives} and {body}"),
    Option("env", _env, "environment variables for the job"),
    Option("modules", _from_envs(envs.check_modules), "modules to load before Jupyter, e.g. python/3.11,jupyter",
           flag=True),
    Option("venv", _from_envs(envs.check_venv), "a virtual environment to activate (after the modules)", flag=True),
    Option("conda", _from_envs(envs.check_conda), "a conda environment, by name or prefix, to activate "
           "(after the modules)", flag=True),
    Option("kernels", _from_envs(envs.check_kernels), "kernels from other environments, e.g. "
           '[{ name = "torch", venv = "~/venvs/torch" }]'),
    Option("app", _choice(apps.names), "what the session runs: " + ", ".join(apps.names()), flag=True,
           choices=apps.names()),
    Option("reuse", _bool, "attach to a running session of this profile instead of starting a new job",
           flag=True, flag_type=bool),
)

BY_KEY = {o.key: o for o in OPTIONS}
KEYS = tuple(sorted(BY_KEY))
FLAGS = tuple(o for o in OPTIONS if o.flag)
JOB_KEYS = tuple(o.key for o in OPTIONS if o.job)
