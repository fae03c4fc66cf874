"""`hpclab init NAME --host HOST`: probe a login node hpclab has never seen and write a profile.

    site = probe(remote)                       # one shell program, one round trip: a Site
    table = proposal(site, host, ssh_options)  # the profile's keys, from the probed defaults
    write_profile(path, name, table)           # appended to the config file (created 0600)

The probe asks the scheduler for its partitions (time limits, GPUs) and the user's accounts,
and looks for Jupyter: modules whose names say jupyter/python/anaconda/miniforge, conda
environments and virtual environments in the usual places that have a `jupyter`, and writes
what it chose as the profile's `modules`, `venv` or `conda`. Everything it reads comes from the
cluster and is data: a name or path the profile would refuse is left out, and every value is
written as a TOML string escaped here.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .options import WORD
from .paths import write_private
from .profiles import from_table
from .remote import Remote
from .schedulers.base import hms
from .schedulers.detect import DETECT_SCRIPT, NONE_FOUND, parse_detect
from .session import Context
from .units import parse_walltime

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

DEFAULT_TIME = 3600
# What `module -t avail` names that may hold Jupyter.
MODULE_HINT = re.compile(r"jupyter|python|anaconda|miniconda|miniforge|mambaforge|conda", re.IGNORECASE)
MODULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*(/[A-Za-z0-9._+-]+)*")
VENV_DIRS = ("venvs", ".venvs", "envs", ".virtualenvs")

# One bash program (sent on stdin to `bash -s`): @@-headed sections for parse_probe. Every
# command reads /dev/null (the program is one block, read whole before it runs), so that none
# waits for input or eats the program. Lmod prints `module avail` on stderr.
PROBE = (
    "{\n"
    "echo @@detect\n" + DETECT_SCRIPT + "\n"
    'u=$(id -un)\n'
    "if command -v sinfo >/dev/null 2>&1; then echo @@sinfo; sinfo -h -o '%P|%l|%G|%a' 2>/dev/null; fi\n"
    "if command -v sacctmgr >/dev/null 2>&1; then\n"
    '  echo @@accounts; sacctmgr -nP show assoc user="$u" format=account 2>/dev/null\n'
    '  echo @@default-account; sacctmgr -nP show user "$u" format=defaultaccount 2>/dev/null\n'
    "fi\n"
    "if command -v qconf >/dev/null 2>&1; then echo @@sge-queues; qconf -sql 2>/dev/null; fi\n"
    "if command -v bqueues >/dev/null 2>&1; then echo @@lsf-queues; bqueues -w 2>/dev/null; "
    "elif command -v qstat >/dev/null 2>&1 && ! command -v qconf >/dev/null 2>&1; then "
    "echo @@pbs-queues; qstat -Q 2>/dev/null; fi\n"
    "if ! type module >/dev/null 2>&1; then\n"
    "  for f in /etc/profile.d/lmod.sh /etc/profile.d/modules.sh \"${MODULESHOME:-/nonexistent}/init/bash\"; do\n"
    '    [ -r "$f" ] && . "$f" >/dev/null 2>&1 && break\n'
    "  done\n"
    "fi\n"
    "if type module >/dev/null 2>&1; then echo @@modules; module -t avail 2>&1; fi\n"
    "for c in conda micromamba mamba; do\n"
    "  if command -v $c >/dev/null 2>&1; then\n"
    '    echo "@@conda $c"\n'
    "    $c env list 2>/dev/null | awk '!/^#/ && NF {print $NF}' | while IFS= read -r p; do\n"
    '      j=0; [ -x "$p/bin/jupyter" ] && j=1; printf "%s|%s\\n" "$j" "$p"\n'
    "    done\n"
    "    break\n"
    "  fi\n"
    "done\n"
    "echo @@venvs\n"
    f"for d in {' '.join(VENV_DIRS)}; do for v in \"$HOME/$d\"/*; do\n"
    '  [ -x "$v/bin/jupyter" ] && [ -f "$v/bin/activate" ] && printf "%s\\n" "$v"\n'
    "done; done\n"
    'echo @@home; printf "%s\\n" "$HOME"\n'
    "echo @@path-jupyter; command -v jupyter 2>/dev/null\n"
    "} </dev/null\n"
    "exit 0\n"
)


@dataclass(frozen=True)
class Partition:
    name: str
    time_limit: int | None  # seconds; None: no limit
    gpus: tuple[str, ...] = ()  # gres strings, e.g. "gpu:a100:4"
    default: bool = False


@dataclass(frozen=True)
class Source:
    """Where Jupyter can come from: the profile keys that load it (modules, venv or conda; none
    when it is on PATH already), and how it shows in a list."""

    label: str
    keys: dict[str, Any]
    verified: bool  # `jupyter` was seen there (a venv, a conda env, PATH); a module is not loaded to look


@dataclass
class Site:
    scheduler: str  # a scheduler name, or "none-found"
    partitions: list[Partition] = field(default_factory=list)
    accounts: list[str] = field(default_factory=list)
    default_account: str | None = None
    sources: list[Source] = field(default_factory=list)

    @property
    def default_partition(self) -> Partition | None:
        return next((p for p in self.partitions if p.default), None)


def _sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@@") and not line.startswith("@@have "):
            current = sections.setdefault(line[2:].strip(), [])
        elif current is not None:
            current.append(line)
    return sections


def parse_sinfo(lines: Sequence[str]) -> list[Partition]:
    """Partitions from `sinfo -h -o '%P|%l|%G|%a'` (one line per partition and node group)."""
    found: dict[str, Partition] = {}
    for line in lines:
        parts = line.strip().split("|")
        if len(parts) < 4:
            continue
        raw, limit, gres, avail = parts[:4]
        name = raw.rstrip("*")
        if not WORD.fullmatch(name) or avail.strip() not in ("up", ""):
            continue
        try:
            seconds: int | None = parse_walltime(limit) if limit not in ("infinite", "UNLIMITED", "n/a") else None
        except ValueError:
            seconds = None
        gpus = tuple(g for g in gres.split(",") if g.startswith("gpu"))
        old = found.get(name)
        if old:
            gpus = tuple(dict.fromkeys((*old.gpus, *gpus)))
        found[name] = Partition(name, seconds, gpus, raw.endswith("*") or bool(old and old.default))
    return list(found.values())


def parse_queue_list(lines: Sequence[str], header: bool) -> list[Partition]:
    """Queues from `qconf -sql` (no header) or `qstat -Q` / `bqueues -w` (a header, maybe a rule)."""
    rows = lines[1:] if header else lines
    names = [ln.split()[0] for ln in rows if ln.split() and not ln.startswith("-")]
    return [Partition(n, None) for n in dict.fromkeys(names) if WORD.fullmatch(n)]


def parse_modules(lines: Sequence[str]) -> list[str]:
    """Module names that may hold Jupyter, from `module -t avail`: each family once, by its
    name without a version (loading it loads the site's default), in the order listed."""
    found: list[str] = []
    for line in lines:
        name = line.strip().removesuffix("(default)").removesuffix("(D)").rstrip("/")
        if not name or name.endswith(":") or not MODULE_NAME.fullmatch(name):
            continue
        family = name.split("/")[0]
        if MODULE_HINT.search(family) and family not in found:
            found.append(family)
    return found


def home_relative(path: str, home: str) -> str:
    """`path` with the home directory as ~ (the profile then works wherever $HOME is mounted)."""
    home = home.rstrip("/")
    return "~/" + path[len(home) + 1:] if home and path.startswith(home + "/") else path


def _source(label: str, keys: dict[str, Any], verified: bool) -> Source | None:
    """A Source whose keys the profile accepts; None for a name or path from the cluster that it would not."""
    try:
        from_table("probe", {"host": "h", **keys}, where="the probe", source="hpclab init")
    except ConfigError:
        return None
    return Source(label, keys, verified)


def parse_probe(text: str) -> Site:
    """A Site from PROBE's output (after the login shell's banner, see remote.after_mark)."""
    s = _sections(text)
    detect = text.split("@@detect\n", 1)[1] if "@@detect\n" in text else ""
    site = Site(parse_detect(detect))
    if site.scheduler == "slurm":
        site.partitions = parse_sinfo(s.get("sinfo", []))
        site.accounts = [a.strip() for a in dict.fromkeys(s.get("accounts", [])) if WORD.fullmatch(a.strip())]
        default = [a.strip() for a in s.get("default-account", []) if WORD.fullmatch(a.strip())]
        site.default_account = default[0] if default else None
    elif site.scheduler == "sge":
        site.partitions = parse_queue_list(s.get("sge-queues", []), header=False)
    elif site.scheduler == "lsf":
        site.partitions = parse_queue_list(s.get("lsf-queues", []), header=True)
    elif site.scheduler in ("pbs", "torque"):
        site.partitions = parse_queue_list(s.get("pbs-queues", []), header=True)
    home = (s.get("home") or [""])[0].strip()
    found: list[Source | None] = []
    for venv in s.get("venvs", []):
        if venv.strip():
            found.append(_source(f"venv {venv}", {"venv": home_relative(venv, home)}, True))
    for key, lines in s.items():
        if key.startswith("conda "):
            tool = key.split()[1]
            for line in lines:
                has, _, prefix = line.partition("|")
                if prefix.startswith("/") and has == "1":
                    found.append(_source(f"{tool} env {prefix}", {"conda": home_relative(prefix, home)}, True))
    modules = parse_modules(s.get("modules", []))
    jupyter_modules = [m for m in modules if "jupyter" in m.lower()]
    found += [_source(f"module {m}", {"modules": [m]}, False) for m in jupyter_modules]
    if any(ln.strip() for ln in s.get("path-jupyter", [])):
        found.append(Source(f"jupyter on PATH ({s['path-jupyter'][0].strip()})", {}, True))
    found += [_source(f"module {m}", {"modules": [m]}, False) for m in modules if m not in jupyter_modules]
    sources = [x for x in found if x is not None]
    site.sources = sources
    return site


def probe(remote: Remote) -> Site:
    """Run PROBE on the login node: one command over the one connection."""
    return parse_probe(remote.run(["bash", "-s"], input=PROBE, check=False, timeout=120, what="site probe").stdout)


# -- the proposal ----------------------------------------------------------------------------------

Ask = Callable[[str, str, Sequence[str]], str]  # (question, default, choices shown) -> the answer


def proposal(site: Site, host: str, ssh_options: Sequence[str], ask: Ask | None = None) -> dict[str, Any]:
    """The profile's keys: the probed defaults, or, with `ask`, what the user answers (an empty
    answer takes the default). Every answer is checked as the profile will be."""
    if site.scheduler == NONE_FOUND:
        raise ConfigError(f"could not tell which scheduler {host} runs",
                          hint="write the profile by hand with scheduler = one of slurm, sge, pbs, torque, lsf, none")
    table: dict[str, Any] = {"host": host}
    if ssh_options:
        table["ssh_options"] = list(ssh_options)
    table["scheduler"] = site.scheduler
    default = site.default_partition
    partition = default.name if default else None
    if ask and site.partitions:
        shown = [f"{p.name}{' (default)' if p.default else ''}: time limit "
                 f"{hms(p.time_limit) if p.time_limit else 'none'}" + (f", GPUs {' '.join(p.gpus)}" if p.gpus else "")
                 for p in site.partitions]
        partition = _ask_valid(ask, "partition", "partition", partition or "", shown, table) or None
    if partition:
        table["partition"] = partition
    chosen = next((p for p in site.partitions if p.name == partition), None)
    account = site.default_account if len(site.accounts) > 1 else None
    if ask and site.accounts:
        account = _ask_valid(ask, "account", "account", site.default_account or "", site.accounts, table) or None
    if account:
        table["account"] = account
    limit = chosen.time_limit if chosen and chosen.time_limit else None
    time_default = hms(min(DEFAULT_TIME, limit) if limit else DEFAULT_TIME)
    table["time"] = _ask_valid(ask, "time limit", "time", time_default, [], table) if ask else time_default
    sources = site.sources
    if sources:
        pick = 0
        if ask:
            shown = [f"{i + 1}. {s.label}" + ("" if s.verified else " (jupyter not verified: doctor checks it)")
                     for i, s in enumerate(sources)]
            while True:
                answer = ask("where Jupyter comes from", "1", shown).strip() or "1"
                if answer.isdigit() and 1 <= int(answer) <= len(sources):
                    pick = int(answer) - 1
                    break
        table.update(sources[pick].keys)
    from_table("new", table, where="the new profile", source="hpclab init")  # every value as `up` will check it
    return table


def _ask_valid(ask: Ask, question: str, key: str, default: str, shown: Sequence[str], table: Mapping[str, Any]) -> str:
    while True:
        answer = ask(question, default, shown).strip() or default
        if not answer:
            return ""
        try:
            from_table("new", {**table, key: answer}, where="your answer", source="hpclab init")
        except ConfigError as exc:
            shown = [f"{exc.message}: {exc.hint}"]
            continue
        return answer


# -- TOML ------------------------------------------------------------------------------------------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def toml_string(text: str) -> str:
    """A TOML basic string holding exactly `text`."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_key(key: str) -> str:
    return key if BARE_KEY.fullmatch(key) else toml_string(key)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def profile_block(name: str, table: Mapping[str, Any]) -> str:
    lines = [f"[profiles.{toml_key(name)}]", "# written by hpclab init; `hpclab doctor` checks it"]
    lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


# -- the config file -------------------------------------------------------------------------------


def existing_profiles(path: Path) -> dict[str, Any]:
    """The profiles in the config file ({} when there is none); ConfigError if it is not TOML."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML ({exc}); hpclab init does not add to it",
                          hint="fix the file first (hpclab init never rewrites your text)") from None
    profiles = data.get("profiles", {})
    return profiles if isinstance(profiles, dict) else {}


def _header_path(line: str) -> tuple[str, ...] | None:
    """The key path of a `[table]` or `[[array]]` header line; None when the line is not one."""
    stripped = line.strip()
    if not stripped.startswith("["):
        return None
    try:
        data: Any = tomllib.loads(stripped)
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    while True:
        if isinstance(data, list) and data:
            data = data[0]
        elif isinstance(data, dict) and len(data) == 1:
            key = next(iter(data))
            path.append(key)
            data = data[key]
        else:
            return tuple(path)


def without_profile(text: str, name: str) -> str:
    """`text` without the table [profiles.NAME] and its sub-tables; the rest as it was."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        path = _header_path(line)
        if path is not None:
            skipping = path[:2] == ("profiles", name)
        if not skipping:
            out.append(line)
    return "".join(out)


def write_profile(path: Path, name: str, table: Mapping[str, Any], *, replace: bool = False) -> None:
    """Add [profiles.NAME] to the config file: a new file is created 0600; an existing one gets
    the table appended, the user's text untouched. With `replace`, an existing table of that
    name (and only it) is removed first. The result is read back: the new profile must read as
    `table`, every other profile as before, or the file is left as it was and ConfigError raised."""
    before = existing_profiles(path)
    if name in before and not replace:
        raise ConfigError(f"profile {name!r} exists in {path}")
    block = profile_block(name, table)
    try:
        old = path.read_text()
    except FileNotFoundError:
        old = None
    if old is None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(path, block)
    else:
        kept = without_profile(old, name) if name in before else old
        new = kept + ("" if not kept or kept.endswith("\n") else "\n") + ("\n" if kept.strip() else "") + block
        if name in before:
            write_private(path, new)
        else:
            with path.open("a") as fh:  # appended: the user's text (and the file's mode) stay as they were
                fh.write(new[len(old):])
    try:
        after = existing_profiles(path)
    except ConfigError:
        after = {}
    others_kept = {k: v for k, v in after.items() if k != name} == {k: v for k, v in before.items() if k != name}
    if after.get(name) != dict(table) or not others_kept:
        if old is None:
            path.unlink()
        else:
            write_private(path, old)
        raise ConfigError(f"hpclab init could not add [profiles.{name}] to {path} cleanly; the file is as it was",
                          hint="add the profile by hand:\n" + block)


# -- the use case ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Made:
    name: str
    config_file: Path
    table: dict[str, Any]
    site: Site


def init(ctx: Context, name: str, host: str, ssh_options: Sequence[str], *, ask: Ask | None = None,
         confirm: Callable[[str], bool] | None = None) -> Made:
    """Probe `host` over one connection and write [profiles.NAME]. Without `confirm` (--yes, no
    terminal) an existing profile of that name is an error; nothing is probed then."""
    path = ctx.paths.config_file
    if not name.strip():
        raise ConfigError("the profile needs a name", hint="hpclab init NAME --host HOST")
    from_table(name, {"host": host, "ssh_options": list(ssh_options)}, where="the command line", source="init")
    existing = existing_profiles(path)
    if name in existing:
        question = f"profile {name!r} exists in {path}; replace it?"
        if confirm is None:
            raise ConfigError(f"profile {name!r} exists in {path}; hpclab init replaces a profile only when you "
                              "confirm it on a terminal",
                              hint=f"choose another name, run `hpclab init {name} --host {host}` on a terminal "
                                   f"without --yes to confirm, or remove [profiles.{name}] from {path}")
        if not confirm(question):
            raise ConfigError(f"profile {name!r} left as it was")
    cluster = ctx.cluster(host, tuple(ssh_options), "auto")
    ctx.report("connect", f"connecting to {host}")
    cluster.login.connect()
    ctx.report("probe", f"looking at what {host} offers")
    site = probe(cluster.login)
    table = proposal(site, host, ssh_options, ask)
    write_profile(path, name, table, replace=name in existing)
    return Made(name, path, table, site)
