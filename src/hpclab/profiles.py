"""TOML profiles resolved into one frozen Profile. Precedence: defaults < file < flags.

Every value is checked here, before anything touches the network, and a refusal names the
file, the profile, the key and what would be accepted.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .envs import Environment, Kernel
from .errors import ConfigError
from .options import BY_KEY, KEYS, TRANSPORTS, Invalid

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = ["KEYS", "TRANSPORTS", "Profile", "apply", "from_table", "load_profiles", "resolve"]


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
    modules: tuple[str, ...] = ()
    venv: str | None = None
    conda: str | None = None
    kernels: tuple[Kernel, ...] = ()

    @property
    def environment(self) -> Environment:
        return Environment(self.modules, self.venv, self.conda)
    app: str = "jupyterlab"
    reuse: bool = False  # `up` attaches to a running session of this profile if there is one


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
    _one_environment(values, where)
    return Profile(name=name, source=source, **values)


def apply(profile: Profile, flags: Mapping[str, Any], *, where: str) -> Profile:
    checked = {}
    for key, value in flags.items():
        if key not in KEYS:
            raise ConfigError(f"unknown setting {key!r}", hint=f"valid keys: {', '.join(KEYS)}")
        checked[key] = _check(key, value, where)
    _one_environment(checked, where)
    # a venv or conda given here replaces the other one of the file
    if checked.get("venv") is not None:
        checked["conda"] = None
    if checked.get("conda") is not None:
        checked["venv"] = None
    return replace(profile, **checked)


def _one_environment(values: Mapping[str, Any], where: str) -> None:
    if values.get("venv") is not None and values.get("conda") is not None:
        raise ConfigError(f"both 'venv' and 'conda' in {where}",
                          hint="one environment is activated after the modules: keep venv or conda, not both "
                               "(a kernel can bring the other one: kernels = [{ name = ..., conda = ... }])")


def _check(key: str, value: Any, where: str) -> Any:
    try:
        return BY_KEY[key].check(value)
    except Invalid as exc:
        raise ConfigError(f"bad value {value!r} for {key!r} in {where}", hint=f"{key} must be {exc}") from None
