"""The apps a session can run (hpclab/apps): validation, old records and rendezvous files, the
code-server job script run for real with a STAND-IN code-server (tests/unit/fakes/code-server),
its lab check, and `up --app code-server` through LocalRemote."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_shell_programs import SID, TOKEN, Job, end_job, job_setup, jobs, mode, wait_for

from conftest import FAKES, Local
from hpclab import apps, browser, labcheck
from hpclab.errors import ConfigError, ProtocolError, UnsafeLabError
from hpclab.jobscript import JobOptions, render
from hpclab.paths import Paths
from hpclab.profiles import from_table
from hpclab.schedulers import JobSpec, get
from hpclab.sessiondir import Rendezvous
from hpclab.state import SessionRecord, Store, migrate
from hpclab.tunnel import probe

__all__ = ["jobs"]


# -- choosing an app --------------------------------------------------------------------------


def test_an_unknown_app_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigError) as exc:
        from_table("p", {"host": "h", "app": "vscode"}, where="[profiles.p]", source="f")
    assert exc.value.hint == "app must be one of jupyterlab, notebook, code-server"
    assert from_table("p", {"host": "h"}, where="w", source="f").app == "jupyterlab"
    assert from_table("p", {"host": "h", "app": "notebook"}, where="w", source="f").app == "notebook"


def test_an_unknown_app_stops_up_before_anything_runs(local: Local) -> None:
    local.config('[profiles.bad]\nhost = "localhost"\nscheduler = "none"\napp = "tensorboard"\n')
    rc, _, err = local.hpclab("up", "bad", "--no-browser")
    assert rc == 2 and "app must be one of" in err
    with pytest.raises(SystemExit) as exc:  # the flag: argparse's choices
        local.hpclab("up", "local", "--app", "tensorboard")
    assert exc.value.code == 2
    assert local.session_ids() == []


def test_a_record_from_before_apps_reads_as_jupyterlab(tmp_path: Path) -> None:
    old = {"id": "0123abcd", "profile": "p", "host": "h", "ssh_options": [], "scheduler": "slurm", "version": 2,
           "token": "t" * 43, "local_port": 8888, "jupyter_server": "2.17.0"}
    rec = SessionRecord(**migrate(dict(old)))
    assert (rec.app, rec.app_version) == ("jupyterlab", "2.17.0")
    assert rec.url == f"http://127.0.0.1:8888/lab?token={'t' * 43}"
    store = Store(Paths(config_file=tmp_path / "c", state_dir=tmp_path / "s", control_dir=tmp_path / "c"))
    store.paths.sessions_dir.mkdir(parents=True)
    store.path("0123abcd").write_text(json.dumps(old))
    loaded = store.load("0123abcd")
    assert loaded is not None and loaded.app == "jupyterlab"


def test_urls_per_app() -> None:
    assert apps.get("notebook").url(9000, "tok") == "http://127.0.0.1:9000/tree?token=tok"
    assert apps.get("code-server").url(9000, "pw") == "http://127.0.0.1:9000/"  # the password is not in it


RDV = {"version": 1, "session": SID, "job_id": "1", "node": "n1", "user": "u", "transport": "socket",
       "address": "", "port": 0, "socket": "/tmp/x/code-server.sock", "pid": 2, "runtime_dir": "/tmp/x",
       "jupyter_server": ""}


def test_rendezvous_carries_the_app_and_an_old_one_means_jupyterlab() -> None:
    old = Rendezvous.parse(json.dumps(RDV | {"jupyter_server": "2.17.0"}), SID)
    assert (old.app, old.app_version) == ("jupyterlab", "2.17.0")
    new = Rendezvous.parse(json.dumps(RDV | {"app": "code-server", "app_version": "4.100.3"}), SID)
    assert (new.app, new.app_version, new.jupyter_server) == ("code-server", "4.100.3", "")
    with pytest.raises(ProtocolError, match="unknown app"):
        Rendezvous.parse(json.dumps(RDV | {"app": "x; rm -rf ~", "app_version": ""}), SID)


# -- the code-server job script, run ----------------------------------------------------------

HASH = hashlib.sha256(TOKEN.encode()).hexdigest()
# What a setup line or the login may have set; none of it may reach code-server.
HOSTILE_ENV = {"PASSWORD": "from-the-env", "HASHED_PASSWORD": "0" * 64, "CODE_SERVER_CONFIG": "/tmp/evil.yaml",
               "CODE_SERVER_HOST": "0.0.0.0", "PORT": "8080"}
FAKE_KNOBS: dict[str, str] = {}  # the stand-in's (tests/unit/fakes/code-server), for one test


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory: the socket's path must fit sun_path (108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="hl-", dir="/tmp"))
    yield path
    # a stand-in the job did not stop (a test that failed, a mutation): none outlives its test
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError):
            if str(path).encode() in (proc / "cmdline").read_bytes() and int(proc.name) != os.getpid():
                os.kill(int(proc.name), signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


def cs_script(transport: str = "socket", setup: tuple[str, ...] = ("umask 002",)) -> str:
    spec = JobSpec(session_id=SID, time=1800, output="o", error="e")
    return render(get("slurm"), spec, JobOptions(SID, transport, setup=setup, idle_timeout=0, app="code-server"))


def cs_start(tmp_path: Path, script: str, token: str = TOKEN, existing: Job | None = None) -> Job:
    job = existing or job_setup(tmp_path, script)
    fake = job.home.parent / "bin" / "code-server"
    fake.write_text(f"#!{sys.executable}\n" + (FAKES / "code-server").read_text())
    fake.chmod(0o755)
    (job.dir / "token").write_text(token)
    env = {"HOME": str(job.home), "PATH": f"{job.home.parent / 'bin'}:/usr/bin:/bin", "TMPDIR": str(job.tmp),
           "FAKE_OUT": str(job.out), "SLURM_JOB_ID": "4242", **HOSTILE_ENV, **FAKE_KNOBS}
    job.proc = subprocess.Popen(["bash", str(job.home.parent / "job.sh")], cwd=job.home, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return job


def seen(job: Job) -> dict[str, Any]:
    return json.loads((job.out / "code-server.json").read_text())  # type: ignore[no-any-return]


def cs_ready(tmp_path: Path, jobs: list[Job], script: str) -> Job:
    job = cs_start(tmp_path, script)
    jobs.append(job)
    wait_for(job.dir / "rendezvous.json", job)
    return job


def check_cs_private(job: Job) -> None:
    """The socket 0600, the config file 0600 in the private runtime dir, whatever umask a setup line set."""
    rdv = job.rendezvous()
    rt = Path(rdv["runtime_dir"])
    assert rdv["socket"] == f"{rt}/code-server.sock" and mode(rt) == 0o700
    assert oct(mode(Path(rdv["socket"]))) == oct(0o600)
    assert oct(mode(rt / "code-server.yaml")) == oct(0o600)


def check_cs_password(job: Job) -> None:
    """code-server has hpclab's password login and nothing else: its own config (not the
    user's, not $CODE_SERVER_CONFIG's), the hash of the session's password, no password or
    address from the environment; the password in no argv, environment or config file."""
    cs = seen(job)
    rt = job.rendezvous()["runtime_dir"]
    argv, env, config = cs["argv"], cs["env"], cs["config"]
    assert argv[argv.index("--config") + 1] == f"{rt}/code-server.yaml"
    assert config == {"auth": "password", "hashed-password": HASH, "cert": "false"}
    assert TOKEN not in (Path(rt) / "code-server.yaml").read_text()
    assert not any(TOKEN in a for a in argv) and not any(TOKEN in v for v in env.values())
    assert not set(HOSTILE_ENV) & set(env), sorted(set(HOSTILE_ENV) & set(env))
    assert "--auth" not in argv
    if job.rendezvous()["transport"] == "socket":
        assert "--socket" in argv and "--bind-addr" not in argv
    assert TOKEN not in job.script


def check_cs_rendezvous(job: Job) -> None:
    rdv = job.rendezvous()
    assert (rdv["app"], rdv["app_version"], rdv["jupyter_server"]) == ("code-server", "4.100.3", "")
    assert rdv["pid"] == seen(job)["pid"] and rdv["transport"] == "socket" and rdv["port"] == 0


def test_code_server_job_runs_private_with_its_own_password_config(short_tmp: Path, jobs: list[Job]) -> None:
    job = cs_ready(short_tmp, jobs, cs_script())
    check_cs_private(job)
    check_cs_password(job)
    check_cs_rendezvous(job)
    end_job(job, signal.SIGTERM)
    assert json.loads((job.dir / "ended.json").read_text())["reason"] == "cancelled"
    assert not Path(job.rendezvous()["runtime_dir"]).exists()  # the config file with the hash: gone


def _drop(text: str) -> Callable[[str], str]:
    def mutate(script: str) -> str:
        assert script.count(text) == 1, f"the job script changed: {text!r} is not in it once; update this table"
        return script.replace(text, "")
    return mutate


CS_MUTATIONS: list[tuple[str, Callable[[str], str], Callable[[Job], None]]] = [
    ("socket mode 600", _drop(" --socket-mode 600"), check_cs_private),
    ("config file umask 077", lambda s: s.replace("( umask 077 && printf 'auth", "( printf 'auth"), check_cs_private),
    ("unset the environment's password and address",
     _drop("unset PASSWORD HASHED_PASSWORD CODE_SERVER_CONFIG CODE_SERVER_HOST PORT\n"), check_cs_password),
    ("hpclab's own --config", lambda s: s.replace('command code-server --config "$hpclab_config" ',
                                                  'command code-server --config "$CODE_SERVER_CONFIG" '),
     check_cs_password),
    ("the hash, not the password, in the config",
     lambda s: s.replace('"${hpclab_hash%% *}"', '"$(cat "$HPCLAB_DIR/token")"'), check_cs_password),
]


@pytest.mark.parametrize(("what", "mutate", "check"), CS_MUTATIONS, ids=[m[0] for m in CS_MUTATIONS])
def test_code_server_checks_catch_a_removed_defence(short_tmp: Path, jobs: list[Job], what: str,
                                                    mutate: Callable[[str], str], check: Callable[[Job], None]) -> None:
    script = mutate(cs_script())
    if what == "hpclab's own --config":  # the environment's config file, as a setup line could point to
        (short_tmp / "evil.yaml").write_text('auth: password\nhashed-password: "x"\n')
        HOSTILE_ENV["CODE_SERVER_CONFIG"] = str(short_tmp / "evil.yaml")
        script = script.replace("unset PASSWORD HASHED_PASSWORD CODE_SERVER_CONFIG", "unset PASSWORD HASHED_PASSWORD")
    try:
        job = cs_ready(short_tmp, jobs, script)
        with pytest.raises(AssertionError):
            check(job)
        end_job(job)
    finally:
        HOSTILE_ENV["CODE_SERVER_CONFIG"] = "/tmp/evil.yaml"


@pytest.mark.parametrize("token", ["", "short", "\n"])
def test_code_server_job_refuses_an_empty_or_short_password(short_tmp: Path, jobs: list[Job], token: str) -> None:
    # sha256("") is public: a cookie anyone can compute would let them in.
    job = cs_start(short_tmp, cs_script(), token=token)
    jobs.append(job)
    assert job.proc is not None and job.proc.wait(15) != 0
    assert b"the session password file is empty or short" in job.proc.stderr.read()  # type: ignore[union-attr]
    assert not (job.out / "code-server.json").exists()


def tcp_listener(address: str, port: int) -> str | None:
    """The inode of the socket listening at address:port (or the wildcard), from the kernel's table."""
    hexaddr = "".join(f"{int(o):02X}" for o in reversed(address.split(".")))
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and f[1] in (f"{hexaddr}:{port:04X}", f"00000000:{port:04X}"):
            return f[9]
    return None


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                found.add(link[8:-1])
    return found


def check_cs_tcp(job: Job) -> None:
    """tcp mode: code-server on the node's own address (never a wildcard or loopback) at the
    rendezvous' port, and the listener there is code-server's own, behind its password."""
    rdv, argv = job.rendezvous(), seen(job)["argv"]
    addr, port = rdv["address"], rdv["port"]
    assert rdv["transport"] == "tcp" and rdv["socket"] == "" and rdv["pid"] == seen(job)["pid"]
    assert addr and addr != "0.0.0.0" and not addr.startswith("127.") and 0 < port < 65536
    assert argv[argv.index("--bind-addr") + 1] == f"{addr}:{port}" and "--socket" not in argv
    inode = tcp_listener(addr, port)
    assert inode is not None and inode in socket_inodes(rdv["pid"]), "the rendezvous' port is not code-server's"
    hexaddr = "".join(f"{int(o):02X}" for o in reversed(addr.split(".")))
    table = Path("/proc/net/tcp").read_text()
    assert f" {hexaddr}:{port:04X} " in table and f" 00000000:{port:04X} " not in table  # not on *
    conn = http.client.HTTPConnection(addr, port, timeout=10)
    conn.request("GET", "/")
    answer = conn.getresponse()
    assert answer.status == 302 and answer.getheader("Location") == "./login"  # the password login
    conn.close()


def squatters(job: Job) -> list[tuple[int, int]]:
    log = job.out / "squatters"
    return [(int(p), int(port)) for p, port in (x.split(":") for x in log.read_text().split())] if log.exists() else []


@contextlib.contextmanager
def squatting(n: int, hang: bool = False, host: str = "") -> Iterator[None]:
    """Another program takes the port the job chose before code-server binds it, n times
    (on `host`, default the address code-server was told)."""
    FAKE_KNOBS["FAKE_CODE_SERVER_SQUAT"] = str(n)
    if hang:
        FAKE_KNOBS["FAKE_CODE_SERVER_HANG"] = "1"
    if host:
        FAKE_KNOBS["FAKE_CODE_SERVER_SQUAT_HOST"] = host
    try:
        yield
    finally:
        FAKE_KNOBS.clear()


def kill_squatters(job: Job) -> None:
    for pid, _ in squatters(job):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_code_server_job_in_tcp_mode_listens_on_the_nodes_own_address(short_tmp: Path, jobs: list[Job]) -> None:
    job = cs_ready(short_tmp, jobs, cs_script("tcp"))
    check_cs_tcp(job)
    check_cs_password(job)
    end_job(job, signal.SIGTERM)
    assert tcp_listener(job.rendezvous()["address"], job.rendezvous()["port"]) is None


@pytest.mark.parametrize(("hang", "host"), [(False, ""), (True, ""), (False, "::")],
                         ids=["code-server exits", "code-server stays", "taken on IPv6's wildcard"])
def test_code_server_job_retries_a_port_another_program_took(short_tmp: Path, jobs: list[Job], hang: bool,
                                                             host: str) -> None:
    """A port taken between the job's choice and code-server's bind: another port, and the
    rendezvous names the one code-server itself listens on (not the other program's)."""
    with squatting(1 if hang else 2, hang, host):
        job = cs_ready(short_tmp, jobs, cs_script("tcp"))
    try:
        taken = squatters(job)
        assert len(taken) == (1 if hang else 2)
        check_cs_tcp(job)
        assert job.rendezvous()["port"] not in [port for _, port in taken]
    finally:
        kill_squatters(job)
    end_job(job)
    assert job.proc is not None
    said = job.proc.stderr.read()  # type: ignore[union-attr]
    assert said.count(b"was taken before code-server listened on it; trying another") == len(taken), said


@pytest.mark.parametrize("address", ["0.0.0.0", "127.0.1.1", "fd00::2"])
def test_code_server_job_never_listens_on_a_wildcard_or_loopback_address(short_tmp: Path, jobs: list[Job],
                                                                          address: str) -> None:
    """A node whose name resolves to the wildcard (or loopback, or only IPv6): a clear job error,
    never code-server on `*`."""
    job = job_setup(short_tmp, cs_script("tcp"))
    (job.home.parent / "bin" / "hostname").write_text(f"#!/bin/sh\necho {address}\n")
    (job.home.parent / "bin" / "hostname").chmod(0o755)
    job = cs_start(short_tmp, cs_script("tcp"), existing=job)
    jobs.append(job)
    assert job.proc is not None and job.proc.wait(30) == 1
    said = job.proc.stderr.read()  # type: ignore[union-attr]
    assert f"code-server needs this node's own IPv4 address in transport tcp, not '{address}'".encode() in said, said
    assert not (job.out / "code-server.json").exists() and not (job.dir / "rendezvous.json").exists()


def test_code_server_job_gives_up_after_a_few_taken_ports(short_tmp: Path, jobs: list[Job]) -> None:
    with squatting(20):
        job = cs_start(short_tmp, cs_script("tcp"))
    jobs.append(job)
    try:
        assert job.proc is not None and job.proc.wait(60) == 1
        said = job.proc.stderr.read()  # type: ignore[union-attr]
        assert b"code-server could not listen on" in said and b"5 ports in a row were taken" in said, said
        assert len(squatters(job)) == 5 and not (job.dir / "rendezvous.json").exists()
    finally:
        kill_squatters(job)


def test_code_server_job_without_code_server_says_so(short_tmp: Path, jobs: list[Job]) -> None:
    job = job_setup(short_tmp, cs_script())
    env = {"HOME": str(job.home), "PATH": f"{job.home.parent / 'bin'}:/usr/bin:/bin", "TMPDIR": str(job.tmp)}
    proc = subprocess.run(["bash", str(job.home.parent / "job.sh")], cwd=job.home, env=env, capture_output=True,
                          timeout=30)
    assert proc.returncode == 127 and b"'code-server' is not on PATH; give the profile modules" in proc.stderr


# -- code-server's lab check and probe --------------------------------------------------------


def answers(**by_cookie: labcheck.Answer) -> labcheck.Ask:
    def ask(method: str, path: str, headers: dict[str, str]) -> labcheck.Answer:
        assert (method, path) == ("GET", "/")
        return by_cookie["cookie" if "Cookie" in headers else "none"]
    return ask


LOGIN = labcheck.Answer(302, (("Location", "./login"),))


@pytest.mark.parametrize(("none", "cookie", "found"), [
    (LOGIN, LOGIN, []),
    (labcheck.Answer(200), LOGIN, ["a request for / without the password got HTTP 200, not the redirect to the "
                                   "login page"]),
    (LOGIN, labcheck.Answer(302, (("Location", "./?folder=/home"),)),
     ["a request for / with a wrong session cookie got HTTP 302, not the redirect to the login page"]),
    (labcheck.Answer(None), LOGIN, ["a request for / without the password got no answer, not the redirect to the "
                                    "login page"]),
])
def test_code_server_lab_check(none: labcheck.Answer, cookie: labcheck.Answer, found: list[str]) -> None:
    ask = answers(none=none, cookie=cookie)
    assert apps.get("code-server").problems(ask, TOKEN) == found
    if found:
        with pytest.raises(UnsafeLabError, match="code-server does not hold to its password"):
            labcheck.check(0, TOKEN, ask, app="code-server")
    else:
        labcheck.check(0, TOKEN, ask, app="code-server")


def test_code_server_probe_presents_the_session_cookie_not_the_password() -> None:
    p = apps.get("code-server").probe(TOKEN)
    assert (p.method, p.path, p.ok) == ("GET", "/login", 302)
    assert p.headers == {"Cookie": f"code-server-session={HASH}"}


# -- up --app code-server, through LocalRemote ------------------------------------------------

CS_PROFILE = '[profiles.cs]\nhost = "localhost"\nscheduler = "none"\ntransport = "socket"\napp = "code-server"\n'


def install_fake(local: Local) -> None:
    local.fake("code-server", f"#!{sys.executable}\n" + (FAKES / "code-server").read_text())


def test_up_code_server_gives_the_password_and_a_page_that_logs_in(local: Local,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake(local)
    local.config(CS_PROFILE)
    up = local.json("up", "cs", "--detach", "--no-browser")
    port, password = up["local_port"], up["password"]
    assert (up["app"], up["app_version"], up["jupyter_server"]) == ("code-server", "4.100.3", None)
    assert up["url"] == f"http://127.0.0.1:{port}/" and len(password) >= 40
    token_file = local.sessions_dir() / up["id"] / "token"
    assert token_file.read_text() == password
    assert probe(port, password, app="code-server") == 200
    assert probe(port, "not-the-password" * 3, app="code-server") == 403  # its login form
    assert local.json("url", up["id"]) == {"id": up["id"], "url": up["url"], "token": None, "password": password,
                                           "local_port": port}
    (row,) = local.json("list")
    assert row["app"] == "code-server" and row["tunnel"] == "up"
    rc, out, _ = local.hpclab("list")
    assert rc == 0 and "code-server" in out and password not in out

    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    store = Store(Paths.from_env())
    rec = store.load(up["id"])
    assert rec is not None and browser.open_lab(Paths.from_env(), rec)
    page = Path(opened[0].removeprefix("file://"))
    text = page.read_text()
    assert mode(page) == 0o600
    assert f'action="http://127.0.0.1:{port}/login"' in text and f'name="password" value="{password}"' in text
    assert "document.forms[0].submit()" in text
    local.json("stop", up["id"])


def test_up_stops_a_code_server_that_serves_without_the_password(local: Local) -> None:
    install_fake(local)
    local.config(CS_PROFILE)
    local.remote.env["FAKE_CODE_SERVER_OPEN"] = "1"
    rc, _, err = local.hpclab("up", "cs", "--detach", "--no-browser")
    assert rc == 2 and "code-server does not hold to its password" in err, err
    assert local.session_ids() == [] and list(local.state.glob("state/sessions/*.json")) == []


def test_up_notebook_runs_jupyter_notebook(local: Local) -> None:
    # The fake jupyter fakes `lab` only: a notebook job that started `jupyter notebook` fails
    # with its message, which proves what the job ran (the real one: tests/e2e/test_apps.py).
    local.fake("jupyter-notebook", "#!/bin/sh\nexit 0\n")
    rc, _, err = local.hpclab("up", "local", "--app", "notebook", "--no-browser")
    assert rc == 5 and "only `jupyter lab` is faked" in err, err


def test_up_notebook_without_notebook_installed_is_a_job_error(local: Local) -> None:
    rc, _, err = local.hpclab("up", "local", "--app", "notebook", "--no-browser")
    assert rc == 5 and "Jupyter Notebook is not installed" in err, err
    assert os.environ.get("HPCLAB_HOME")  # (the fixture's laptop, not the user's)


def test_attach_from_another_computer_finds_a_code_server_session(local: Local) -> None:
    """The app comes from the job's rendezvous file: a second computer (no local record) attaches
    to a code-server session as code-server, with its password."""
    install_fake(local)
    local.config(CS_PROFILE)
    up = local.json("up", "cs", "--detach", "--no-browser")
    for record in (local.state / "state" / "sessions").glob("*.json"):
        record.unlink()
    found = local.json("attach", "--profile", "cs", "--detach", "--no-browser")
    assert (found["id"], found["app"], found["app_version"]) == (up["id"], "code-server", "4.100.3")
    assert found["url"] == f"http://127.0.0.1:{found['local_port']}/"
    assert local.json("url", up["id"])["password"] == up["password"]
    assert probe(found["local_port"], up["password"], app="code-server") == 200
    local.json("stop", up["id"])


def test_auto_transport_on_a_node_that_refuses_ssh_runs_code_server_over_tcp(local: Local,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Where nodes refuse SSH, auto falls back to tcp for code-server as for Jupyter: it listens on
    the node's address, the forward goes there through the login connection, and the password
    still holds; stop leaves nothing."""
    from hpclab.errors import LoginRefused
    from hpclab.remote import LocalRemote

    class RefusingNode(LocalRemote):
        def connect(self) -> None:
            raise LoginRefused("Permission denied (publickey)")

    def hop(self: LocalRemote, dest: str) -> LocalRemote:
        return RefusingNode(self.home, dest, env=self.env, counters=self.counters, via=self)

    monkeypatch.setattr(LocalRemote, "hop", hop)
    install_fake(local)
    local.config('[profiles.cs-auto]\nhost = "localhost"\nscheduler = "none"\napp = "code-server"\n')
    up = local.json("up", "cs-auto", "--detach", "--no-browser")
    assert (up["app"], up["transport"]) == ("code-server", "tcp")
    assert probe(up["local_port"], up["password"], app="code-server") == 200
    assert probe(up["local_port"], "not-the-password" * 3, app="code-server") == 403
    local.json("stop", up["id"])
    assert local.session_ids() == [] and list(local.state.glob("state/sessions/*.json")) == []
