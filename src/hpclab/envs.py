"""Environments as data: modules, a venv or a conda environment, and kernels from any of them.

An Environment is what a profile's `modules`, `venv` and `conda` keys say; a Kernel is one entry
of `kernels`. This module validates them, renders the bash that loads them (in the job, before
the setup lines, and in each kernel's launcher, for that kernel's process only), and renders and
parses the probe program that loads them step by step and reports what failed.

Names and paths are data: each is quoted once, here, where it becomes a bash word. Nothing of
what a profile says is ever evaluated by the shell.

The bash library (LIBRARY) is shared by the job, the kernel launchers and the probe: its
functions print `hpclab: ...` on stderr and return non-zero when a step fails; the caller
decides what a failure means (the job exits with ENV_STATUS, the probe reports it).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The job's exit status when its environment cannot be loaded (sysexits' EX_CONFIG).
ENV_STATUS = 78

# Module names as Lmod and Environment Modules spell them: "python/3.11", "R/4.3.1-foss-2023a",
# "gcc@12.2+cuda". No spaces, no shell, not starting with '-'.
MODULE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+@:/-]*")
# A conda environment name (conda refuses '/', ' ', ':', '#' in names); anything with a '/' or
# starting with '~' is a prefix path instead.
CONDA_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")
# Kernel spec names as jupyter_client accepts them (it lowercases them when it lists them).
KERNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
KERNEL_KEYS = ("argv", "conda", "display_name", "modules", "name", "venv")
CONNECTION_FILE = "{connection_file}"


@dataclass(frozen=True)
class Environment:
    """Loaded in this order: modules, then conda or venv (never both)."""

    modules: tuple[str, ...] = ()
    venv: str | None = None
    conda: str | None = None

    def __bool__(self) -> bool:
        return bool(self.modules or self.venv or self.conda)


@dataclass(frozen=True)
class Kernel:
    """One kernel the lab offers: a kernel spec started inside `env`. Without `argv` the kernel
    is `python -m ipykernel_launcher -f {connection_file}` of that environment."""

    name: str
    display_name: str | None = None
    env: Environment = field(default_factory=Environment)
    argv: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        return self.display_name if self.display_name is not None else self.name

    @property
    def language(self) -> str:
        # A kernel spec must name a language; for argv kernels the program's name is the best guess.
        return self.argv[0].rsplit("/", 1)[-1] if self.argv else "python"


# -- validation --------------------------------------------------------------------------------
# Each check takes the raw value (TOML or a flag) and returns the value the Profile holds, or
# raises ValueError with what would be accepted (options.py turns that into its Invalid).


def check_modules(value: Any) -> tuple[str, ...]:
    """A list of module names; a flag's string is comma separated."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and MODULE.fullmatch(v) for v in value):
        raise ValueError("a list of module names like ['python/3.11', 'jupyter'] (letters, digits, "
                         "'_', '.', '+', '@', ':', '/', '-'; no spaces or shell characters)")
    return tuple(value)


def check_venv(value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "\0\n\r"):
        raise ValueError("the directory of a virtual environment on the cluster, e.g. '~/venvs/lab'")
    return value


def check_conda(value: Any) -> str:
    if isinstance(value, str) and (CONDA_NAME.fullmatch(value) or (
            is_conda_path(value) and not any(c in value for c in "\0\n\r"))):
        return value
    raise ValueError("a conda environment name like 'lab', or its prefix path like '~/envs/lab'")


def is_conda_path(value: str) -> bool:
    return "/" in value or value.startswith("~")


def check_kernels(value: Any) -> tuple[Kernel, ...]:
    """A list of kernel tables: name (required), display_name, modules, venv or conda, argv."""
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ValueError('a list of tables like [{ name = "torch", venv = "~/venvs/torch" }]')
    kernels: list[Kernel] = []
    seen: set[str] = set()
    for i, table in enumerate(value):
        where = f"kernel {table.get('name')!r}" if isinstance(table.get("name"), str) else f"kernels[{i}]"
        unknown = sorted(set(table) - set(KERNEL_KEYS))
        if unknown:
            raise ValueError(f"tables with only the keys {', '.join(KERNEL_KEYS)} "
                             f"(unknown key {unknown[0]!r} in {where})")
        name = table.get("name")
        if not isinstance(name, str) or not KERNEL_NAME.fullmatch(name):
            raise ValueError(f"tables with a name that is a plain word (letters, digits, '.', '_', '-'), "
                             f"e.g. name = \"torch\" ({where})")
        if name.lower() in seen:
            raise ValueError(f"tables with different names (kernel {name!r} appears twice)")
        seen.add(name.lower())
        display = table.get("display_name")
        if display is not None and (not isinstance(display, str) or not display.strip()):
            raise ValueError(f"tables whose display_name is a non-empty string ({where})")
        if "venv" in table and "conda" in table:
            raise ValueError(f"tables with venv or conda, not both ({where})")
        try:
            env = Environment(
                modules=check_modules(table["modules"]) if "modules" in table else (),
                venv=check_venv(table["venv"]) if "venv" in table else None,
                conda=check_conda(table["conda"]) if "conda" in table else None,
            )
        except ValueError as exc:
            raise ValueError(f"tables whose values are valid ({where}: {exc})") from None
        argv = table.get("argv", [])
        if not isinstance(argv, list) or not all(isinstance(a, str) and "\0" not in a for a in argv) or (
                argv and not argv[0].strip()):
            raise ValueError(f'tables whose argv is a list of strings with "{CONNECTION_FILE}" where the '
                             f"connection file goes ({where})")
        kernels.append(Kernel(name=name, display_name=display, env=env, argv=tuple(argv)))
    return tuple(kernels)


# -- bash --------------------------------------------------------------------------------------


def home_path(path: str) -> str:
    """A cluster path as one bash word, a leading ~ meaning $HOME (the rule of jobscript.shell_path,
    which this module cannot import: jobscript imports this one)."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _conda_word(conda: str) -> str:
    return home_path(conda) if is_conda_path(conda) else shlex.quote(conda)


# The functions the job, the kernel launchers and the probe share. Each prints "hpclab: ..." on
# stderr and returns non-zero when its step fails.
# - `module` is a shell function that login shells define; a batch job or a kernel's bash may not
#   have it, so the usual init files of Lmod and Environment Modules are read when it is missing.
# - conda is activated without `conda init` in rc files: the executable's own hook defines the
#   shell function (conda: `conda shell.bash hook`; mamba 2 and micromamba: `shell hook --shell
#   bash`, whose function calls $MAMBA_EXE), which then activates. It is looked for after the
#   modules loaded (a module may bring it): $CONDA_EXE, PATH, $MAMBA_EXE, then the usual install
#   places under $HOME.
# - Environment Modules 3.2 (the old C version) returns 0 when a load fails; Lmod and
#   Environment Modules 4+ return non-zero, which is what is checked here.
LIBRARY = r"""hpclab_fail() { printf 'hpclab: %s\n' "$*" >&2; return 1; }
hpclab_module() {
  local f
  if ! type module >/dev/null 2>&1; then
    for f in /etc/profile.d/lmod.sh /usr/share/lmod/lmod/init/bash /etc/profile.d/modules.sh /usr/share/Modules/init/bash; do
      if [ -r "$f" ]; then . "$f" >/dev/null 2>&1; fi
      if type module >/dev/null 2>&1; then break; fi
    done
  fi
  type module >/dev/null 2>&1 || { hpclab_fail "cannot load module $1: there is no 'module' command here (no Lmod or Environment Modules found)"; return; }
  module load "$1" || hpclab_fail "module load $1 failed with status $?"
}
hpclab_venv() {
  [ -f "$1/bin/activate" ] || { hpclab_fail "$1 is not a virtual environment (there is no $1/bin/activate)"; return; }
  . "$1/bin/activate" || hpclab_fail "activating the virtual environment $1 failed with status $?"
}
hpclab_conda() {
  local c exe= hook tool
  for c in "${CONDA_EXE:-}" "$(type -P conda)" "$(type -P mamba)" "$(type -P micromamba)" "${MAMBA_EXE:-}" \
      "$HOME/miniforge3/bin/conda" "$HOME/mambaforge/bin/conda" "$HOME/miniconda3/bin/conda" \
      "$HOME/anaconda3/bin/conda" "$HOME/micromamba/bin/micromamba" "$HOME/.local/bin/micromamba" "$HOME/bin/micromamba"; do
    case $c in /*) if [ -f "$c" ] && [ -x "$c" ]; then exe=$c; break; fi ;; esac
  done
  [ -n "$exe" ] || { hpclab_fail "cannot activate the conda environment $1: no conda, mamba or micromamba found (looked at \$CONDA_EXE, PATH after the modules, \$MAMBA_EXE, ~/miniforge3, ~/mambaforge, ~/miniconda3, ~/anaconda3, ~/micromamba, ~/.local/bin, ~/bin)"; return; }
  tool=${exe##*/}
  case $tool in
    conda) hook=$("$exe" shell.bash hook) ;;
    mamba|micromamba) export MAMBA_EXE="$exe"; hook=$("$exe" shell hook --shell bash) ;;
    *) hpclab_fail "cannot activate the conda environment $1: $exe is not conda, mamba or micromamba"; return ;;
  esac || { hpclab_fail "$exe could not print its shell hook (status $?)"; return; }
  eval "$hook" || { hpclab_fail "the shell hook of $exe failed (status $?)"; return; }
  "$tool" activate "$1" || hpclab_fail "$tool activate $1 failed with status $? ($exe)"
}
"""


def load_lines(env: Environment, on_error: str) -> list[str]:
    """The bash lines that load `env` in order, each followed by `|| on_error`."""
    lines = [f"hpclab_module {shlex.quote(m)} || {on_error}" for m in env.modules]
    if env.conda is not None:
        lines.append(f"hpclab_conda {_conda_word(env.conda)} || {on_error}")
    elif env.venv is not None:
        lines.append(f"hpclab_venv {home_path(env.venv)} || {on_error}")
    return lines


def job_environment(env: Environment) -> str:
    """The job's part before the setup lines: the library and the loading steps ('' for none)."""
    if not env:
        return ""
    lines = load_lines(env, f"exit {ENV_STATUS}")
    return ("# --- environment from the profile: modules, then conda or venv ---\n"
            + LIBRARY + "\n".join(lines) + "\n# --- end of environment ---\n")


# Finds the python of a kernel's environment and checks that it has ipykernel, without importing
# it (that would take a second of the kernel's start).
_PYTHON = """hpclab_py=$(type -P python || type -P python3) || {{ hpclab_fail "kernel {name}: there is no python in its environment"; exit 1; }}
"$hpclab_py" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("ipykernel_launcher") is None)' || {{ hpclab_fail "kernel {name}: ipykernel is not installed in its environment ($hpclab_py); install it there: $hpclab_py -m pip install ipykernel"; exit 1; }}
"""


def _argv_word(arg: str) -> str:
    """One argv element as a bash word, with "{connection_file}" becoming "$1"."""
    parts = arg.split(CONNECTION_FILE)
    return '"$1"'.join(shlex.quote(p) if p else "" for p in parts) or "''"


def launcher(kernel: Kernel) -> str:
    """The bash script a kernel spec runs with the connection file as $1: it reads LIBRARY from
    KERNEL_LIBRARY (two directories up from its own), loads the kernel's environment (for this
    process only) and execs the kernel."""
    name = kernel.name
    head = (f"# hpclab kernel {name}: its own environment, then the kernel\n"
            f'. "${{0%/kernels/*}}/{KERNEL_LIBRARY}" || exit 1\n')
    steps = load_lines(kernel.env, "exit 1")
    if kernel.argv:
        run = "exec " + " ".join(_argv_word(a) for a in kernel.argv) + "\n"
    else:
        run = _PYTHON.format(name=name) + 'exec "$hpclab_py" -m ipykernel_launcher -f "$1"\n'
    return head + "".join(line + "\n" for line in steps) + run


# LIBRARY for the launchers, next to the kernels/ directory on JUPYTER_PATH.
KERNEL_LIBRARY = "hpclab-env.sh"


def _heredoc(text: str, word: str) -> str:
    """`text` as the body of a quoted here-document ending at `word`, made longer until no line
    of the text is the word: the body is then data whatever it holds."""
    lines = set(text.splitlines())
    while word in lines:
        word += "_"
    return f"<<'{word}' || exit 1\n{text}{word}"


def job_kernels(kernels: tuple[Kernel, ...]) -> str:
    """The job's part after its safety settings: each kernel's spec and launcher in the private
    runtime dir ($hpclab_runtime/share/kernels/NAME), and that share/ first on JUPYTER_PATH ('' for
    no kernels). Launchers are quoted here-documents; kernel.json is JSON from hpclab_json and
    json.dumps: no name, path or title reaches the shell as code."""
    if not kernels:
        return ""
    out = ["# Kernels from the profile: specs and launchers in the private runtime dir, first on JUPYTER_PATH.",
           f'( umask 077 && mkdir -p "$hpclab_runtime/share/kernels" && cat > "$hpclab_runtime/share/{KERNEL_LIBRARY}" ) '
           + _heredoc(LIBRARY, "HPCLAB_ENV")]
    for k in kernels:
        out += [
            f'hpclab_kernel="$hpclab_runtime/share/kernels/"{shlex.quote(k.name)}',
            '( umask 077 && mkdir "$hpclab_kernel" && cat > "$hpclab_kernel/launch" ) '
            + _heredoc(launcher(k), "HPCLAB_KERNEL"),
            f"( umask 077 && printf '{{\"argv\": [%s, %s, \"{CONNECTION_FILE}\"], \"display_name\": %s, "
            f"\"language\": %s, \"metadata\": {{\"hpclab\": true}}}}\\n' "
            f'"$(hpclab_json "$BASH")" "$(hpclab_json "$hpclab_kernel/launch")" '
            f'{shlex.quote(json.dumps(k.title))} {shlex.quote(json.dumps(k.language))} > "$hpclab_kernel/kernel.json" ) '
            "|| exit 1",
        ]
    out.append('export JUPYTER_PATH="$hpclab_runtime/share${JUPYTER_PATH:+:$JUPYTER_PATH}"')
    return "\n".join(out) + "\n"


# -- the probe ---------------------------------------------------------------------------------

PROBE_MARK = "@@hpclab-env"

# The same as jobscript BODY's hpclab_json: $1 as a JSON string, whatever it holds.
JSON_FUNCTION = r"""hpclab_json() {
  local s=$1 out= c i
  for (( i = 0; i < ${#s}; i++ )); do
    c=${s:i:1}
    case $c in
      \\) out+='\\' ;;
      \") out+='\"' ;;
      [[:cntrl:]]) printf -v c '\\u%04x' "'$c"; out+=$c ;;
      *) out+=$c ;;
    esac
  done
  printf '"%s"' "$out"
}
"""

# Run with bash (e.g. `bash -s` with the program on stdin). Each step prints one line
# "@@hpclab-env {json}"; the last line is "@@hpclab-env {"step": "end"}". Banners of rc files
# and anything the environment prints are not such lines. The step's stderr becomes its "error".
_PROBE_HEAD = JSON_FUNCTION + r"""hpclab_err=$(mktemp "${TMPDIR:-/tmp}/hpclab-probe.XXXXXX") || exit 1
trap 'rm -f "$hpclab_err"' EXIT
hpclab_report() {  # step kernel what ok detail: one line, the step's stderr as its error
  printf '%s {"step": %s, "kernel": %s, "what": %s, "ok": %s, "detail": %s, "error": %s}\n' "$MARK" \
    "$(hpclab_json "$1")" "$(hpclab_json "$2")" "$(hpclab_json "$3")" "$4" "$(hpclab_json "$5")" \
    "$(hpclab_json "$(tail -n 20 "$hpclab_err")")"
  : > "$hpclab_err"
}
hpclab_step() {  # step kernel what command...: run the command in this shell, report how it went
  local step=$1 kernel=$2 what=$3
  shift 3
  if "$@" 2>"$hpclab_err" >&2; then hpclab_report "$step" "$kernel" "$what" true ""
  else hpclab_failed=1; hpclab_report "$step" "$kernel" "$what" false ""; fi
}
hpclab_jupyter() {
  local j line py v=
  j=$(type -P jupyter) || { echo "there is no 'jupyter' on PATH" > "$hpclab_err"; hpclab_report jupyter "" "" false ""; return; }
  IFS= read -r line < "$j"
  py=${line#'#!'}
  case $py in /*python*) ;; *) py= ;; esac
  if [ -n "$py" ] && [ "${py#* }" = "$py" ]; then
    v=$("$py" -c 'import jupyter_server; print(jupyter_server.__version__)' 2>"$hpclab_err")
  else
    v=$("$j" server --version 2>"$hpclab_err")
  fi
  if [ -n "$v" ]; then : > "$hpclab_err"; hpclab_report jupyter "" "$j" true "$v"
  else echo "jupyter_server is not installed with $j" >> "$hpclab_err"; hpclab_report jupyter "" "$j" false ""; fi
}
hpclab_ipykernel() {  # kernel
  local py v
  py=$(type -P python || type -P python3) || { echo "there is no python in this environment" > "$hpclab_err"; hpclab_report ipykernel "$1" "" false ""; return; }
  if v=$("$py" -c 'import ipykernel; print(ipykernel.__version__)' 2>"$hpclab_err"); then
    hpclab_report ipykernel "$1" "$py" true "$v"
  else
    echo "ipykernel is not installed for $py" >> "$hpclab_err"; hpclab_report ipykernel "$1" "$py" false ""
  fi
}
hpclab_program() {  # kernel program
  local p
  if p=$(type -P "$2"); then hpclab_report program "$1" "$p" true ""
  else echo "$2 is not on PATH in this environment" > "$hpclab_err"; hpclab_report program "$1" "$2" false ""; fi
}
"""


def _probe_steps(env: Environment, kernel: str) -> list[str]:
    k = shlex.quote(kernel)
    lines = [f"hpclab_step module {k} {shlex.quote(m)} hpclab_module {shlex.quote(m)}" for m in env.modules]
    if env.conda is not None:
        lines.append(f"hpclab_step conda {k} {shlex.quote(env.conda)} hpclab_conda {_conda_word(env.conda)}")
    elif env.venv is not None:
        lines.append(f"hpclab_step venv {k} {shlex.quote(env.venv)} hpclab_venv {home_path(env.venv)}")
    return lines


def probe_program(env: Environment, kernels: tuple[Kernel, ...] = ()) -> str:
    """A bash program that, run as the user (login node or a node), loads `env` step by step, as
    the job does, reports `jupyter` and its jupyter_server version, then for each kernel loads its
    environment on top (in a subshell, as its launcher does) and, when that loaded, reports
    whether it has ipykernel (or its argv's program). The lab's steps are all reported even after
    one failed. parse_probe reads the output."""
    lines = [f"MARK={PROBE_MARK}", _PROBE_HEAD + LIBRARY.rstrip("\n"), *_probe_steps(env, ""), "hpclab_jupyter"]
    for k in kernels:
        # its launcher stops at a step that fails: what it would start is not checked then
        body = ["hpclab_failed=", *_probe_steps(k.env, k.name)]
        if k.argv:
            body.append(f"[ -n \"$hpclab_failed\" ] || hpclab_program {shlex.quote(k.name)} {shlex.quote(k.argv[0])}")
        else:
            body.append(f"[ -n \"$hpclab_failed\" ] || hpclab_ipykernel {shlex.quote(k.name)}")
        lines.append("(\n" + "\n".join("  " + b for b in body) + "\n)")
    lines.append("printf '%s {\"step\": \"end\"}\\n' \"$MARK\"")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Step:
    """One step of the probe: `step` is module, venv, conda, jupyter, ipykernel or program; `what`
    the module, path, env name or program; `detail` a version where there is one; `error` what
    the step printed on stderr when it failed."""

    step: str
    what: str
    ok: bool
    detail: str = ""
    error: str = ""
    kernel: str = ""  # "" for the lab's own environment


@dataclass(frozen=True)
class KernelReport:
    name: str
    steps: tuple[Step, ...]

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)


@dataclass(frozen=True)
class EnvReport:
    """What the probe found. `complete` is False when the program did not reach its end (it was
    killed, or the output was cut): missing steps are then unknown, not good."""

    steps: tuple[Step, ...]  # the lab's environment, in order, the jupyter step last
    kernels: tuple[KernelReport, ...]
    complete: bool

    @property
    def jupyter(self) -> str | None:
        """The path of `jupyter`, when there is one."""
        return next((s.what for s in self.steps if s.step == "jupyter" and s.what), None)

    @property
    def jupyter_server(self) -> str | None:
        """jupyter_server's version, when it was found."""
        return next((s.detail for s in self.steps if s.step == "jupyter" and s.ok and s.detail), None)

    @property
    def failed(self) -> tuple[Step, ...]:
        return tuple(s for s in (*self.steps, *(x for k in self.kernels for x in k.steps)) if not s.ok)

    @property
    def ok(self) -> bool:
        return self.complete and not self.failed and any(s.step == "jupyter" for s in self.steps)


def parse_probe(text: str) -> EnvReport:
    """The EnvReport of probe_program's output (banners and other lines are ignored)."""
    steps: list[Step] = []
    by_kernel: dict[str, list[Step]] = {}
    complete = False
    for line in text.splitlines():
        if not line.startswith(PROBE_MARK + " "):
            continue
        try:
            data = json.loads(line[len(PROBE_MARK) + 1:])
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        if data.get("step") == "end":
            complete = True
            continue
        step = Step(step=str(data.get("step", "")), what=str(data.get("what", "")), ok=data.get("ok") is True,
                    detail=str(data.get("detail", "")), error=str(data.get("error", "")).strip(),
                    kernel=str(data.get("kernel", "")))
        if step.kernel:
            by_kernel.setdefault(step.kernel, []).append(step)
        else:
            steps.append(step)
    kernels = tuple(KernelReport(name, tuple(s)) for name, s in by_kernel.items())
    return EnvReport(tuple(steps), kernels, complete)
