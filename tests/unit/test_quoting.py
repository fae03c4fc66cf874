"""Everything that crosses a shell boundary survives as data, whatever its characters.

Each property builds the string exactly as hpclab does (the command `SshRemote` hands to ssh,
the ProxyCommand, the job script) and runs it under real shells on this machine, where a stub
program records the argv or directory it ends up with. No SSH connection is involved: the
login node's shell does to the command string what `sh -c` does here.

Also here: version strings read back from the cluster (`launch.version_tuple`) and the
warning for an old jupyter_server.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from hpclab import cluster, launch, remote
from hpclab.jobscript import JobOptions, render, shell_path
from hpclab.paths import Paths
from hpclab.profiles import Profile
from hpclab.remote import LocalRemote, SshRemote
from hpclab.schedulers import JobSpec, get, names
from hpclab.schedulers.base import guarded
from hpclab.session import Context
from hpclab.sessiondir import Rendezvous

POSIX_SHELLS = [str(shutil.which(s)) for s in ("sh", "dash", "bash") if shutil.which(s)]  # absolute: stubs shadow sh
CSH = shutil.which("tcsh") or shutil.which("csh")

# Any text a str can carry into an argv: everything but NUL (and lone surrogates, which
# cannot be encoded for exec).
ARG = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40)
NASTY = ["", " ", "a b", "it's", '"q"', "$(touch /tmp/owned)", "`id`", "x; rm -rf ~", "new\nline",
         "\\", "*", "~", "-n", "--", "%h:%p", "100%", "${HOME}", "\t", "é€"]

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def stubs() -> Iterator[Path]:
    """A bin dir with `argv-dump`, `sh` and `ssh` that print their arguments NUL-terminated."""
    with tempfile.TemporaryDirectory() as tmp:
        bin_dir = Path(tmp)
        dump = "#!/bin/dash\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done\n"
        if not shutil.which("dash"):
            dump = dump.replace("/bin/dash", "/bin/sh")
        for name in ("argv-dump", "sh", "ssh"):
            (bin_dir / name).write_text(dump)
            (bin_dir / name).chmod(0o755)
        yield bin_dir


def nul_split(out: bytes) -> list[str]:
    assert out.endswith(b"\0") or out == b"", out
    return [a.decode() for a in out.split(b"\0")[:-1]]


def remote_command(argv: list[str], *, shell: str | None = None, args: tuple[str, ...] = ()) -> str:
    """The command string SshRemote.run (or .shell) gives ssh to pass to the login shell."""
    sent: list[list[str]] = []

    def fake_run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        sent.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    fake = types.SimpleNamespace(run=fake_run, TimeoutExpired=subprocess.TimeoutExpired,
                                 DEVNULL=subprocess.DEVNULL)
    r = SshRemote("login", ["-F", "cfg"], Path("/nonexistent"))
    with mock.patch.object(remote, "subprocess", fake), mock.patch.object(SshRemote, "alive", lambda self: True):
        if shell is not None:
            r.shell(shell, *args)
        else:
            r.run(argv)
    (cmd,) = sent
    assert cmd[-2] == "login" and cmd[-3] == "--", cmd
    # The fixed output mark comes first (see test_remote_banner.py); the rest is the command.
    prefix = f"echo {remote.OUTPUT_MARK}; "
    assert cmd[-1].startswith(prefix), cmd
    return cmd[-1].removeprefix(prefix)


def run_under(shell: str, command: str, stubs: Path) -> list[str]:
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": "/nonexistent"}
    out = subprocess.run([shell, "-c", command], capture_output=True, env=env, timeout=20)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return nul_split(out.stdout)


# -- the command string the login shell receives -------------------------------------------------


@SETTINGS
@given(args=st.lists(ARG, max_size=6))
@example(args=NASTY)
def test_run_argv_reaches_the_remote_program_unchanged(stubs: Path, args: list[str]) -> None:
    command = remote_command(["argv-dump", *args])
    for shell in POSIX_SHELLS:
        assert run_under(shell, command, stubs) == args, shell


def session_scripts() -> dict[str, str]:
    """Every one-line sh script hpclab sends with SshRemote.shell (their names as keys)."""
    scripts = {k: v for k, v in vars(cluster).items() if k.isupper() and isinstance(v, str) and "$" in v}
    if "SUBMIT" in scripts:
        scripts["SUBMIT"] = scripts["SUBMIT"].replace("SUBMIT", get("slurm").submit_shell('"$d/job.sh"'))
    guard = guarded(["squeue", "-h"])
    scripts["GUARD"] = guard[2]
    return scripts


def test_session_scripts_are_found() -> None:
    found = set(session_scripts())
    assert {"SUBMIT", "POLL", "WRITE_FILE", "REMOVE_DIR", "TAIL", "DISCOVER", "READ_FILE", "GUARD"} <= found


@SETTINGS
@given(name=st.sampled_from(sorted(session_scripts())), args=st.lists(ARG, max_size=4))
def test_shell_scripts_and_their_arguments_reach_sh_unchanged(stubs: Path, name: str, args: list[str]) -> None:
    script = session_scripts()[name]
    command = remote_command([], shell=script, args=tuple(args))
    for shell in POSIX_SHELLS:
        # the stub `sh` first on PATH shows what the real one would have been given
        assert run_under(shell, command, stubs) == ["-c", script, "hpclab", *args], shell


# The arguments hpclab gives these scripts are session ids, relative paths, numbers, words and
# job ids: csh must pass those (and the scripts, which hold no '!' and no newline) unchanged.
CSH_ARG = st.text(st.characters(whitelist_categories=("L", "N", "P", "S", "Zs"), blacklist_characters="!\0"),
                  max_size=30)


@pytest.mark.skipif(CSH is None, reason="no csh/tcsh here")
@SETTINGS
@given(name=st.sampled_from(sorted(session_scripts())), args=st.lists(CSH_ARG, max_size=4))
@example(name="POLL", args=[".hpclab/sessions/0123abcd", "50", "1", "squeue", "-h", "-j", "42"])
def test_shell_scripts_pass_through_a_csh_login_shell(stubs: Path, name: str, args: list[str]) -> None:
    script = session_scripts()[name]
    assert "\n" not in script and "!" not in script
    command = remote_command([], shell=script, args=tuple(args))
    assert run_under(str(CSH), command, stubs) == ["-c", script, "hpclab", *args]


@pytest.mark.parametrize("scheduler", names())
def test_every_schedulers_status_query_round_trips(stubs: Path, scheduler: str) -> None:
    sched = get(scheduler)
    argv = list(sched.status_argv(["4242", "4243"]))
    command = remote_command(["argv-dump", *argv])
    assert run_under(POSIX_SHELLS[0], command, stubs) == argv


# -- the ProxyCommand of a compute node connection -------------------------------------------------


def expand_like_ssh(value: str, host: str, port: str) -> str:
    """OpenSSH's percent_expand for ProxyCommand: %% -> %, %h, %p; any other %x is fatal."""
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        key = value[i + 1: i + 2]
        if key not in ("%", "h", "p"):
            raise AssertionError(f"ssh would refuse %{key} in {value!r}")
        out.append({"%": "%", "h": host, "p": port}[key])
        i += 2
    return "".join(out)


@SETTINGS
@given(opts=st.lists(ARG, max_size=4))
@example(opts=["-o", "ProxyCommand=ssh -W %h:%p bastion", "-F", "/path with space/100%/config"])
def test_proxy_command_gives_the_inner_ssh_the_login_argv(stubs: Path, opts: list[str]) -> None:
    ctl = Path("/tmp/hpclab-test-ctl")
    login = SshRemote("login", opts, ctl)
    node = SshRemote("hpcuser@node1", opts, ctl, via=login)
    argv = node._base()  # how the node's master is made
    # ssh takes the first ProxyCommand: hpclab's, before the user's options
    proxy = next(a for a in argv if a.startswith("ProxyCommand=")).removeprefix("ProxyCommand=")
    # ssh runs `$SHELL -c "exec <expanded ProxyCommand>"`
    command = "exec " + expand_like_ssh(proxy, "node1", "22")
    got = run_under(POSIX_SHELLS[0], command, stubs)
    assert got == login.argv_for(["-W", "node1:22"])[1:]


@SETTINGS
@given(home=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0/"), min_size=1,
                    max_size=20))
@example(home="100% dir")
@example(home='q"uo\\te ${HOME}')
def test_control_path_is_the_one_ssh_uses(tmp_path_factory: pytest.TempPathFactory, home: str) -> None:
    """ssh splits `-o ControlPath=...` into words and expands % and ${} in it: the socket path it
    ends up with must be the one hpclab checks and removes."""
    assume(home not in (".", ".."))
    assume(len(home.encode()) < 200)
    root = tmp_path_factory.mktemp("h") / home
    paths = Paths.from_env({"HPCLAB_HOME": str(root), "HOME": "/nonexistent"})
    r = SshRemote("login", ["-F", "/dev/null"], paths.control_dir)
    out = subprocess.run([*r._base(), "-G", "--", "login"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=20)
    assert out.returncode == 0, out.stderr
    got = [ln.split(" ", 1)[1] for ln in out.stdout.splitlines() if ln.startswith("controlpath ")]
    assert got == [r.control_path]


# -- paths and values inside the job script ----------------------------------------------------------

COMPONENT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0/"),
                    min_size=1, max_size=12).filter(lambda c: c not in (".", "..") and len(c.encode()) < 200)


@SETTINGS
@given(path=st.one_of(
    st.lists(COMPONENT, min_size=1, max_size=3).map(lambda cs: "~/" + "/".join(cs)),
    st.lists(COMPONENT, min_size=1, max_size=3).map(lambda cs: "/" + "/".join(cs)),
    st.lists(COMPONENT, min_size=1, max_size=3).map("/".join),
    st.sampled_from(["~", "~/", "~user/x", "-P", "-", "--"]),
))
def test_shell_path_is_read_back_as_the_same_path(path: str) -> None:
    out = subprocess.run(["bash", "-c", f"printf %s {shell_path(path)}"], capture_output=True,
                         env={"HOME": "/home/me", "PATH": "/usr/bin:/bin"}, timeout=10)
    assert out.returncode == 0, out.stderr
    want = "/home/me" + path[1:] if path == "~" or path.startswith("~/") else path
    if path.startswith("-"):
        want = "./" + path  # the same directory, and `cd` cannot take it for an option
    assert out.stdout.decode() == want


JUPYTER_STUB = """#!{python}
import json, os, sys, time
out = os.environ["HPX_OUT"]
with open(os.path.join(out, "seen.json"), "w") as fh:
    json.dump({{"cwd": os.getcwd(), "env": {{k: v for k, v in os.environ.items() if k.startswith("HPX_V")}},
               "argv": sys.argv[1:]}}, fh)
rt = os.environ["JUPYTER_RUNTIME_DIR"]
with open(os.path.join(rt, "jpserver-1.json"), "w") as fh:
    fh.write('{{\\n  "port": 0,\\n  "version": "2.21.1"\\n}}\\n')
rdv = os.path.join(os.environ["HOME"], ".hpclab/sessions/0123abcd/rendezvous.json")
for _ in range(500):
    if os.path.exists(rdv):
        break
    time.sleep(0.01)
"""

ENV_NAME = st.from_regex(r"HPX_V[A-Z0-9_]{0,6}", fullmatch=True)


@pytest.fixture(scope="module")
def jupyter_stub() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "jupyter"
        stub.write_text(JUPYTER_STUB.format(python=sys.executable))
        stub.chmod(0o755)
        yield Path(tmp)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    where=st.sampled_from(["home", "absolute", "relative"]),
    parts=st.lists(COMPONENT, min_size=1, max_size=3),
    env=st.dictionaries(ENV_NAME, ARG, max_size=3),
)
@example(where="home", parts=["nb dir 'q' \"dq\"", "$(touch owned)\nline2"], env={"HPX_V": "`id`; $(id)"})
@example(where="relative", parts=["-P"], env={})
def test_job_script_enters_exactly_the_notebook_dir(jupyter_stub: Path, where: str, parts: list[str],
                                                    env: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        (home / ".hpclab/sessions/0123abcd").mkdir(parents=True)
        rel = "/".join(parts)
        target = (Path(tmp) / "abs" / rel) if where == "absolute" else home / rel
        target.mkdir(parents=True)
        notebook_dir = {"home": "~/" + rel, "absolute": str(target), "relative": rel}[where]
        opts = JobOptions("0123abcd", "socket", notebook_dir=notebook_dir, env=tuple(sorted(env.items())))
        spec = JobSpec(session_id="0123abcd", time=1800, output="o", error="e")
        script = render(get("slurm"), spec, opts)
        assert subprocess.run(["bash", "-n"], input=script.encode(), capture_output=True).returncode == 0
        (Path(tmp) / "job.sh").write_text(script)
        out = Path(tmp) / "out"
        out.mkdir()
        proc = subprocess.run(
            ["bash", str(Path(tmp) / "job.sh")], cwd=home, capture_output=True, timeout=30,
            env={"HOME": str(home), "PATH": f"{jupyter_stub}:/usr/bin:/bin", "TMPDIR": tmp, "HPX_OUT": str(out)},
        )
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        seen = json.loads((out / "seen.json").read_text())
        assert os.path.realpath(seen["cwd"]) == os.path.realpath(target)
        assert seen["env"] == env
        # nothing the values spelled was run: no `owned` file, no runtime dir left behind
        assert not any(p.name == "owned" for p in Path(tmp).rglob("*"))
        assert sorted(p.name for p in Path(tmp).iterdir()) == sorted(["home", "job.sh", "out"] +
                                                                     (["abs"] if where == "absolute" else []))


# -- versions read back from the cluster ----------------------------------------------------------------


@pytest.mark.parametrize(("text", "want"), [
    ("2.21.1", (2, 21, 1)),
    ("2.18.0", (2, 18, 0)),
    ("2.9.0", (2, 9, 0)),
    ("2.17.0rc1", (2, 17, 0)),
    ("2.1rc8", (2, 1)),
    ("2.18.0.dev0", (2, 18, 0)),
    (" 2.14.2\n", (2, 14, 2)),
    ("", ()),
    ("unknown", ()),
])
def test_version_tuple(text: str, want: tuple[int, ...]) -> None:
    assert launch.version_tuple(text) == want


@given(major=st.integers(0, 30), minor=st.integers(0, 40), patch=st.integers(0, 40),
       suffix=st.sampled_from(["", "rc1", "a2", "b10", ".dev0", ".post3", "+local.7"]))
def test_version_tuple_orders_like_the_release(major: int, minor: int, patch: int, suffix: str) -> None:
    got = launch.version_tuple(f"{major}.{minor}.{patch}{suffix}")
    assert got[:3] == (major, minor, patch)
    assert (got < launch.MIN_JUPYTER_SERVER) == ((major, minor) < launch.MIN_JUPYTER_SERVER)


def _no_forward(cluster: object, rec: object, port: int) -> int:
    return port  # as if the forward were open: nothing is bound


@pytest.mark.parametrize(("version", "warned"), [("2.17.0", True), ("2.1rc8", True), ("2.0.0", True),
                                                  ("2.18.0", False), ("2.21.1", False), ("", False)])
def test_old_jupyter_server_is_flagged_with_how_to_upgrade(tmp_path: Path, version: str, warned: bool) -> None:
    paths = Paths(config_file=tmp_path / "c.toml", state_dir=tmp_path / "state", control_dir=tmp_path / "ctl")
    ctx = Context(paths, lambda host, opts: LocalRemote(tmp_path, host))
    up = launch.Launch(ctx, Profile(name="p", host="login"))
    rdv = Rendezvous(session=up.record.id, job_id="1", node="node1", user="u", transport="tcp", address="10.0.0.1",
                     port=8888, socket="", pid=1, runtime_dir="/tmp/r", jupyter_server=version)
    with mock.patch.object(launch, "open_forward", _no_forward):
        up._open_tunnel(rdv)
    if warned:
        (warning,) = up.warnings
        assert f"jupyter_server {version}" in warning and "older than 2.18" in warning
        assert "pip install -U 'jupyter_server>=2.18'" in warning
    else:
        assert up.warnings == []


def test_shlex_quote_is_the_quoting_used() -> None:
    """A guard for the properties above: they prove shlex.join is safe for these shells."""
    assert remote_command(["argv-dump", "a b"]) == shlex.join(["argv-dump", "a b"])
