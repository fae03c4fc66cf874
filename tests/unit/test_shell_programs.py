"""The defences written as shell, run for real and checked by what they do.

The golden files pin the job script byte for byte, and a golden update would approve any
change. Here the SUBMIT program runs under sh, dash and bash with a umask of 002 in a
temporary home, against a fake scheduler; the job script runs under bash with a fake
`jupyter` on PATH. The checks are about meaning: modes, where the token is and is not,
Jupyter's arguments, the rendezvous and end files. `test_*_checks_catch_*` remove one line
of the shell at a time and show that the matching check then fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hpclab.cluster import DISCOVER, POLL, READ_FILE, REMOVE_DIR, SUBMIT, TAIL, WRITE_FILE
from hpclab.jobscript import JobOptions, render
from hpclab.schedulers import JobSpec, get

SHELLS = [s for s in ("sh", "dash", "bash") if shutil.which(s)]
SID = "0123abcd"
TOKEN = "tok-" + "Zq9_x" * 9  # recognisable anywhere it might leak

FAKE_SBATCH = """#!/bin/sh
# records what the scheduler was given (argv, environment, script on stdin), then answers
{{ printf 'argv:'; printf ' %s' "$@"; printf '\\n'; env; printf 'stdin:\\n'; cat; }} > "$FAKE_LOG"
if [ -n "$FAKE_FAIL" ]; then echo "sbatch: error: Invalid account" >&2; exit "$FAKE_FAIL"; fi
echo 4242
"""


@pytest.fixture
def cluster_home(tmp_path: Path) -> Iterator[Path]:
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format())
    (bin_dir / "sbatch").chmod(0o755)
    yield home


@dataclass
class Submitted:
    home: Path
    proc: subprocess.CompletedProcess[str]
    log: str

    @property
    def dir(self) -> Path:
        return self.home / ".hpclab" / "sessions" / SID


def submit(home: Path, shell: str = "sh", program: str | None = None, fail: int = 0,
           script: str = "#!/bin/bash\necho job\n") -> Submitted:
    program = program if program is not None else SUBMIT
    text = program.replace("SUBMIT", get("slurm").submit_shell('"$d/job.sh"'))
    log = home.parent / "sbatch.log"
    env = {"HOME": str(home), "PATH": f"{home.parent / 'bin'}:/usr/bin:/bin", "FAKE_LOG": str(log)}
    if fail:
        env["FAKE_FAIL"] = str(fail)
    proc = subprocess.run([shell, "-c", text, "hpclab", SID], input=TOKEN + "\n" + script, text=True,
                          capture_output=True, env=env, cwd="/", timeout=20, preexec_fn=lambda: os.umask(0o002))
    return Submitted(home, proc, log.read_text() if log.exists() else "")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# -- the checks, each one a promise of SECURITY.md ---------------------------------------------------


def check_private(s: Submitted) -> None:
    """~/.hpclab, sessions and the session dir 0700; token, job.sh, job.out, job.err 0600."""
    dirs = [s.home / ".hpclab", s.home / ".hpclab" / "sessions", s.dir]
    assert {str(d.relative_to(s.home)): oct(mode(d)) for d in dirs} == {
        str(d.relative_to(s.home)): oct(0o700) for d in dirs}
    files = ["token", "job.sh", "job.out", "job.err", "submitted"]
    assert {f: oct(mode(s.dir / f)) for f in files} == {f: oct(0o600) for f in files}


def check_token_only_in_its_file(s: Submitted) -> None:
    assert (s.dir / "token").read_text() == TOKEN  # exactly the token, no newline
    for path in s.home.rglob("*"):
        if path.is_file() and path.name != "token":
            assert TOKEN not in path.read_text(errors="replace"), path
    assert TOKEN not in s.log  # not in sbatch's argv, environment or the script it read
    assert TOKEN not in s.proc.stdout + s.proc.stderr


def check_submitted(s: Submitted) -> None:
    assert s.proc.returncode == 0, s.proc.stderr
    assert s.proc.stdout == "4242\n" and (s.dir / "submitted").read_text() == "4242\n"
    assert "stdin:\n#!/bin/bash\necho job\n" in s.log  # the script reached the scheduler whole
    assert (s.dir / "job.sh").read_text() == "#!/bin/bash\necho job\n"


def check_failure_cleans_up(s: Submitted) -> None:
    assert s.proc.returncode == 3, (s.proc.returncode, s.proc.stderr)  # the scheduler's own status
    assert "Invalid account" in s.proc.stderr
    assert not s.dir.exists()


def check_loose_home_tightened(s: Submitted) -> None:
    assert mode(s.home / ".hpclab") == 0o700 and mode(s.home / ".hpclab" / "sessions") == 0o700


# -- SUBMIT ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_submit_makes_everything_private_whatever_the_umask(cluster_home: Path, shell: str) -> None:
    s = submit(cluster_home, shell)
    check_submitted(s)
    check_private(s)
    check_token_only_in_its_file(s)


@pytest.mark.parametrize("shell", SHELLS)
def test_failing_submit_removes_the_session_and_keeps_the_exit_status(cluster_home: Path, shell: str) -> None:
    s = submit(cluster_home, shell, fail=3)
    check_failure_cleans_up(s)
    assert (cluster_home / ".hpclab" / "sessions").is_dir()  # only the session's own dir goes


def test_submit_tightens_an_existing_loose_hpclab_dir(cluster_home: Path) -> None:
    """The user's own ~/.hpclab that nobody else can write (0755, as a lax umask makes it) is
    tightened; one that others can write is refused (test_submit_refuses_a_planted_tree)."""
    (cluster_home / ".hpclab" / "sessions").mkdir(parents=True)
    os.chmod(cluster_home / ".hpclab", 0o755)
    os.chmod(cluster_home / ".hpclab" / "sessions", 0o755)
    s = submit(cluster_home)
    check_submitted(s)
    check_loose_home_tightened(s)


def test_submit_refuses_an_existing_session_dir(cluster_home: Path) -> None:
    """A directory (or link) already at the session's path is not ours: nothing is written into it."""
    elsewhere = cluster_home.parent / "elsewhere"
    elsewhere.mkdir()
    (cluster_home / ".hpclab" / "sessions").mkdir(parents=True)
    (cluster_home / ".hpclab" / "sessions" / SID).symlink_to(elsewhere)
    s = submit(cluster_home)
    assert s.proc.returncode != 0 and s.log == ""  # the scheduler was never called
    assert list(elsewhere.iterdir()) == []


# Each line of SUBMIT that carries a defence, the check that holds it, and the setup it needs.
SUBMIT_MUTATIONS: list[tuple[str, str, str, Callable[[Submitted], None], dict[str, Any]]] = [
    ("umask", "umask 077 && ", "", check_private, {}),
    ("chmod", 'chmod 700 "$HOME/.hpclab" "$HOME/.hpclab/sessions" ', "true ", check_loose_home_tightened,
     {"loose": True}),
    ("rm -rf on failure", 'rm -rf "$d"; ', "", check_failure_cleans_up, {"fail": 3}),
    ("exit $rc on failure", "exit $rc;", "exit 1;", check_failure_cleans_up, {"fail": 3}),
    ("token to its file, not the output", 'printf %s "$t" > "$d/token"', 'printf "%s\\n" "$t" > "$d/token"',
     check_token_only_in_its_file, {}),
    ("the script is read after the token", 'cat > "$d/job.sh"', 'cat > "$d/job.sh.x" && : > "$d/job.sh"',
     check_submitted, {}),
]


@pytest.mark.parametrize(("what", "old", "new", "check", "setup"), SUBMIT_MUTATIONS,
                         ids=[m[0] for m in SUBMIT_MUTATIONS])
def test_submit_checks_catch_a_removed_defence(cluster_home: Path, what: str, old: str, new: str,
                                               check: Callable[[Submitted], None], setup: dict[str, Any]) -> None:
    assert SUBMIT.count(old) == 1, f"SUBMIT changed: {old!r} is not in it once; update this table"
    if setup.get("loose"):
        (cluster_home / ".hpclab" / "sessions").mkdir(parents=True)
        os.chmod(cluster_home / ".hpclab", 0o755)
    check(submit(cluster_home, fail=setup.get("fail", 0)))  # the real program passes the check ...
    shutil.rmtree(cluster_home / ".hpclab")
    if setup.get("loose"):
        (cluster_home / ".hpclab" / "sessions").mkdir(parents=True)
        os.chmod(cluster_home / ".hpclab", 0o755)
    mutant = submit(cluster_home, program=SUBMIT.replace(old, new), fail=setup.get("fail", 0))
    with pytest.raises(AssertionError):  # ... and fails it without the defence
        check(mutant)


# -- planted trees: what another user (uid 1002) or a link puts where hpclab looks ----------------------

OTHER_UID = 1002  # a real second user (hpcuser2 on the test cluster); the tests run as root
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another uid needs root")


def give(path: Path, uid: int = OTHER_UID) -> None:
    """`path` and everything below it now belong to `uid`, as if that user had made them."""
    for p in [path, *path.rglob("*")]:
        os.lchown(p, uid, uid)


def plant_tree(home: Path, how: str) -> Path:
    """~/.hpclab (or its sessions dir) as someone else could have left it; the planted dir."""
    top, sessions = home / ".hpclab", home / ".hpclab" / "sessions"
    if how.startswith("sessions"):
        top.mkdir(mode=0o700)
        top.chmod(0o700)
        target = sessions
    else:
        target = top
    if how[-4:].isdigit():
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(int(how[-4:], 8))
    elif how.endswith("link"):
        elsewhere = home.parent / "elsewhere"
        (elsewhere / "sessions").mkdir(parents=True, mode=0o700)  # even a tree of the user's own
        elsewhere.chmod(0o700)
        target.symlink_to(elsewhere if target == top else elsewhere / "sessions")
    elif how.endswith("other"):
        target.mkdir(parents=True, exist_ok=True)
        target.chmod(0o755)
        give(target)
    elif how.endswith("file"):
        target.write_text("")
    return target


PLANTED_TREES = {  # how -> (the dir SUBMIT names, why)
    "hpclab 0777": (".hpclab", "writable"),
    "hpclab 0770": (".hpclab", "writable"),
    "hpclab link": (".hpclab", "link"),
    "hpclab other": (".hpclab", "owner"),
    "hpclab file": (".hpclab", "owner"),
    "sessions 0777": (".hpclab/sessions", "writable"),
    "sessions 0757": (".hpclab/sessions", "writable"),
    "sessions link": (".hpclab/sessions", "link"),
    "sessions other": (".hpclab/sessions", "owner"),
}


def check_refused(s: Submitted, path: str, why: str) -> None:
    """Refused with the marker hpclab turns into its message; the scheduler never called,
    nothing written anywhere (not tightened either: the user decides)."""
    assert (s.proc.returncode, s.proc.stderr) == (97, f"hpclab-unsafe: {path} {why}\n")
    assert s.log == "" and s.proc.stdout == ""
    written = [p for p in s.home.parent.rglob("*") if p.name in ("token", "job.sh", "submitted")]
    assert written == []


@needs_root
@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("how", sorted(PLANTED_TREES))
def test_submit_refuses_a_planted_tree(cluster_home: Path, shell: str, how: str) -> None:
    planted = plant_tree(cluster_home, how)
    before = planted.lstat()
    s = submit(cluster_home, shell)
    check_refused(s, *PLANTED_TREES[how])
    after = planted.lstat()
    assert (after.st_mode, after.st_uid) == (before.st_mode, before.st_uid)


@dataclass
class Planted:
    """A home whose sessions dir holds the user's own session OURS and what others planted."""

    home: Path

    def run(self, program: str, *args: str, shell: str = "sh") -> subprocess.CompletedProcess[str]:
        env = {"HOME": str(self.home), "PATH": "/usr/bin:/bin"}
        return subprocess.run([shell, "-c", program, "hpclab", *args], capture_output=True, text=True,
                              env=env, cwd="/", timeout=20)

    def sdir(self, sid: str) -> Path:
        return self.home / ".hpclab" / "sessions" / sid


OURS = "0123abcd"
RDV_OF = {"version": 1, "job_id": "", "user": "u", "transport": "socket", "address": "", "port": 0,
          "pid": 7, "runtime_dir": "/tmp/x", "jupyter_server": "2.21.1"}


def session_files(d: Path, job: str, node: str, token: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "submitted").write_text(f"{job}\n")
    (d / "started").write_text(f"{node}\n")
    (d / "token").write_text(token)
    (d / "job.out").write_text(f"output of {job}\n")
    (d / "rendezvous.json").write_text(json.dumps(
        RDV_OF | {"session": d.name, "job_id": job, "node": node, "socket": f"/tmp/{node}.sock"}))


# Planted session dirs: id -> (what makes it not ours, the job id it names). Each names a node
# "evil-<id>" and a token "planted-<id>" that must never be read.
PLANTS = {
    "deadbeef": ("a directory of uid 1002", "9001"),
    "cafef00d": ("a link to a directory of the user's own", "9002"),
    "0badc0de": ("the user's directory, its files links to the user's files", "9003"),
    "feedface": ("the user's directory, its files uid 1002's", "9004"),
}


@pytest.fixture
def planted(tmp_path: Path) -> Planted:
    home = tmp_path / "home"
    sessions = home / ".hpclab" / "sessions"
    sessions.mkdir(parents=True)
    (home / ".hpclab").chmod(0o700)
    sessions.chmod(0o777)  # the mistake that lets uid 1002 plant here
    session_files(sessions / OURS, "4242", "node1", "the-real-token")
    for sid, (_, job) in PLANTS.items():
        d = sessions / sid
        if sid == "cafef00d":
            d = tmp_path / "users-other-dir" / sid
            (sessions / sid).symlink_to(d)
        src = tmp_path / "users-files" / sid
        session_files(src if sid == "0badc0de" else d, job, f"evil-{sid}", f"planted-{sid}")
        if sid == "0badc0de":
            d.mkdir()
            for f in src.iterdir():
                (d / f.name).symlink_to(f)
        if sid == "deadbeef":
            give(d)
        if sid == "feedface":
            for f in d.iterdir():
                give(f)
    return Planted(home)


def sessions_seen(out: str) -> dict[str, str]:
    """DISCOVER's output: session id -> what it printed for it."""
    return {chunk.partition("\n")[0]: chunk.partition("\n")[2] for chunk in out.split("@@session ")[1:]}


def check_discover_sees_only_ours(p: Planted, shell: str = "sh") -> None:
    proc = p.run(DISCOVER, shell=shell)
    assert proc.returncode == 0, proc.stderr
    seen = sessions_seen(proc.stdout)
    assert OURS in seen and "4242" in seen[OURS] and '"node": "node1"' in seen[OURS]
    assert [sid for sid in seen if sid != OURS and (PLANTS[sid][1] in seen[sid] or "evil" in seen[sid])] == []


def check_poll_reads_nothing_planted(p: Planted, shell: str = "sh") -> None:
    for sid in PLANTS:
        started = time.monotonic()
        out = p.run(POLL, f".hpclab/sessions/{sid}", "3", "1", shell=shell).stdout
        assert out == "@@started\n@@rendezvous.json\n@@ended.json\n@@status\n", (sid, out)
        # nor does a planted file end its wait (three rounds of 0.1 s): up would poll in a tight loop
        assert time.monotonic() - started >= 0.3, sid
    out = p.run(POLL, f".hpclab/sessions/{OURS}", "1", "0", shell=shell).stdout
    assert out.startswith("@@started\nnode1\n@@rendezvous.json\n{"), out


def check_token_and_logs_not_read_from_plants(p: Planted, shell: str = "sh") -> None:
    for sid in PLANTS:
        token = p.run(READ_FILE, f".hpclab/sessions/{sid}/token", shell=shell)
        assert token.returncode != 0 and token.stdout == "", sid
        assert p.run(TAIL, f".hpclab/sessions/{sid}/job.out", "5", shell=shell).stdout == "", sid
    assert p.run(READ_FILE, f".hpclab/sessions/{OURS}/token", shell=shell).stdout == "the-real-token"
    assert p.run(TAIL, f".hpclab/sessions/{OURS}/job.out", "5", shell=shell).stdout == "output of 4242\n"


def check_nothing_written_or_removed_in_plants(p: Planted, shell: str = "sh") -> None:
    for sid in ("deadbeef", "cafef00d"):
        p.run(WRITE_FILE, f".hpclab/sessions/{sid}/listen", "socket", shell=shell)
        target = p.sdir(sid).resolve()
        assert not (target / "listen").exists() and not (target / "listen.tmp").exists(), sid
        p.run(REMOVE_DIR, f".hpclab/sessions/{sid}", shell=shell)
        assert (target / "submitted").exists() and p.sdir(sid).is_dir(), sid
    p.run(WRITE_FILE, f".hpclab/sessions/{OURS}/listen", "socket", shell=shell)
    assert (p.sdir(OURS) / "listen").read_text() == "socket"
    p.run(REMOVE_DIR, f".hpclab/sessions/{OURS}", shell=shell)
    assert not p.sdir(OURS).exists()


PLANT_CHECKS = [check_discover_sees_only_ours, check_poll_reads_nothing_planted,
                check_token_and_logs_not_read_from_plants, check_nothing_written_or_removed_in_plants]


@needs_root
@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("check", PLANT_CHECKS, ids=[c.__name__.removeprefix("check_") for c in PLANT_CHECKS])
def test_planted_session_dirs_are_not_read_nor_touched(planted: Planted, shell: str,
                                                       check: Callable[[Planted, str], None]) -> None:
    """With sessions 0777, the user's own session still works; what uid 1002 or a link
    planted next to it is neither read (job id, node, token, logs) nor written nor removed."""
    check(planted, shell)


@needs_root
def test_a_linked_or_foreign_hpclab_dir_is_not_read(planted: Planted, tmp_path: Path) -> None:
    """The user's own session tree, reached through a link at ~/.hpclab, or under a ~/.hpclab
    of someone else's, reads as empty."""
    real = tmp_path / "moved"
    (planted.home / ".hpclab").rename(real)
    (planted.home / ".hpclab").symlink_to(real)
    assert planted.run(DISCOVER).stdout == ""
    assert planted.run(READ_FILE, f".hpclab/sessions/{OURS}/token").stdout == ""
    (planted.home / ".hpclab").unlink()
    real.rename(planted.home / ".hpclab")
    assert OURS in sessions_seen(planted.run(DISCOVER).stdout)
    os.lchown(planted.home / ".hpclab", OTHER_UID, OTHER_UID)
    assert planted.run(DISCOVER).stdout == ""
    assert planted.run(READ_FILE, f".hpclab/sessions/{OURS}/token").stdout == ""


# Each defence against plants, removed, and a check that must then fail.
_OWN_LINK = '[ -h "$p" ] && return 1; '
_OWN_UID = '[ -O "$p" ] || return 1; '  # replaced by ':; ' (the loop's status must stay 0)
PLANT_MUTATIONS: list[tuple[str, str, str, str, Callable[[Planted, str], None]]] = [
    ("DISCOVER: links", "DISCOVER", _OWN_LINK, "", check_discover_sees_only_ours),
    ("DISCOVER: owner", "DISCOVER", _OWN_UID, ":; ", check_discover_sees_only_ours),
    ("POLL: links", "POLL", _OWN_LINK, "", check_poll_reads_nothing_planted),
    ("POLL: owner", "POLL", _OWN_UID, ":; ", check_poll_reads_nothing_planted),
    ("POLL: a planted file ends the wait", "POLL", 'hpclab_ok "$d/rendezvous.json" && break',
     '[ -e "$d/rendezvous.json" ] && break', check_poll_reads_nothing_planted),
    ("READ_FILE: links", "READ_FILE", _OWN_LINK, "", check_token_and_logs_not_read_from_plants),
    ("READ_FILE: owner", "READ_FILE", _OWN_UID, ":; ", check_token_and_logs_not_read_from_plants),
    ("TAIL: links", "TAIL", _OWN_LINK, "", check_token_and_logs_not_read_from_plants),
    ("TAIL: owner", "TAIL", _OWN_UID, ":; ", check_token_and_logs_not_read_from_plants),
    ("WRITE_FILE and REMOVE_DIR: links", "WRITE_FILE REMOVE_DIR", _OWN_LINK, "",
     check_nothing_written_or_removed_in_plants),
    ("WRITE_FILE and REMOVE_DIR: owner", "WRITE_FILE REMOVE_DIR", _OWN_UID, ":; ",
     check_nothing_written_or_removed_in_plants),
]


@needs_root
@pytest.mark.parametrize(("what", "programs", "old", "new", "check"), PLANT_MUTATIONS,
                         ids=[m[0] for m in PLANT_MUTATIONS])
def test_plant_checks_catch_a_removed_defence(planted: Planted, monkeypatch: pytest.MonkeyPatch, what: str,
                                              programs: str, old: str, new: str,
                                              check: Callable[[Planted, str], None]) -> None:
    g = globals()
    for name in programs.split():
        assert g[name].count(old) == 1, f"{name} changed: {old!r} is not in it once; update this table"
        monkeypatch.setitem(g, name, g[name].replace(old, new))
    with pytest.raises(AssertionError):
        check(planted, "sh")


SUBMIT_TREE_MUTATIONS = [  # a check of SUBMIT's, removed; a plant it must then let through
    ("links", 'if [ -h "$q" ]; then w=link; elif', "if", "hpclab link"),
    ("owner", '{ [ -d "$q" ] && [ -O "$q" ]; } || w=owner; ', "", "hpclab other"),
    ("group write", "?????w*|????????w*)", "????????w*)", "hpclab 0770"),
    ("others' write", "?????w*|????????w*)", "?????w*)", "sessions 0757"),
]


@needs_root
@pytest.mark.parametrize(("what", "old", "new", "how"), SUBMIT_TREE_MUTATIONS,
                         ids=[m[0] for m in SUBMIT_TREE_MUTATIONS])
def test_submit_tree_checks_catch_a_removed_defence(cluster_home: Path, what: str, old: str, new: str,
                                                    how: str) -> None:
    assert SUBMIT.count(old) == 1, f"SUBMIT changed: {old!r} is not in it once; update this table"
    plant_tree(cluster_home, how)
    with pytest.raises(AssertionError):
        check_refused(submit(cluster_home, program=SUBMIT.replace(old, new)), *PLANTED_TREES[how])


# -- the job script -----------------------------------------------------------------------------------

FAKE_JUPYTER = """#!{python}
# Stands in for `jupyter lab`: records how it was started, writes its server-info file into
# the runtime dir the way jupyter_server does (sorted keys, "version" last), then serves
# until a signal ends it.
import json, os, signal, sys, time
out = os.environ["FAKE_OUT"]
with open(os.path.join(out, "jupyter.json"), "w") as fh:
    json.dump({{"argv": sys.argv[1:], "env": dict(os.environ), "pid": os.getpid(), "cwd": os.getcwd()}}, fh)
info = {{"port": 0 if "--ServerApp.sock_mode=0600" in sys.argv else 45678, "version": "2.21.1"}}
path = os.path.join(os.environ["JUPYTER_RUNTIME_DIR"], "jpserver-%d.json" % os.getpid())
with open(path + ".tmp", "w") as fh:
    json.dump(info, fh, indent=1, sort_keys=True)
os.rename(path + ".tmp", path)
signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # a real server survives the job's USR1 trap
while True:
    time.sleep(0.05)
"""


@dataclass
class Job:
    home: Path
    tmp: Path
    script: str
    out: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def dir(self) -> Path:
        return self.home / ".hpclab" / "sessions" / SID

    def rendezvous(self) -> dict[str, Any]:
        return json.loads((self.dir / "rendezvous.json").read_text())  # type: ignore[no-any-return]

    def jupyter(self) -> dict[str, Any]:
        return json.loads((self.out / "jupyter.json").read_text())  # type: ignore[no-any-return]


def job_setup(tmp_path: Path, script: str) -> Job:
    home, tmp, out, bin_dir = (tmp_path / n for n in ("home", "nodetmp", "out", "bin"))
    for d in (home, tmp, out, bin_dir):
        d.mkdir()
    (home / ".hpclab" / "sessions" / SID).mkdir(parents=True, mode=0o700)
    token = home / ".hpclab" / "sessions" / SID / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    (bin_dir / "jupyter").write_text(FAKE_JUPYTER.format(python=sys.executable))
    (bin_dir / "jupyter").chmod(0o755)
    (tmp_path / "job.sh").write_text(script)
    return Job(home, tmp, script, out)


def start_job(job: Job) -> Job:
    env = {"HOME": str(job.home), "PATH": f"{job.home.parent / 'bin'}:/usr/bin:/bin", "TMPDIR": str(job.tmp),
           "FAKE_OUT": str(job.out), "SLURM_JOB_ID": "4242", "JUPYTER_TOKEN": "from-the-login-env",
           "XDG_RUNTIME_DIR": "/run/user/0"}
    job.proc = subprocess.Popen(["bash", str(job.home.parent / "job.sh")], cwd=job.home, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=lambda: os.umask(0o002))
    return job


def wait_for(path: Path, job: Job, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert job.proc is not None
        if job.proc.poll() is not None:
            raise AssertionError(f"the job ended before {path.name}: {job.proc.stderr.read()!r}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.05)


def end_job(job: Job, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    assert job.proc is not None
    if sig:
        job.proc.send_signal(sig)
    try:
        return job.proc.wait(timeout)
    finally:
        if job.proc.poll() is None:
            job.proc.kill()
        with_pid = job.out / "jupyter.json"
        if with_pid.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(json.loads(with_pid.read_text())["pid"], signal.SIGKILL)


@pytest.fixture
def jobs() -> Iterator[list[Job]]:
    started: list[Job] = []
    yield started
    for job in started:
        if job.proc is not None and job.proc.poll() is None:
            end_job(job, signal.SIGKILL)


def rendered(transport: str = "socket", scheduler: str = "slurm", time_s: int = 1800) -> str:
    spec = JobSpec(session_id=SID, time=time_s, output="o", error="e")
    return render(get(scheduler), spec, JobOptions(SID, transport, idle_timeout=0))


def run_until_ready(tmp_path: Path, jobs: list[Job], script: str) -> Job:
    job = start_job(job_setup(tmp_path, script))
    jobs.append(job)
    wait_for(job.dir / "rendezvous.json", job)
    return job


# checks on a job that is up

def check_files_private(job: Job) -> None:
    """Everything the job writes before and after Jupyter starts is private (umask 077 first),
    and so is what Jupyter writes without a mode of its own (here the fake's server-info file)."""
    rt = Path(job.rendezvous()["runtime_dir"])
    paths = [job.dir / "started", job.dir / "rendezvous.json", rt, rt / "config",
             rt / "config" / "jupyter_server_config.py", rt / f"jpserver-{job.jupyter()['pid']}.json"]
    want = {str(p): oct(0o700 if p.is_dir() else 0o600) for p in paths}
    assert {str(p): oct(mode(p)) for p in paths} == want


def check_runtime_dir(job: Job) -> None:
    """A fresh directory of mktemp -d's making: random name under $TMPDIR, 0700, ours."""
    rt = Path(job.rendezvous()["runtime_dir"])
    assert rt.parent == job.tmp and re.fullmatch(rf"hpclab-{SID}\.[A-Za-z0-9]{{6}}", rt.name), rt
    assert mode(rt) == 0o700 and rt.stat().st_uid == os.getuid()
    assert job.jupyter()["env"]["JUPYTER_RUNTIME_DIR"] == str(rt)


def check_jupyter_args(job: Job) -> None:
    seen = job.jupyter()
    argv, env = seen["argv"], seen["env"]
    assert argv[0] == "lab"
    for arg in ("--no-browser", "--ServerApp.allow_remote_access=False", "--KernelManager.transport=ipc"):
        assert arg in argv, arg
    rdv = job.rendezvous()
    if rdv["transport"] == "socket":
        assert "--ServerApp.sock_mode=0600" in argv
        assert f"--ServerApp.sock={rdv['runtime_dir']}/jupyter.sock" in argv
        assert not [a for a in argv if a.startswith(("--ServerApp.ip", "--ip", "--ServerApp.port="))]
    else:
        ips = [a.split("=", 1)[1] for a in argv if a.startswith(("--ServerApp.ip=", "--ip="))]
        assert len(ips) == 1 and ips[0] == rdv["address"]
        assert ips[0] not in ("", "*", "0.0.0.0", "::", "[::]") and not ips[0].startswith("127."), ips
    # the token reaches Jupyter only as a file name; none in its argv or environment
    assert not any(TOKEN in a for a in argv) and not any(TOKEN in v for v in env.values())
    assert env["JUPYTER_TOKEN_FILE"] == str(job.dir / "token")
    assert "JUPYTER_TOKEN" not in env and "XDG_RUNTIME_DIR" not in env  # the login's values are unset
    assert TOKEN not in job.script


class StandInProvider:
    """Stands in for jupyter_server's PasswordIdentityProvider as far as hpclab's config uses it:
    a parent (the ServerApp), config-set traits, and the stock answer that accepts the token
    from any origin."""

    def __init__(self, parent: Any = None, **kwargs: Any) -> None:
        self.parent = parent
        for name, value in kwargs.items():
            setattr(self, name, value)

    async def get_user_token(self, handler: object) -> str | None:
        return "token user"


KNOWN_COOKIE_SECRET = b"a cookie secret the user's config knows"


def stand_in_app() -> types.SimpleNamespace:
    """A ServerApp as the user's weakening config files leave it."""
    return types.SimpleNamespace(
        allow_origin="*", allow_origin_pat=".*", allow_credentials=True, disable_check_xsrf=True,
        local_hostnames=["localhost", "evil.example"], authenticate_prometheus=False,
        cookie_secret=KNOWN_COOKIE_SECRET,
        tornado_settings={
            "headers": {"Access-Control-Allow-Origin": "*", "access-control-allow-credentials": "true",
                        "Content-Security-Policy": "frame-ancestors 'self'"},
            "allow_origin": "*", "allow_origin_pat": ".*", "allow_credentials": True, "disable_check_xsrf": True,
            "xsrf_cookies": False, "allow_remote_access": True, "local_hostnames": ["evil.example"],
            "identity_provider": object(), "authenticate_prometheus": False, "websocket_max_message_size": 1234,
            "cookie_secret": KNOWN_COOKIE_SECRET,
        })


def handler(origin: str | None, host: str = "127.0.0.1:8888") -> types.SimpleNamespace:
    headers = {"Host": host, **({"Origin": origin} if origin is not None else {})}
    return types.SimpleNamespace(request=types.SimpleNamespace(headers=headers))


def load_server_config(job: Job) -> tuple[Any, types.SimpleNamespace]:
    """hpclab's server config as the job wrote it, loaded with StandInProvider for jupyter_server's."""
    config_path = job.jupyter()["env"].get("JUPYTER_CONFIG_PATH", "").split(":")
    rt = job.rendezvous()["runtime_dir"]
    assert config_path[0] == f"{rt}/config"
    source = (Path(config_path[0]) / "jupyter_server_config.py").read_text()
    identity = types.ModuleType("jupyter_server.auth.identity")
    identity.PasswordIdentityProvider = StandInProvider  # type: ignore[attr-defined]
    c = types.SimpleNamespace(ServerApp=types.SimpleNamespace())
    saved = {k: sys.modules.get(k) for k in ("jupyter_server", "jupyter_server.auth", "jupyter_server.auth.identity")}
    sys.modules.update({"jupyter_server": types.ModuleType("jupyter_server"),
                        "jupyter_server.auth": types.ModuleType("jupyter_server.auth"),
                        "jupyter_server.auth.identity": identity})
    try:
        exec(compile(source, "jupyter_server_config.py", "exec"), {"c": c})
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    provider = getattr(c.ServerApp, "identity_provider_class", None)
    assert provider is not None and issubclass(provider, StandInProvider)
    return provider, c


def check_origin_config(job: Job) -> None:
    """The config file first on JUPYTER_CONFIG_PATH takes the token from another origin for
    nothing: such a request is not a token holder's, and gets the origin checks of everyone else."""
    import asyncio

    provider, _ = load_server_config(job)
    p = provider(parent=stand_in_app())
    for origin in ("http://evil.example", "null", "http://127.0.0.1:1", "http://127.0.0.1:8888.evil.example"):
        assert asyncio.run(p.get_user_token(handler(origin))) is None, origin
    for origin in (None, "http://127.0.0.1:8888", "HTTP://127.0.0.1:8888"):  # a program; the lab's own page
        assert asyncio.run(p.get_user_token(handler(origin))) == "token user", origin


def check_config_enforced(job: Job) -> None:
    """Whatever the user's config set, the provider's constructor leaves hpclab's token and no
    other way in: no password, no other origin, checks on, tornado_settings unable to undo it."""
    provider, _ = load_server_config(job)
    app = stand_in_app()
    p = provider(parent=app, token="", hashed_password="sha1:x:y", password_required=True,
                 allow_password_change=True)
    assert p.token == TOKEN
    assert (p.hashed_password, p.password_required, p.allow_password_change) == ("", False, False)
    assert (app.allow_origin, app.allow_origin_pat) == ("", "")
    assert (app.allow_credentials, app.disable_check_xsrf) == (False, False)
    assert app.local_hostnames == ["localhost"] and app.authenticate_prometheus is True
    assert app.cookie_secret != KNOWN_COOKIE_SECRET and len(app.cookie_secret) >= 32
    assert app.tornado_settings == {"headers": {"Content-Security-Policy": "frame-ancestors 'self'"},
                                    "websocket_max_message_size": 1234}  # the harmless ones stay


def check_rendezvous(job: Job) -> None:
    rdv = job.rendezvous()
    seen = job.jupyter()
    assert mode(job.dir / "rendezvous.json") == 0o600
    assert set(rdv) == {"version", "session", "job_id", "node", "user", "transport", "address", "port", "socket",
                        "pid", "runtime_dir", "jupyter_server", "app", "app_version"}
    assert (rdv["version"], rdv["session"], rdv["job_id"]) == (1, SID, "4242")
    assert rdv["node"] == os.uname().nodename and rdv["user"] == pwd.getpwuid(os.getuid()).pw_name
    assert rdv["pid"] == seen["pid"] and rdv["jupyter_server"] == rdv["app_version"] == "2.21.1"
    assert rdv["app"] == "jupyterlab"
    if rdv["transport"] == "socket":
        assert rdv["socket"] == f"{rdv['runtime_dir']}/jupyter.sock" and rdv["port"] == 0
    else:
        assert rdv["port"] == 45678 and rdv["socket"] == ""
    assert not [p for p in job.dir.iterdir() if p.name.startswith(".")]  # written atomically: no temp left


def check_ended(job: Job, reason: str) -> None:
    ended = json.loads((job.dir / "ended.json").read_text())
    assert ended["reason"] == reason and isinstance(ended["exit_code"], int)
    assert mode(job.dir / "ended.json") == 0o600
    assert not Path(job.rendezvous()["runtime_dir"]).exists()  # socket, config, kernels' files: gone


@pytest.mark.parametrize("transport", ["socket", "tcp"])
def test_job_script_runs_private_and_tells_where_jupyter_listens(tmp_path: Path, jobs: list[Job],
                                                                 transport: str) -> None:
    job = run_until_ready(tmp_path, jobs, rendered(transport))
    check_files_private(job)
    check_runtime_dir(job)
    check_jupyter_args(job)
    check_origin_config(job)
    check_config_enforced(job)
    check_rendezvous(job)
    end_job(job, signal.SIGTERM)
    check_ended(job, "cancelled")


def test_job_script_ends_on_its_own_timer_before_the_limit(tmp_path: Path, jobs: list[Job]) -> None:
    """PBS sends no signal before the walltime: the job's own timer (limit - 90 s) stops Jupyter."""
    job = run_until_ready(tmp_path, jobs, rendered("socket", "pbs", time_s=92))
    end_job(job, 0, timeout=20)  # no signal from here: the timer must end it
    check_ended(job, "timelimit")


def test_job_script_usr1_from_the_scheduler_is_the_time_limit(tmp_path: Path, jobs: list[Job]) -> None:
    job = run_until_ready(tmp_path, jobs, rendered("socket", "slurm"))
    end_job(job, signal.SIGUSR1)
    check_ended(job, "timelimit")


def _drop(line: str) -> Callable[[str], str]:
    def mutate(script: str) -> str:
        assert script.count(line) == 1, f"the job script changed: {line!r} is not in it once; update this table"
        return script.replace(line, "")
    return mutate


# A line of the job script, removed, and the check that must then fail.
JOB_MUTATIONS: list[tuple[str, Callable[[str], str], Callable[[Job], None], str]] = [
    ("umask 077", _drop("umask 077\n"), check_files_private, "socket"),
    ("mktemp -d", lambda s: s.replace('$(mktemp -d "${TMPDIR:-/tmp}/hpclab-$HPCLAB_SESSION.XXXXXX")',
                                      '"${TMPDIR:-/tmp}/hpclab-$HPCLAB_SESSION"; mkdir -p "$hpclab_runtime"'),
     check_runtime_dir, "socket"),
    ("unset the login's Jupyter variables",
     _drop("unset XDG_RUNTIME_DIR JUPYTER_PORT JUPYTER_TOKEN JUPYTER_NO_CONFIG JUPYTER_ALLOW_INSECURE_WRITES\n"),
     check_jupyter_args, "socket"),
    ("sock_mode 0600", lambda s: s.replace(" --ServerApp.sock_mode=0600", ""), check_jupyter_args, "socket"),
    ("allow_remote_access=False", lambda s: s.replace(" --ServerApp.allow_remote_access=False", ""),
     check_jupyter_args, "socket"),
    ("the node's address, not a wildcard", lambda s: s.replace('--ServerApp.ip="$hpclab_addr"', "--ip='*'"),
     check_jupyter_args, "tcp"),
    ("origin-check config on the config path", _drop(
        'export JUPYTER_CONFIG_PATH="$hpclab_runtime/config${JUPYTER_CONFIG_PATH:+:$JUPYTER_CONFIG_PATH}"\n'),
     check_origin_config, "socket"),
    ("no token from another origin", _drop("        if hpclab_foreign(handler):\n"
                                           "            return None  # a web page of another origin that presents "
                                           "the token gets nothing for it\n"), check_origin_config, "socket"),
    *[(f"config enforced: {line.strip()}", _drop(line), check_config_enforced, "socket") for line in (
        "        self.token = token\n",
        '        self.hashed_password = ""  # no password login\n',
        "        self.password_required = False  # (would stop the server now that there is no password)\n",
        "        self.allow_password_change = False  # the login page cannot set one either\n",
        '        app.allow_origin = ""\n',
        '        app.allow_origin_pat = ""\n',
        "        app.allow_credentials = False\n",
        "        app.disable_check_xsrf = False\n",
        '        app.local_hostnames = ["localhost"]\n',
        "        app.authenticate_prometheus = True  # /metrics too wants the token\n",
        "        app.cookie_secret = os.urandom(32)\n",
        "        app.tornado_settings = settings\n",
    )],
    ("config enforced: Access-Control headers dropped",
     lambda s: s.replace(' if not k.lower().startswith("access-control-")}', "}"), check_config_enforced, "socket"),
    ("config enforced: tornado_settings keys dropped", lambda s: s.replace(" if k not in HPCLAB_OVERRIDDEN}", "}"),
     check_config_enforced, "socket"),
]


@pytest.mark.parametrize(("what", "mutate", "check", "transport"), JOB_MUTATIONS, ids=[m[0] for m in JOB_MUTATIONS])
def test_job_checks_catch_a_removed_defence(tmp_path: Path, jobs: list[Job], what: str,
                                            mutate: Callable[[str], str], check: Callable[[Job], None],
                                            transport: str) -> None:
    job = run_until_ready(tmp_path, jobs, mutate(rendered(transport)))
    with pytest.raises(AssertionError):
        check(job)
    end_job(job)


@pytest.mark.parametrize(("what", "line", "check"), [
    ("rm -rf the runtime dir at the end", '  rm -rf "$hpclab_runtime"\n',
     lambda job: check_ended(job, "cancelled")),
    ("the TERM trap names the cause", "trap 'hpclab_stop cancelled 143' TERM\n",
     lambda job: check_ended(job, "cancelled")),
])
def test_end_checks_catch_a_removed_defence(tmp_path: Path, jobs: list[Job], what: str, line: str,
                                            check: Callable[[Job], None]) -> None:
    job = run_until_ready(tmp_path, jobs, _drop(line)(rendered()))
    end_job(job, signal.SIGTERM)
    with pytest.raises((AssertionError, FileNotFoundError)):
        check(job)
