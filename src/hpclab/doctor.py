"""`hpclab doctor PROFILE [--job]`: check a profile step by step, before a job waits in a queue.

Each step is a Check (name, status, detail, hint). Without `job` nothing is submitted: the
scheduler is asked whether it *would* accept the job (`sbatch --test-only`, Grid Engine's
`qsub -w v`; a queue list elsewhere), and the environment is loaded on the login node by the
same shell lines the job would run. With `job`, a short job of the profile's shape is
submitted, hpclab connects to its node the way the socket transport does, loads the
environment there, and cancels the job (also on an error or Ctrl-C).

    diagnosis = diagnose(ctx, "mycluster", job=False)   # a Diagnosis: failures are checks, not raised
    diagnosis.exit_code                                  # 0, or the code of the first failure

A failed check's exit code is the one `hpclab up` would exit with for the same problem
(errors.ExitCode): 2 profile or environment, 3 SSH, 4 scheduler, 5 the test job, 1 anything
else (a command that did not answer). Only Ctrl-C (or SIGTERM, SIGHUP) leaves diagnose() by
an exception, after the test job, if any, is cancelled.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from . import apps, envs, profiles
from .cluster import Cluster
from .errors import ExitCode, HpclabError, LoginRefused, Unreachable
from .launch import MIN_JUPYTER_SERVER, REQUIRED_JUPYTER_SERVER, new_record, version_tuple
from .options import JOB_KEYS
from .profiles import Profile
from .remote import Remote
from .schedulers import JobSpec, Scheduler
from .session import Context, stop_session
from .sessiondir import SessionDir

OK, FAIL, WARN, SKIP = "ok", "fail", "warn", "skip"


@dataclass(frozen=True)
class Check:
    """One step's result. `status`: ok, fail, warn (works, but look), skip (not checked)."""

    name: str
    status: str
    detail: str
    hint: str | None = None
    exit_code: int = ExitCode.OK  # what a failure would make `hpclab up` exit with

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "hint": self.hint}


@dataclass
class Diagnosis:
    profile: str
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, else the exit code of the first failed check."""
        return self.failed[0].exit_code if self.failed else ExitCode.OK


def _failure(name: str, exc: HpclabError, detail: str | None = None) -> Check:
    return Check(name, FAIL, detail or exc.message, exc.hint, exc.exit_code)


# -- the job's spec, as `up` would submit it ----------------------------------------------------


def job_spec(profile: Profile, session_id: str, *, time_limit: int | None = None) -> JobSpec:
    """The JobSpec `hpclab up` submits for `profile` (launch.Launch._submit builds the same)."""
    sdir = SessionDir(session_id)
    values = {key: getattr(profile, key) for key in JOB_KEYS}
    if time_limit is not None:
        values["time"] = time_limit
    return JobSpec(session_id=session_id, output=sdir.file(sdir.output), error=sdir.file(sdir.error), **values)


# How each scheduler says whether it would take a job without queueing one: the argv (the
# script on stdin), or None where it has no such thing and a queue list is all there is.
DRY_RUN: dict[str, tuple[str, ...]] = {
    "slurm": ("sbatch", "--test-only"),
    "sge": ("qsub", "-w", "v"),  # verify against the queues; "-w v" never submits
}
QUEUE_LIST: dict[str, tuple[str, ...]] = {
    "pbs": ("qstat", "-Q"),
    "torque": ("qstat", "-Q"),
    "lsf": ("bqueues", "-w"),
}


def dry_run_check(scheduler: Scheduler, spec: JobSpec, rc: int, stdout: str, stderr: str) -> Check:
    """The scheduler check from a dry-run submission's answer."""
    said = [ln.strip() for ln in (stderr + "\n" + stdout).splitlines() if ln.strip()]
    asked = _asked(spec)
    if rc == 0:
        return Check("scheduler", OK, f"{scheduler.title} would accept {asked}: "
                     + (said[-1] if said else "no complaint") + " (nothing was submitted)")
    why = "; ".join(re.sub(r"^(sbatch|qsub): (error: )?", "", ln) for ln in said[-3:]) or f"exit status {rc}"
    return Check("scheduler", FAIL, f"{scheduler.title} would refuse {asked}: {why}",
                 "change partition, account, time, cpus, mem or gpus in the profile "
                 "(`hpclab init` lists what the cluster offers)", ExitCode.SCHEDULER)


def queue_check(scheduler: Scheduler, spec: JobSpec, rc: int, stdout: str) -> Check:
    """The scheduler check where there is no dry run: the queue exists (PBS, Torque, LSF)."""
    if rc != 0:
        return Check("scheduler", FAIL, f"{scheduler.title} did not list its queues (exit status {rc})",
                     stdout.strip()[-300:] or None, ExitCode.SCHEDULER)
    names = {ln.split()[0] for ln in stdout.splitlines()[1:] if ln.split() and not ln.startswith("-")}
    where = f"{scheduler.title} has no dry-run submission, so only the queue was checked"
    if spec.partition and spec.partition not in names:
        return Check("scheduler", FAIL, f"{scheduler.title} has no queue {spec.partition!r} ({where})",
                     "queues: " + (", ".join(sorted(names)) or "none listed"), ExitCode.SCHEDULER)
    queue = f"queue {spec.partition!r} exists" if spec.partition else "the default queue is used"
    return Check("scheduler", WARN, f"{queue}; {where}: time and resources are not checked",
                 "`hpclab doctor --job` submits a short job with them")


def _asked(spec: JobSpec) -> str:
    parts = [f"partition {spec.partition}" if spec.partition else "the default partition"]
    if spec.account:
        parts.append(f"account {spec.account}")
    parts.append(f"time {spec.time // 60} min")
    for key in ("cpus", "mem", "gpus"):
        if getattr(spec, key):
            parts.append(f"{key} {getattr(spec, key)}")
    return ", ".join(parts)


def check_scheduler(cluster: Cluster, profile: Profile) -> Check:
    sched = cluster.scheduler
    spec = job_spec(profile, "0" * 8)
    if sched.name == "none":
        return Check("scheduler", OK, "no scheduler: the lab runs on the host itself")
    try:
        directives = sched.directives(spec)
    except HpclabError as exc:
        return _failure("scheduler", exc)
    if sched.name in DRY_RUN:
        script = "#!/bin/bash\n" + "\n".join(directives) + "\ntrue\n"
        out = cluster.login.run(list(DRY_RUN[sched.name]), input=script, check=False, timeout=60,
                                what="dry-run submission")
        return dry_run_check(sched, spec, out.returncode, out.stdout, out.stderr)
    if sched.name in QUEUE_LIST:
        out = cluster.login.run(list(QUEUE_LIST[sched.name]), check=False, timeout=60, what="queue list")
        return queue_check(sched, spec, out.returncode, out.stdout)
    return Check("scheduler", SKIP, f"hpclab cannot ask {sched.title} in advance")


# -- the environment -----------------------------------------------------------------------------

# The user's Jupyter config files that a lab reads (the same names in JUPYTER_CONFIG_DIR).
CONFIG_FILES = ("jupyter_server_config.py", "jupyter_server_config.json", "jupyter_notebook_config.py",
                "jupyter_notebook_config.json", "jupyter_lab_config.py", "jupyter_lab_config.json")
_CONFIG_SCAN = (
    'hpclab_scan() {{ for f in {files} "$1"/jupyter_server_config.d/*.json; do '
    '[ -f "$f" ] && [ -r "$f" ] || continue; printf "@@config %s\\n" "$f"; head -c 200000 "$f" | sed "s/^/|/"; echo; '
    "done; }}"
).format(files=" ".join(f'"$1"/{name}' for name in CONFIG_FILES))


def environment_program(profile: Profile) -> str:
    """A bash program (sent on stdin to `bash -s`) that sets up the environment as the job does
    (the profile's env, its modules then conda or venv, then its setup lines under `set -e`) and
    prints, in @@-headed lines (see parse_environment): the user's Jupyter config files; each
    environment step as envs.probe_program reports it; how far the setup lines got; where
    `jupyter` is and its jupyter_server version; each kernel's environment, loaded on top of the
    lab's as its launcher does."""
    env = "".join(f"export {name}={shlex.quote(value)}\n" for name, value in profile.env)
    setup = "\n".join(profile.setup) if profile.setup else ":"
    steps = ""
    if profile.environment:
        # reported step by step (in a subshell), then loaded here as the job loads it
        steps = (f"echo @@envs-begin\n(\n{envs.probe_program(profile.environment)})\necho @@envs-end\n"
                 + envs.job_environment(profile.environment))
    kernels = ""
    if profile.kernels:
        kernels = f"echo @@kernels-begin\n(\n{envs.probe_program(envs.Environment(), profile.kernels)})\n"
    return (
        "umask 077\ncd \"$HOME\" || exit 1\n" + _CONFIG_SCAN + "\n"
        'hpclab_cfg="${JUPYTER_CONFIG_DIR:-$HOME/.jupyter}"\nhpclab_scan "$hpclab_cfg"\n'
        + env + steps
        + "echo @@setup\n"
        # As in the job: the lines run under `set -e`. The command that ended the shell is
        # named by the EXIT trap (a failed `source` of a missing file exits without an ERR trap):
        # the last command of the lines themselves, not one inside a function they call (Lmod's
        # `module`), whose `return N` bash also shows to a DEBUG trap at the top level.
        + "hpclab_cmd=\ntrap 'echo \"@@setup-failed $? $hpclab_cmd\"' EXIT\n"
        + "trap 'if [ \"${#FUNCNAME[@]}\" = 0 ]; then case $BASH_COMMAND in return|return\\ *) ;; "
        + "*) hpclab_cmd=$BASH_COMMAND;; esac; fi' DEBUG\n"
        + "set -e\n" + setup + "\nset +e\ntrap - DEBUG EXIT\necho @@setup-ok\n"
        + 'if [ "${JUPYTER_CONFIG_DIR:-$HOME/.jupyter}" != "$hpclab_cfg" ]; then\n'
        + '  hpclab_scan "$JUPYTER_CONFIG_DIR"\nfi\n'
        + "if command -v jupyter >/dev/null 2>&1; then\n"
        + '  printf "@@jupyter %s\\n" "$(command -v jupyter)"\n'
        + '  printf "@@jupyter-server %s\\n" "$(command jupyter server --version 2>/dev/null | tail -n 1)"\n'
        + "else\n  echo @@no-jupyter\nfi\n"
        + "".join(_program_probe(p, apps.get(profile.app).version_args) for p in apps.get(profile.app).programs
                  if p != "jupyter")
        + kernels
    )


def _program_probe(program: str, version_args: tuple[str, ...]) -> str:
    """Where the app's `program` is once the environment is loaded, and its version's first line."""
    q = shlex.quote(program)
    args = shlex.join(version_args)
    return (f"if command -v {q} >/dev/null 2>&1; then\n"
            f'  printf "@@program %s %s %s\\n" {q} "$(command -v {q})" '
            f'"$(command {q} {args} 2>/dev/null | head -n 1)"\n'
            f"else\n  printf '@@no-program %s\\n' {q}\nfi\n")


@dataclass(frozen=True)
class EnvResult:
    setup_done: bool
    failed_status: int | None  # a setup line's exit status, with the command in failed_command
    failed_command: str
    jupyter: str | None
    server_version: str | None
    configs: dict[str, str]
    steps: envs.EnvReport | None = None  # the modules, conda or venv, when the profile has them
    kernels: envs.EnvReport | None = None  # the kernels, when the profile has them and the lab's setup ran
    programs: dict[str, tuple[str, str] | None] = field(default_factory=dict)  # the app's: (path, version)


def parse_environment(stdout: str) -> EnvResult:
    configs: dict[str, str] = {}
    current: str | None = None
    part: list[str] | None = None  # the lines of an envs probe, read by envs.parse_probe
    parts: dict[str, list[str]] = {}
    done, status, command, jupyter, version = False, None, "", None, None
    programs: dict[str, tuple[str, str] | None] = {}
    for line in stdout.splitlines():
        if line in ("@@envs-begin", "@@kernels-begin"):
            part = parts.setdefault(line[2:].split("-")[0], [])
            current = None
        elif line == "@@envs-end":
            part = None
        elif part is not None:
            part.append(line)
        elif line.startswith("@@config "):
            current = line[len("@@config "):]
            configs[current] = ""
        elif current is not None and line.startswith("|"):
            configs[current] += line[1:] + "\n"
        elif line.startswith("@@"):
            current = None
            word, _, rest = line[2:].partition(" ")
            if word == "setup-ok":
                done = True
            elif word == "setup-failed":
                code, _, command = rest.partition(" ")
                status = int(code) if code.isdigit() else 1
            elif word == "jupyter":
                jupyter = rest.strip()
            elif word == "jupyter-server":
                version = rest.strip() or None
            elif word == "program":
                prog, _, where = rest.partition(" ")
                path, _, said = where.partition(" ")
                programs[prog] = (path, said.strip())
            elif word == "no-program":
                programs[rest.strip()] = None
        else:
            current = None
    reports = {k: envs.parse_probe("\n".join(v)) for k, v in parts.items()}
    return EnvResult(done, status, command.strip(), jupyter, version, configs, reports.get("envs"),
                     reports.get("kernels"), programs)


def _said(text: str, lines: int = 12) -> str:
    """The last `lines` lines of what a command said, without runs of blank lines."""
    kept: list[str] = []
    for line in text.strip().splitlines():
        if line.strip() or (kept and kept[-1].strip()):
            kept.append(line.rstrip())
    return "\n".join(kept[-lines:])


def environment_checks(result: EnvResult, stderr: str, where: str, *, rc: int = 0,
                       profile: Profile | None = None) -> list[Check]:
    """`environment`, `jupyter` and `kernel NAME` checks from what environment_program printed on `where`."""
    said = _said(stderr)
    suffix = "" if where == "the login node" else f" on {where}"
    name = "environment" + suffix
    wanted = profile.environment if profile is not None else envs.Environment()
    if wanted:
        report = result.steps
        loads = [s for s in (report.steps if report else ()) if s.step != "jupyter"]
        failed = [s for s in loads if not s.ok]
        if failed:
            first = failed[0]
            detail = f"{first.step} {first.what} does not load{suffix or ' on the login node'}"
            if len(failed) > 1:
                detail += " (also: " + ", ".join(f"{s.step} {s.what}" for s in failed[1:]) + ")"
            return [Check(name, FAIL, detail, "\n".join(_said(s.error, 20) for s in failed) or None, ExitCode.CONFIG)]
        expected = len(wanted.modules) + bool(wanted.venv or wanted.conda)
        if report is None or not report.complete or len(loads) < expected:
            return [Check(name, FAIL, f"the environment check did not finish{suffix} (exit status {rc})",
                          f"it said:\n{said}" if said else None, ExitCode.CONFIG)]
    if not result.setup_done:
        if result.failed_status is not None:
            detail = f"a setup line failed{suffix or ' on the login node'} with status {result.failed_status}: " \
                     f"{result.failed_command}"
        else:
            detail = f"the setup lines ended the shell{suffix or ' on the login node'} (exit status {rc})"
        return [Check(name, FAIL, detail, (f"it said:\n{said}" if said else None), ExitCode.CONFIG)]
    loaded = [f"module {m}" for m in wanted.modules]
    loaded += [f"conda {wanted.conda}"] if wanted.conda else [f"venv {wanted.venv}"] if wanted.venv else []
    if profile is not None and profile.setup:
        loaded.append(f"{len(profile.setup)} setup line(s)")
    checks = [Check(name, OK, (", ".join(loaded) or "nothing to load") + f": loaded{suffix or ' on the login node'}")]
    app = apps.get(profile.app if profile is not None else None)
    for program, found in result.programs.items():
        if found is None:
            checks.append(Check(f"{program}{suffix}", FAIL,
                                f"'{program}' ({app.title}) is not on PATH{suffix} once the environment is loaded",
                                "add what provides it: modules = [...], venv = \"...\", conda = \"...\" "
                                "or a setup line", ExitCode.CONFIG))
        else:
            checks.append(Check(f"{program}{suffix}", OK, f"{found[0]}" + (f": {found[1]}" if found[1] else "")))
    if not app.jupyter_server:
        return checks + kernel_checks(result.kernels, profile.kernels if profile is not None else (), suffix)
    jname = "jupyter" + suffix
    fix = "upgrade it in the environment the profile loads (pip install -U 'jupyter_server>=2.18' jupyterlab)"
    if result.jupyter is None:
        checks.append(Check(jname, FAIL, f"'jupyter' is not on PATH{suffix} once the environment is loaded",
                            "add what provides it: modules = [...], venv = \"...\", conda = \"...\" or a setup line",
                            ExitCode.CONFIG))
    elif result.server_version is None or not version_tuple(result.server_version):
        checks.append(Check(jname, FAIL, f"{result.jupyter} has no jupyter_server (`jupyter server --version` failed)",
                            fix, ExitCode.CONFIG))
    elif version_tuple(result.server_version) < REQUIRED_JUPYTER_SERVER:
        checks.append(Check(jname, FAIL, f"{result.jupyter}: jupyter_server {result.server_version}, older than 2.0, "
                            "which hpclab cannot hold to its token", fix, ExitCode.CONFIG))
    elif version_tuple(result.server_version) < MIN_JUPYTER_SERVER:
        checks.append(Check(jname, WARN, f"{result.jupyter}: jupyter_server {result.server_version}, older than "
                            "2.18, which fixed token and cookie leaks", fix))
    else:
        checks.append(Check(jname, OK, f"{result.jupyter}: jupyter_server {result.server_version}"))
    checks += kernel_checks(result.kernels, profile.kernels if profile is not None else (), suffix)
    return checks


def kernel_checks(report: envs.EnvReport | None, kernels: tuple[envs.Kernel, ...], suffix: str) -> list[Check]:
    """One `kernel NAME` check per kernel of the profile: its environment loads on top of the
    lab's and has ipykernel (or its argv's program)."""
    found = {k.name: k for k in (report.kernels if report else ())}
    checks = []
    for kernel in kernels:
        name = f"kernel {kernel.name}{suffix}"
        got = found.get(kernel.name)
        if got is None or not got.steps:
            checks.append(Check(name, FAIL, f"not checked{suffix}: the check did not finish", None, ExitCode.CONFIG))
            continue
        failed = [s for s in got.steps if not s.ok]
        last = got.steps[-1]
        if failed:
            bad = failed[0]
            what = {"ipykernel": f"{bad.what or 'its python'} has no ipykernel",
                    "program": f"{bad.what} is not on PATH in its environment"}.get(bad.step, f"{bad.step} {bad.what} "
                                                                                     "does not load")
            checks.append(Check(name, FAIL, what + suffix, _said(bad.error, 20) or None, ExitCode.CONFIG))
        elif last.step not in ("ipykernel", "program"):
            checks.append(Check(name, FAIL, f"what it would start was not checked{suffix}", None, ExitCode.CONFIG))
        elif last.step == "ipykernel":
            checks.append(Check(name, OK, f"ipykernel {last.detail} ({last.what}){suffix}"))
        else:
            checks.append(Check(name, OK, f"{last.what}{suffix}"))
    return checks


# -- the user's Jupyter config -------------------------------------------------------------------

# Settings a config file may set that would open or weaken a lab, and what hpclab's own server
# config (jobscript.SERVER_CONFIG) or the job's command line does about each one in a session.
# A value in SAFE is not a weakening.
WEAKENING = ("token", "password", "hashed_password", "password_required", "allow_password_change",
             "allow_origin", "allow_origin_pat", "allow_credentials", "disable_check_xsrf",
             "allow_remote_access", "local_hostnames", "tornado_settings", "cookie_secret", "cookie_secret_file",
             "authenticate_prometheus", "identity_provider_class", "ip")
SAFE = {"disable_check_xsrf": "False", "allow_credentials": "False", "allow_remote_access": "False",
        "authenticate_prometheus": "True", "allow_password_change": "False", "password_required": "False"}
_PY_SETTING = re.compile(r"^\s*c\.(\w+)\.(\w+)\s*(?:\[[^\]]*\]\s*)?(?:=(?!=)\s*(.*)|\.update\()")


def weakening_settings(path: str, text: str) -> list[str]:
    """`Section.name` of each weakening setting the config file at `path` makes."""
    found: list[str] = []

    def note(section: str, name: str, value: str) -> None:
        if name in WEAKENING and SAFE.get(name) != value.strip() and f"{section}.{name}" not in found:
            found.append(f"{section}.{name}")

    if path.endswith(".json"):
        try:
            data = json.loads(text or "{}")
        except ValueError:
            return []
        if isinstance(data, dict):
            for section, values in data.items():
                if isinstance(values, dict):
                    for name, value in values.items():
                        note(section, name, "True" if value is True else "False" if value is False else repr(value))
        return found
    for line in text.splitlines():
        m = _PY_SETTING.match(line)
        if m:
            note(m.group(1), m.group(2), (m.group(3) or "").split("#")[0])
    return found


def config_check(configs: dict[str, str]) -> Check:
    weak = {path: s for path, text in configs.items() if (s := weakening_settings(path, text))}
    if not configs:
        return Check("jupyter config", OK, "no Jupyter config files of yours")
    if not weak:
        return Check("jupyter config", OK, f"{len(configs)} config file(s) of yours; none weakens the lab")
    named = "; ".join(f"{path}: {', '.join(s)}" for path, s in weak.items())
    return Check("jupyter config", WARN, f"your Jupyter config weakens a lab: {named}",
                 "hpclab's sessions override these (the token, origin and XSRF checks, cookie secret stay hpclab's); "
                 "a lab you start without hpclab would use them: remove them unless you mean it")


def run_environment(remote: Remote, profile: Profile) -> tuple[EnvResult, str, int]:
    out = remote.run(["bash", "-s"], input=environment_program(profile), check=False, timeout=180,
                     what="environment check")
    return parse_environment(out.stdout), out.stderr, out.returncode


# -- the whole --------------------------------------------------------------------------------------


def diagnose(ctx: Context, profile_name: str, *, job: bool = False,
             flags: dict[str, object] | None = None, max_wait: int | None = None,
             sleep: Callable[[float], None] = time.sleep) -> Diagnosis:
    """Every check of `profile_name`, in order; a step whose prerequisite failed is skipped.
    HpclabErrors become failed checks; Ctrl-C (Interrupted) propagates, after the test job
    (if any) is cancelled."""
    result = Diagnosis(profile_name)
    add = result.checks.append
    try:
        profile = profiles.resolve(profile_name, ctx.paths.config_file, flags)
    except HpclabError as exc:
        add(_failure("profile", exc))
        return result
    add(Check("profile", OK, f"[profiles.{profile.name}] in {profile.source} is valid"))

    cluster = ctx.cluster(profile.host, profile.ssh_options, profile.scheduler)
    ctx.report("connect", f"connecting to {profile.host}")
    try:
        cluster.login.connect()
    except HpclabError as exc:  # a changed or unknown host key, a refused login, no route
        add(_failure("ssh", exc))
        return result
    add(Check("ssh", OK, f"logged in to {profile.host} (its host key is known and matches)"))

    try:
        _after_login(ctx, cluster, profile, result, job, max_wait, sleep)
    finally:
        ctx.close_unused(cluster)  # the login master stays only for sessions that need it
    return result


def _after_login(ctx: Context, cluster: Cluster, profile: Profile, result: Diagnosis, job: bool,
                 max_wait: int | None, sleep: Callable[[float], None]) -> None:
    """The checks that need the login node: the scheduler, the environment, the node."""
    add = result.checks.append
    try:
        ctx.report("scheduler", "asking the scheduler")
        if cluster.auto:
            profile = replace(profile, scheduler=cluster.detect())
        add(check_scheduler(cluster, profile))
    except HpclabError as exc:
        add(_failure("scheduler", exc))

    try:
        ctx.report("environment", "loading the environment on the login node")
        env, stderr, rc = run_environment(cluster.login, profile)
        add(config_check(env.configs))
        result.checks.extend(environment_checks(env, stderr, "the login node", rc=rc, profile=profile))
    except HpclabError as exc:
        add(_failure("environment", exc))

    if not job:
        if profile.transport == "tcp":
            add(Check("node ssh", OK, "not needed (transport tcp)"))
        elif cluster.scheduler.name == "none":
            add(Check("node ssh", OK, "not needed: the lab runs on the login host"))
        else:
            add(Check("node ssh", SKIP, "not checked: `hpclab doctor --job` runs a short job and connects to its node"))
    elif result.failed:
        add(Check("node ssh", SKIP, "not checked: no test job while another check fails"))
    else:
        wait = max_wait or profile.max_wait or 180  # the test job waits in the queue at most this long
        result.checks.extend(_job_checks(ctx, cluster, profile, wait, sleep))


def _job_checks(ctx: Context, cluster: Cluster, profile: Profile, max_wait: int,
                sleep: Callable[[float], None]) -> list[Check]:
    """Submit a short job, connect to its node as the socket transport would, load the
    environment there; the job is cancelled and its files removed whatever happens."""
    rec = new_record(profile)
    rec.scheduler = cluster.scheduler.name
    rec.transport = profile.transport
    sdir = SessionDir(rec.id)
    spec = job_spec(profile, rec.id, time_limit=min(profile.time, 600))
    script = ("#!/bin/bash\n" + "\n".join(cluster.scheduler.directives(spec)) + "\n"
              f"# hpclab doctor: a test job that only says where it runs, then waits to be cancelled\n"
              f'd="$HOME/{sdir.path}"\n'
              "( umask 077 && hostname > \"$d/.started.tmp\" ) && mv -f \"$d/.started.tmp\" "
              f'"$d/{sdir.started}"\nsleep 600\n')
    checks: list[Check] = []
    ctx.store.save(rec)
    try:
        ctx.report("submit", "submitting a short test job")
        try:
            rec.job_id = cluster.submit(sdir, rec.token, script)
        except HpclabError as exc:
            return [_failure("test job", exc, f"the test job was refused: {exc.message}")]
        ctx.store.save(rec)
        deadline = time.monotonic() + max_wait
        while True:
            snap = cluster.poll(rec.id, max(0.5, min(5.0, deadline - time.monotonic())), True, rec.job_id)
            if snap.started:
                break
            if snap.job and snap.job.state.ended:
                return [Check("test job", FAIL, f"test job {rec.job_id} ended before it started: "
                              f"{snap.job.state.reason}", None, ExitCode.JOB_FAILED)]
            if time.monotonic() > deadline:
                reason = f" ({snap.job.reason})" if snap.job and snap.job.reason else ""
                return [Check("test job", WARN, f"test job {rec.job_id} did not start within {max_wait} s{reason}; "
                              "cancelled", "the queue is busy: try again later")]
            ctx.report("pending", f"test job {rec.job_id} pending")
            sleep(0.5)
        node = snap.started
        rec.node = node
        ctx.store.save(rec)
        checks.append(Check("test job", OK, f"test job {rec.job_id} runs on {node}"))
        if profile.transport == "tcp" or cluster.scheduler.name == "none":
            checks.append(Check("node ssh", OK, "not needed (transport tcp)" if profile.transport == "tcp"
                                else "not needed: the lab runs on the login host"))
            remote = cluster.login
        else:
            ctx.report("node", f"connecting to {node} through {profile.host}")
            try:
                remote = cluster.node(node)
                remote.connect()
                checks.append(Check("node ssh", OK, f"SSH to {node} through {profile.host} works (socket transport)"))
            except (LoginRefused, Unreachable) as exc:
                status = FAIL if profile.transport == "socket" else WARN
                checks.append(Check("node ssh", status, f"{node} refuses SSH: {exc.message}",
                                    "transport auto falls back to tcp (the lab's port is then reachable by other "
                                    "users of the cluster; the token keeps them out)" if status == WARN else
                                    "use transport = \"auto\" or \"tcp\" in the profile", exc.exit_code))
                return checks
            except HpclabError as exc:
                checks.append(_failure("node ssh", exc))
                return checks
        ctx.report("environment", f"loading the environment on {node}")
        env, stderr, rc = run_environment(remote, profile)
        checks.extend(environment_checks(env, stderr, node, rc=rc, profile=profile))
        return checks
    finally:
        with ctx.shield():
            ctx.report("stop", f"cancelling test job {rec.job_id}" if rec.job_id else "removing the test job's files")
            stop_session(ctx, rec, cluster)
