"""TOML profiles resolved into one frozen Profile. Precedence: defaults < file < flags.

Every value is checked here, before anything touches the network, and a refusal names the
file, the profile, the key and what would be accepted.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .schedulers import names as scheduler_names
from .timefmt import parse_duration, parse_walltime

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

TRANSPORTS = ("auto", "socket", "tcp")

# Values that end up in scheduler directives or ssh arguments are plain words: no shell,
# no spaces, no option injection. Anything a site needs beyond that goes in extra_directives.
_WORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+@=,:-]*$")
_HOST = re.compile(r"^[A-Za-z0-9_\[][A-Za-z0-9_.@:%\[\]-]*$")
_MEM = re.compile(r"^[0-9]+(\.[0-9]+)?[KMGT]?B?$", re.IGNORECASE)
_GPUS = re.compile(r"^([A-Za-z0-9_.-]+:)?[0-9]+$")


@dataclass(frozen=True)
class Profile:
    name: str
    host: str
    source: str = "<flags>"
    ssh_options: tuple[str, ...] = ()
    scheduler: str = "slurm"
    partition: str | None = None
    account: str | None = None
    time: int = 3600  # seconds
    cpus: int | None = None
    mem: str | None = None
    gpus: str | None = None
    setup: tuple[str, ...] = ()
    notebook_dir: str | None = None
    transport: str = "auto"
    extra_directives: tuple[str, ...] = ()
    skip_directives: tuple[str, ...] = ()
    local_port: int | None = None
    max_wait: int | None = None  # seconds; None waits as long as the queue takes
    idle_timeout: int = 3600  # seconds; 0 turns the idle shutdown off
    walltime_warnings: tuple[int, ...] = (600, 120)
    template: str | None = None
    env: tuple[tuple[str, str], ...] = field(default=())


KEYS = tuple(sorted(f.name for f in fields(Profile) if f.name not in ("name", "source")))


def default_config_file_text() -> str:
    return '[profiles.mycluster]\nhost = "login.example.org"\nscheduler = "slurm"\ntime = "01:00:00"\n'


def load_profiles(path: Path) -> dict[str, dict[str, Any]]:
    """Raw tables of `[profiles.NAME]` in `path`. Raises ConfigError for a missing or bad file."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"no config file at {path}",
            hint=f"create it with a [profiles.NAME] table, for example:\n{default_config_file_text()}"
            "or point HPCLAB_CONFIG at one",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    unknown_top = sorted(set(data) - {"profiles"})
    if unknown_top:
        raise ConfigError(
            f"unknown table {unknown_top[0]!r} in {path}", hint="hpclab reads only [profiles.NAME] tables"
        )
    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict):
        raise ConfigError(f"'profiles' in {path} must be a table of [profiles.NAME] tables")
    return profiles


def resolve(
    name: str, path: Path, overrides: Mapping[str, Any] | None = None
) -> Profile:
    """The profile `name` from `path`, with `overrides` (from flags, None values ignored)."""
    profiles = load_profiles(path)
    if name not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(
            f"no profile {name!r} in {path}",
            hint=f"profiles defined there: {known}",
        )
    table = profiles[name]
    if not isinstance(table, dict):
        raise ConfigError(f"[profiles.{name}] in {path} must be a table")
    where = f"[profiles.{name}] in {path}"
    profile = from_table(name, table, where=where, source=str(path))
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    if flags:
        profile = apply(profile, flags, where="command-line flag")
    return profile


def from_table(name: str, table: Mapping[str, Any], *, where: str, source: str) -> Profile:
    unknown = sorted(set(table) - set(KEYS))
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} in {where}",
            hint=f"valid keys: {', '.join(KEYS)}",
        )
    if "host" not in table:
        raise ConfigError(
            f"missing key 'host' in {where}",
            hint='set host to the SSH destination of the login node, e.g. host = "login.example.org"',
        )
    values = {k: _check(k, v, where) for k, v in table.items()}
    return Profile(name=name, source=source, **values)


def apply(profile: Profile, flags: Mapping[str, Any], *, where: str) -> Profile:
    checked = {}
    for key, value in flags.items():
        if key not in KEYS:
            raise ConfigError(f"unknown setting {key!r}", hint=f"valid keys: {', '.join(KEYS)}")
        checked[key] = _check(key, value, where)
    return replace(profile, **checked)


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


def _unsafe_ssh_option(opts: tuple[str, ...]) -> str | None:
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


def _fail(key: str, value: Any, where: str, expect: str) -> ConfigError:
    return ConfigError(f"bad value {value!r} for {key!r} in {where}", hint=f"{key} must be {expect}")


def _str_list(key: str, value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.splitlines()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(key, value, where, "a list of strings")
    return tuple(value)


def _one_line_list(key: str, value: Any, where: str) -> tuple[str, ...]:
    lines = _str_list(key, value, where)
    for line in lines:
        if "\n" in line or "\r" in line or not line.strip():
            raise _fail(key, line, where, "a list of non-empty single-line strings")
    return lines


def _check(key: str, value: Any, where: str) -> Any:
    if key == "host":
        if not isinstance(value, str) or not _HOST.match(value):
            raise _fail(key, value, where, "an SSH destination such as 'login.example.org' or 'me@login' "
                        "(no spaces, not starting with '-')")
        return value
    if key == "ssh_options":
        opts = _str_list(key, value, where)
        bad = _unsafe_ssh_option(opts)
        if bad:
            raise _fail(key, value, where, f"free of {bad!r}: hpclab never forwards the agent or X11, "
                        "never relaxes host-key checking and manages its own connection sharing")
        return opts
    if key == "scheduler":
        choices = (*scheduler_names(), "auto")
        if value not in choices:
            raise _fail(key, value, where, f"one of {', '.join(choices)}")
        return value
    if key in ("partition", "account"):
        if not isinstance(value, str) or not _WORD.match(value):
            raise _fail(key, value, where,
                        "a plain name (letters, digits, '_', '.', '-'); no spaces or shell characters")
        return value
    if key == "time":
        try:
            return parse_walltime(value)
        except ValueError as exc:
            raise _fail(key, value, where, f"a time limit like '01:30:00', '90m' or '2h' ({exc})") from None
    if key in ("max_wait", "idle_timeout"):
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            raise _fail(key, value, where, f"a duration like '90s', '10m' or '2h' ({exc})") from None
        return seconds if (seconds or key == "idle_timeout") else None
    if key == "walltime_warnings":
        if not isinstance(value, list):
            raise _fail(key, value, where, "a list of durations, e.g. ['10m', '2m']")
        try:
            return tuple(sorted((parse_duration(v) for v in value), reverse=True))
        except ValueError as exc:
            raise _fail(key, value, where, f"a list of durations ({exc})") from None
    if key == "cpus":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _fail(key, value, where, "a positive whole number")
        return value
    if key == "local_port":
        if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= 65535:
            raise _fail(key, value, where, "a port number between 1024 and 65535")
        return value
    if key == "mem":
        value = str(value)
        if not _MEM.match(value):
            raise _fail(key, value, where, "an amount like '4G', '500M' or '16GB'")
        return value
    if key == "gpus":
        value = str(value)
        if not _GPUS.match(value):
            raise _fail(key, value, where, "a count like 1, or type:count like 'a100:2'")
        return value
    if key == "transport":
        if value not in TRANSPORTS:
            raise _fail(key, value, where, f"one of {', '.join(TRANSPORTS)}")
        return value
    if key == "setup":
        return _str_list(key, value, where)
    if key in ("extra_directives", "skip_directives"):
        return _one_line_list(key, value, where)
    if key == "notebook_dir":
        if not isinstance(value, str) or not value or "\0" in value:
            raise _fail(key, value, where, "a directory path on the cluster")
        return value
    if key == "template":
        if not isinstance(value, str) or not value.strip():
            raise _fail(key, value, where, "the path of a job script template on this computer")
        return value
    if key == "env":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k) and isinstance(v, str)
            for k, v in value.items()
        ):
            raise _fail(key, value, where, "a table of NAME = \"value\" strings")
        return tuple(sorted(value.items()))
    raise AssertionError(key)  # pragma: no cover - KEYS and this function agree
