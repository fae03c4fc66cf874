"""hpclab's security promises (SECURITY.md), each attacked on the real test cluster.

hpcuser runs hpclab; hpcuser2, another user of the same cluster, is the attacker, from inside a
job of their own on the same compute node (srun --overlap into it) and from the login node and
the other node. Two sessions are shared by the assertions about a running lab, one per
transport (class-scoped, so node1 has room for the attacker's job); the rest start their own.

Nothing here is faked: real SLURM, sshd, JupyterLab and OpenSSH client. The one exception is
named for it (`..._with_patched_version_string`).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from lab import HPCLAB, Hpclab, Run, accepted, profile_text, run_cell, tc, tcx, wait_for

from hpclab.paths import Paths

HOSTS = ("login", "node1", "node2")
NODE = "node1"  # both users' jobs run here


def user() -> str:
    return tc("TC_USER")


def attacker() -> str:
    return tc("TC_USER2")


# -- helpers --------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def cookies(self) -> dict[str, str]:
        jar = {}
        for value in self.header("Set-Cookie"):
            name, _, rest = value.partition("=")
            jar[name.strip()] = rest.split(";", 1)[0]
        return jar


def request(port: int, path: str, *, method: str = "GET", host: str | None = None,
            headers: dict[str, str] | None = None, body: str | None = None, addr: str = "127.0.0.1") -> Response:
    """One HTTP request with exactly these headers (the Host header too)."""
    conn = http.client.HTTPConnection(addr, port, timeout=20)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host or f"{addr}:{port}")
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        data = body.encode() if body is not None else None
        if data is not None:
            conn.putheader("Content-Length", str(len(data)))
        conn.endheaders(data)
        resp = conn.getresponse()
        return Response(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


def websocket_status(port: int, path: str, *, origin: str, cookie: str = "") -> int:
    """The HTTP status a websocket upgrade gets: 101 when the server accepts it."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", f"Origin: {origin}",
             *([f"Cookie: {cookie}"] if cookie else []), "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall("\r\n".join(lines).encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def as_user(name: str, argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={name}", f"--regid={name}", "--init-groups", "--reset-env", "--",
            "env", f"HOME=/home/{name}", f"USER={name}", "PATH=/usr/local/bin:/usr/bin:/bin",
            "sh", "-c", 'cd "$HOME" && exec "$@"', "sh", *argv]


def session_dir(session_id: str, name: str | None = None) -> Path:
    return Path("/home") / (name or user()) / ".hpclab" / "sessions" / session_id  # /home is shared


def modes(host: str, *paths: str, below: bool = True) -> dict[str, tuple[str, int]]:
    """path -> (type letter, permission bits) of `paths` (and everything below them), as root on host."""
    out = tcx(host, ["find", *paths, *([] if below else ["-maxdepth", "0"]), "-printf", r"%y %m %p\0"]).stdout
    found = {}
    for entry in out.split("\0"):
        if entry:
            kind, mode, path = entry.split(" ", 2)
            found[path] = (kind, int(mode, 8) & 0o777)  # Jupyter sets the sticky bit on its runtime dir
    return found


def local_modes(*roots: Path) -> dict[str, tuple[str, int]]:
    found = {}
    for root in roots:
        for path in [root, *root.rglob("*")]:
            st = path.lstat()
            kind = "s" if path.is_socket() else "d" if path.is_dir() else "f"
            found[str(path)] = (kind, st.st_mode & 0o777)
    return found


def not_private(entries: dict[str, tuple[str, int]]) -> list[str]:
    """Entries others could read, write or enter: files and dirs must be 0600/0700; a socket may be
    anything inside a 0700 directory (connecting needs search permission on every parent)."""
    bad = []
    for path, (kind, mode) in entries.items():
        if mode & 0o077 == 0:
            continue
        parent = entries.get(str(Path(path).parent))
        if kind == "s" and parent is not None and parent[1] & 0o077 == 0:
            continue
        bad.append(f"{oct(mode)} {kind} {path}")
    return bad


def process_tree(host: str, root: int) -> set[int]:
    pairs = [line.split() for line in tcx(host, ["ps", "-eo", "pid=,ppid="]).stdout.splitlines()]
    children: dict[int, list[int]] = {}
    for pid, ppid in pairs:
        children.setdefault(int(ppid), []).append(int(pid))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo += children.get(pid, [])
    return tree


def listeners(host: str, kind: str = "t") -> list[tuple[str, set[int]]]:
    """(local address, pids) of every listening TCP (`t`) or unix (`x`) socket on host, as root."""
    out = tcx(host, ["ss", f"-l{kind}npH"]).stdout
    column = 3 if kind == "t" else 4  # unix sockets have a Netid column first (u_str, u_seq, ...)
    found = []
    for line in out.splitlines():
        words = line.split()
        if len(words) > column:
            found.append((words[column], {int(p) for p in re.findall(r"pid=(\d+)", line)}))
    return found


def markers(name: str) -> list[str]:
    """Files whose name contains `name` in /tmp or the users' homes, on the laptop and every host."""
    found = []
    script = f'ls -d /tmp/*{name}* /home/*/*{name}* /*{name}* 2>/dev/null; :'
    for host in HOSTS:
        found += [f"{host}:{p}" for p in tcx(host, ["sh", "-c", script]).stdout.split()]
    found += [f"laptop:{p}" for p in subprocess.run(["sh", "-c", script], capture_output=True,
                                                     text=True).stdout.split()]
    return found


@contextlib.contextmanager
def login_files_with(line: str, name: str | None = None) -> Iterator[None]:
    """Put `line` first in the user's ~/.bashrc and ~/.profile (before any early return); restore."""
    home = Path("/home") / (name or user())
    saved = {}
    for rc in (home / ".bashrc", home / ".profile"):
        saved[rc] = rc.read_bytes() if rc.exists() else None
        rc.write_bytes(f"{line}  # hpclab security test\n".encode() + (saved[rc] or b""))
    try:
        yield
    finally:
        for rc, data in saved.items():
            if data is None:
                rc.unlink(missing_ok=True)
            else:
                rc.write_bytes(data)


@contextlib.contextmanager
def process_umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def login_shell_umask() -> str:
    """What `umask` says in a command run over ssh as the user (through the login files)."""
    proc = subprocess.run(["ssh", "-F", tc("TC_SSH_CONFIG"), tc("TC_LOGIN_HOST"), "umask"],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    return proc.stdout.strip().splitlines()[-1]  # after the banner hpcuser's ~/.bashrc prints


class Attacker:
    """hpcuser2 with a job of their own on NODE; code runs inside that job through srun."""

    def __init__(self) -> None:
        out = tcx("login", as_user(attacker(), ["sbatch", "--parsable", "-p", "debug", f"--nodelist={NODE}",
                                                "-J", "attacker", "-o", "/dev/null", "--wrap", "sleep 900"]))
        self.job = out.stdout.strip().split(";")[0]
        wait_for(lambda: tcx("login", ["squeue", "-h", "-j", self.job, "-o", "%T %N"]).stdout.split()
                 == ["RUNNING", NODE], 60, what="the attacker's job running on " + NODE)

    def in_job(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return tcx("login", as_user(attacker(), ["srun", f"--jobid={self.job}", "--overlap", "-N1", "-n1",
                                                 "--quiet", *argv]), check=False)

    def on(self, host: str, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return tcx(host, as_user(attacker(), argv), check=False)

    def python(self, where: str, code: str, *args: str) -> Any:
        argv = ["python3", "-c", code, *args]
        proc = self.in_job(argv) if where == "job" else self.on(where, argv)
        assert proc.returncode == 0, f"attack on {where} failed to run: {proc.stderr}"
        return json.loads(proc.stdout)

    def leave(self) -> None:
        tcx("login", ["scancel", self.job], check=False)


# What hpcuser2 tries against hpcuser's socket-mode session, from a process on the same node.
PROBE_FILES = r"""
import errno, json, os, socket, sys
sock, runtime, sdir = sys.argv[1:4]
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
out = {}
s = socket.socket(socket.AF_UNIX)
out["connect socket"] = attempt(lambda: s.connect(sock))
out["list runtime dir"] = attempt(lambda: os.listdir(runtime))
out["list session dir"] = attempt(lambda: os.listdir(sdir))
out["read token"] = attempt(lambda: open(os.path.join(sdir, "token")).read())
out["read job.err"] = attempt(lambda: open(os.path.join(sdir, "job.err")).read())
out["read rendezvous"] = attempt(lambda: open(os.path.join(sdir, "rendezvous.json")).read())
print(json.dumps(out))
"""

# What hpcuser2 tries against hpcuser's tcp-mode server: direct HTTP to the node's port.
PROBE_HTTP = r"""
import http.client, json, sys
addr, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def get(path, headers, host):
    c = http.client.HTTPConnection(addr, port, timeout=15)
    c.putrequest("GET", path, skip_host=True)
    c.putheader("Host", host)
    for k, v in headers.items():
        c.putheader(k, v)
    c.endheaders()
    return c.getresponse().status
loop = "127.0.0.1:%d" % port  # the Host a tunnel sends: the token, not the Host check, must refuse
out = {
    "no token": get("/api/contents", {}, loop),
    "wrong token": get("/api/contents", {"Authorization": "token " + "A" * 43}, loop),
    "wrong token in url": get("/api/contents?token=" + "A" * 43, {}, loop),
    "no token, node's Host": get("/api/contents", {}, "%s:%d" % (addr, port)),
    "right token (control)": get("/api/contents", {"Authorization": "token " + token}, loop),
}
print(json.dumps(out))
"""


@dataclass
class Session:
    """A running lab of hpcuser, started by the real `hpclab up --detach`."""

    tool: Hpclab
    info: dict[str, Any]
    rdv: dict[str, Any]
    kernel: str = ""
    laptop_modes: dict[str, tuple[str, int]] = field(default_factory=dict)
    cluster_modes: dict[str, tuple[str, int]] = field(default_factory=dict)
    node_modes: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return str(self.info["id"])

    @property
    def port(self) -> int:
        return int(self.info["local_port"])

    @property
    def token(self) -> str:
        return str(self.info["url"]).split("token=", 1)[1]

    @property
    def node(self) -> str:
        return str(self.info["node"])


def laptop(root: Path, config_text: str, **env: str) -> Hpclab:
    """An hpclab 'laptop' whose HPCLAB_HOME does not exist yet: hpclab creates it."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "config.toml"
    config.write_text(config_text)
    return Hpclab(home=root / "home", config=config, env_extra=dict(env))


# What a careless user's ~/.ssh/config says: the opposite of each option hpclab pins (SAFE_OPTIONS).
# ssh takes the first value it obtains for an option, so these lines, before the Include, win
# over the test cluster's own config, which pins StrictHostKeyChecking and BatchMode itself.
RELAXED = {"StrictHostKeyChecking": "no", "BatchMode": "no", "ForwardAgent": "yes", "ForwardX11": "yes",
           "GatewayPorts": "yes", "PermitLocalCommand": "yes"}
# ...and how `ssh -G` reports each of them when it is in effect.
RELAXED_EFFECTIVE = ("stricthostkeychecking false", "batchmode no", "forwardagent yes", "forwardx11 yes",
                     "gatewayports yes", "permitlocalcommand yes")
LOCAL_COMMAND_RAN = "localcommand-ran"


def relaxed_ssh_config(where: Path) -> Path:
    """The user's ssh config of every security session: RELAXED, and a LocalCommand that leaves
    the file LOCAL_COMMAND_RAN beside the config, in front of the test cluster's own config."""
    cfg = where / "ssh_config"
    lines = [f"{k} {v}" for k, v in RELAXED.items()]
    lines += [f"LocalCommand touch {where / LOCAL_COMMAND_RAN}", f"Include {tc('TC_SSH_CONFIG')}"]
    cfg.write_text("\n".join(lines) + "\n")
    effective = subprocess.run(["ssh", "-G", "-F", str(cfg), tc("TC_LOGIN_HOST")], capture_output=True, text=True,
                               stdin=subprocess.DEVNULL, check=True).stdout.splitlines()
    assert [e for e in RELAXED_EFFECTIVE if e not in effective] == [], "the relaxed config is not in effect"
    assert f"localcommand touch {where / LOCAL_COMMAND_RAN}" in effective
    return cfg


def relaxed_profile(where: Path, **overrides: Any) -> str:
    """The testcluster profile reaching the cluster through relaxed_ssh_config(where); `overrides`
    (ssh_options too) win."""
    return profile_text(**{"ssh_options": ["-F", str(relaxed_ssh_config(where))], **overrides})


def local_command_ran(where: Path) -> bool:
    return (where / LOCAL_COMMAND_RAN).exists()


def start_session(tmp: Path, transport: str, umask_line: str) -> Session:
    """Up on NODE with the user's login files setting `umask_line` and this process at umask 022;
    start a kernel; record the modes of everything hpclab made; restore the login files."""
    tool = laptop(tmp / "laptop", relaxed_profile(tmp, extra_directives=[f"--nodelist={NODE}"]))
    sessions = Path("/home") / user() / ".hpclab"
    for d in (sessions, sessions / "sessions"):
        if d.is_dir():
            d.chmod(0o755)  # as if made earlier under a lax umask: hpclab must tighten it
    try:
        with login_files_with(umask_line), process_umask(0o022):
            assert login_shell_umask() == "0" + umask_line.split()[1], "the login files did not set the umask"
            info = tool.json("up", "testcluster", "--transport", transport, "--detach", "--no-browser")
            s = Session(tool, info, json.loads((session_dir(info["id"]) / "rendezvous.json").read_text()))
            r = request(s.port, "/api/kernels", method="POST", headers=auth(s.token), body='{"name": "python3"}')
            assert r.status == 201, r
            s.kernel = json.loads(r.body)["id"]
            runtime = s.rdv["runtime_dir"]
            wait_for(lambda: tcx(s.node, ["sh", "-c", f"ls {runtime}/kernel-{s.kernel}*ipc* 2>/dev/null"],
                                 check=False).stdout.strip(), 30, what="the kernel's ipc sockets")
            s.cluster_modes = {**modes("login", str(sessions), str(sessions / "sessions"), below=False),
                               **modes("login", str(session_dir(s.id)))}
            s.node_modes = modes(s.node, runtime)
            paths = Paths.from_env({**tool.env})
            s.laptop_modes = local_modes(tool.home, paths.control_dir)
        return s
    finally:
        for d in (sessions, sessions / "sessions"):  # in case up failed before tightening them
            if d.is_dir():
                d.chmod(0o700)


@pytest.fixture(scope="class")
def attacker_job(cluster: Any) -> Iterator[Attacker]:
    a = Attacker()
    yield a
    a.leave()


def _session_fixture(transport: str, umask_line: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    tmp = tmp_path_factory.mktemp(transport)
    s = None
    try:
        s = start_session(tmp, transport, umask_line)
        yield s
    finally:
        if s is not None:
            s.tool.cleanup()
        else:
            Hpclab(home=tmp / "laptop" / "home", config=tmp / "laptop" / "config.toml").cleanup()


@pytest.fixture(scope="class")
def sock(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    yield from _session_fixture("socket", "umask 002", tmp_path_factory)


@pytest.fixture(scope="class")
def tcp(cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    yield from _session_fixture("tcp", "umask 022", tmp_path_factory)


@pytest.fixture
def tool(cluster: Any, tmp_path: Path) -> Iterator[Hpclab]:
    """A fresh laptop for one test, with the relaxed user ssh config; stops only its own sessions."""
    t = laptop(tmp_path / "laptop", relaxed_profile(tmp_path))
    yield t
    t.cleanup()


# -- checks shared by both transports ---------------------------------------------------------------------


def check_files_are_private(s: Session, transport: str) -> None:
    sdir = str(session_dir(s.id))
    expected = {f"{sdir}/{n}" for n in ("token", "job.sh", "job.out", "job.err", "rendezvous.json", "started")}
    assert expected <= set(s.cluster_modes), sorted(s.cluster_modes)
    top = f"/home/{user()}/.hpclab"
    assert s.cluster_modes[top] == s.cluster_modes[f"{top}/sessions"] == ("d", 0o700)  # were 0755 before up
    assert not_private(s.cluster_modes) == []
    runtime = s.rdv["runtime_dir"]
    assert s.node_modes[runtime] == ("d", 0o700)
    assert any(Path(p).name == f"kernel-{s.kernel}.json" for p in s.node_modes)
    if transport == "socket":
        assert s.node_modes[s.rdv["socket"]] == ("s", 0o600)
    assert not_private(s.node_modes) == []
    paths = Paths.from_env({**s.tool.env})
    assert str(paths.control_dir) in s.laptop_modes and s.laptop_modes[str(paths.control_dir)] == ("d", 0o700)
    assert any(kind == "s" for kind, _ in s.laptop_modes.values()), "no control socket seen"
    assert str(paths.sessions_dir / f"{s.id}.json") in s.laptop_modes
    assert s.laptop_modes[str(s.tool.home)] == ("d", 0o700)
    assert not_private(s.laptop_modes) == []


def login(port: int, password: str, new_password: str = "") -> Response:
    """Submit the login form as a browser does (with its _xsrf cookie)."""
    xsrf = request(port, "/login").cookies()["_xsrf"]
    form = {"_xsrf": xsrf, "password": password}
    if new_password:
        form["new_password"] = new_password
    r = request(port, "/login?next=%2Flab", method="POST", body=urllib.parse.urlencode(form),
                headers={"Cookie": f"_xsrf={xsrf}", "Content-Type": "application/x-www-form-urlencoded"})
    r.headers.append(("Set-Cookie", f"_xsrf={xsrf}; Path=/"))
    return r


def cookie_header(r: Response) -> str:
    return "; ".join(f"{k}={v}" for k, v in r.cookies().items())


FOREIGN = ("http://evil.example", "null", "http://127.0.0.1:1")


def check_tunnel_refuses(s: Session) -> None:
    port, token = s.port, s.token
    wrong = secrets.token_urlsafe(32)
    seen: list[tuple[str, Response]] = []

    def req(path: str, **kw: Any) -> Response:
        r = request(port, path, **kw)
        seen.append((f"{kw.get('method', 'GET')} {path} {kw.get('headers', {})}", r))
        return r

    assert req("/api/contents", headers=auth(token)).status == 200  # control: the real token works
    assert req("/api/contents").status == 403
    assert req("/api/contents", headers=auth(wrong)).status == 403
    assert req(f"/api/contents?token={wrong}").status == 403
    lab = req("/lab")
    assert lab.status == 302 and lab.header("Location")[0].startswith("/login")  # the login page, not the lab
    # DNS rebinding: a page of evil.example resolving to 127.0.0.1 sends its own Host header
    hosts = ["evil.example", f"evil.example:{port}", f"{s.node}:{port}"]
    if s.rdv.get("address"):
        hosts.append(f"{s.rdv['address']}:{port}")
    for host in hosts:
        assert req("/api/contents", host=host, headers=auth(token)).status in (400, 403), host
    # A browser that has logged in holds the lab's cookie: a page of another origin must get
    # nothing with it (CSRF), and must not be allowed to read anything (CORS)
    cookie = cookie_header(login(port, token))
    assert req("/api/contents", headers={"Cookie": cookie}).status == 200  # control: the cookie works
    for origin in FOREIGN:
        assert req("/api/contents", headers={"Cookie": cookie, "Origin": origin}).status in (403, 404), origin
        assert req("/api/contents", method="POST", body='{"type": "file"}',
                   headers={"Cookie": cookie, "Origin": origin}).status in (403, 404), origin
        req("/api/contents", headers={"Origin": origin})
        # the preflight a page needs before it may send the token in a header
        req("/api/contents", method="OPTIONS", headers={"Origin": origin, "Access-Control-Request-Method": "GET",
                                                         "Access-Control-Request-Headers": "authorization"})
    # Jupyter answers a request that carries the token with ACAO set to its Origin, here none:
    # an empty value allows no origin. Every other answer has no ACAO at all.
    allowed = [(what, r.header("Access-Control-Allow-Origin")) for what, r in seen
               if (r.header("Access-Control-Allow-Origin") and token not in what) or
               any(r.header("Access-Control-Allow-Origin"))]
    assert allowed == []
    # websockets (cross-site websocket hijacking): the lab's own origin is accepted (control), others not
    channels = f"/api/kernels/{s.kernel}/channels"
    assert websocket_status(port, channels, origin=f"http://127.0.0.1:{port}", cookie=cookie) == 101
    for origin in (*FOREIGN, f"http://evil.example:{port}"):
        assert websocket_status(port, channels, origin=origin, cookie=cookie) in (400, 403), origin
        assert websocket_status(port, channels, origin=origin) in (400, 403), origin


def check_no_password_change(s: Session) -> None:
    port, token = s.port, s.token
    new_password = "hpclab-" + secrets.token_hex(8)
    first = login(port, token, new_password)
    assert first.status == 302, first  # control: the form works, the token logs in
    after = login(port, new_password)
    assert after.status != 302, "the new password logged in"
    assert request(port, "/api/contents", headers={"Cookie": cookie_header(after)}).status == 403
    config = Path("/home") / user() / ".jupyter" / "jupyter_server_config.json"
    assert not config.exists() or "password" not in config.read_text()


def check_token_holder_from_a_foreign_origin(s: Session) -> None:
    """Stock jupyter_server trusts a request that carries the token from any origin (it copies
    the Origin into Access-Control-Allow-Origin and skips the websocket origin check); the job
    configures it so that a token holder is origin-checked like everyone else."""
    r = request(s.port, "/api/contents", headers={**auth(s.token), "Origin": "http://evil.example"})
    assert r.header("Access-Control-Allow-Origin") == []
    channels = f"/api/kernels/{s.kernel}/channels?token={s.token}"
    assert websocket_status(s.port, channels, origin="http://evil.example") != 101
    own = f"http://127.0.0.1:{s.port}"
    assert websocket_status(s.port, channels, origin=own) == 101  # the lab's own page still works


def check_loopback_forward(s: Session) -> None:
    cfg = Path(s.tool.config).parent.parent / "ssh_config"
    effective = subprocess.run(["ssh", "-G", "-F", str(cfg), tc("TC_LOGIN_HOST")], capture_output=True,
                               text=True, stdin=subprocess.DEVNULL).stdout
    assert "gatewayports yes" in effective, "the user's config does not ask for GatewayPorts"
    out = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    bound = [line.split()[3] for line in out.splitlines() if line.split()[3].endswith(f":{s.port}")]
    assert bound == [f"127.0.0.1:{s.port}"]


def check_local_command_never_ran(s: Session) -> None:
    """The session's ssh connections had the relaxed user config; its LocalCommand never ran."""
    where = Path(s.tool.config).parent.parent
    assert str(where / "ssh_config") in Path(s.tool.config).read_text()
    assert (where / "ssh_config").read_text().startswith("StrictHostKeyChecking no\n")
    assert not local_command_ran(where)


# -- promises 4-7 on a socket session --------------------------------------------------------------------


class TestSocketSession:
    def test_files_are_private_whatever_the_umask(self, sock: Session) -> None:
        """Promise 4: 'umask 002' in ~/.bashrc and ~/.profile, umask 022 on the laptop."""
        check_files_are_private(sock, "socket")

    def test_other_user_on_the_same_node_cannot_get_in(self, sock: Session, attacker_job: Attacker) -> None:
        """Promise 5, socket mode: hpcuser2's own job on the node cannot reach the lab."""
        squeue = tcx("login", ["squeue", "-h", "-w", NODE, "-o", "%u %i"]).stdout.split("\n")
        assert f"{attacker()} {attacker_job.job}" in squeue and f"{user()} {sock.info['job_id']}" in squeue
        tried = attacker_job.python("job", PROBE_FILES, sock.rdv["socket"], sock.rdv["runtime_dir"],
                                    str(session_dir(sock.id)))
        assert tried == {k: "EACCES" for k in tried}, tried
        # no TCP port of Jupyter; its kernels talk over unix sockets in the private runtime dir
        jupyter = int(sock.rdv["pid"])
        tree = process_tree(NODE, jupyter)
        kernels = tree - {jupyter}
        assert kernels, "no kernel under Jupyter"
        tcp = [(a, p) for a, p in listeners(NODE) if p & tree]
        # The one exception, which hpclab cannot switch off (SECURITY.md): ipykernel always binds
        # the pipe that carries output of forked subprocesses on 127.0.0.1, one per kernel; it
        # only accepts messages that start with a 128-bit secret held in the kernel's memory.
        assert all(a.startswith("127.0.0.1:") and p <= kernels for a, p in tcp), tcp
        assert len(tcp) <= len(kernels), tcp
        conn = json.loads(tcx(NODE, ["cat", f"{sock.rdv['runtime_dir']}/kernel-{sock.kernel}.json"]).stdout)
        assert conn["transport"] == "ipc"
        assert conn["ip"].startswith(sock.rdv["runtime_dir"] + "/")
        kernel_unix = [a for a, p in listeners(NODE, "x") if p & (tree - {int(sock.rdv["pid"])})]
        assert kernel_unix and all(a.startswith(sock.rdv["runtime_dir"] + "/") for a in kernel_unix)

    def test_tunnel_refuses_foreign_requests(self, sock: Session) -> None:
        """Promise 6 through a socket-mode tunnel."""
        check_tunnel_refuses(sock)
        check_no_password_change(sock)

    def test_token_holder_from_a_foreign_origin_is_refused(self, sock: Session) -> None:
        check_token_holder_from_a_foreign_origin(sock)

    def test_local_forward_is_loopback_only(self, sock: Session) -> None:
        """Promise 7: GatewayPorts yes in the user's ssh config does not widen the forward."""
        check_loopback_forward(sock)

    def test_local_command_of_the_user_config_never_runs(self, sock: Session) -> None:
        check_local_command_never_ran(sock)


# -- promises 4-7 on a tcp session ------------------------------------------------------------------------


class TestTcpSession:
    def test_files_are_private_whatever_the_umask(self, tcp: Session) -> None:
        """Promise 4: 'umask 022' in ~/.bashrc and ~/.profile, umask 022 on the laptop."""
        check_files_are_private(tcp, "tcp")

    def test_server_listens_on_the_node_address_only_and_wants_the_token(
            self, tcp: Session, attacker_job: Attacker) -> None:
        """Promise 5, tcp mode: bound to the node's address, 403 for hpcuser2 from anywhere."""
        addr, port = tcp.rdv["address"], int(tcp.rdv["port"])
        mine = [a for a, p in listeners(tcp.node) if int(tcp.rdv["pid"]) in p]
        assert mine == [f"{addr}:{port}"]
        assert not addr.startswith(("0.0.0.0", "127.", "*", "[::"))
        for where in ("job", "login", "node2"):
            got = attacker_job.python(where, PROBE_HTTP, addr, str(port), tcp.token)
            assert got.pop("right token (control)") == 200, (where, "the server is not reachable from here")
            assert got == {k: 403 for k in got}, (where, got)

    def test_tunnel_refuses_foreign_requests(self, tcp: Session) -> None:
        """Promise 6 through a tcp-mode tunnel."""
        check_tunnel_refuses(tcp)
        check_no_password_change(tcp)

    def test_token_holder_from_a_foreign_origin_is_refused(self, tcp: Session) -> None:
        check_token_holder_from_a_foreign_origin(tcp)

    def test_local_forward_is_loopback_only(self, tcp: Session) -> None:
        """Promise 7: GatewayPorts yes in the user's ssh config does not widen the forward."""
        check_loopback_forward(tcp)

    def test_local_command_of_the_user_config_never_runs(self, tcp: Session) -> None:
        check_local_command_never_ran(tcp)


# -- promises 1-3: the token on command lines, in the scheduler, in logs ----------------------------------------

STRACE = "/usr/bin/strace"
# strace -y prints a file descriptor with what it is: 5<pipe:[12345]>, 0</dev/null>
TO_STDIN = re.compile(r"dup[23]\(\d+<([^>]*)>, 0[<,)]")
PIPE_WRITE = re.compile(r'write\(\d+<(pipe:\[\d+\])>, "((?:[^"\\]|\\.)*)"')


@dataclass
class Exec:
    """One execve as strace printed it: path, argv and (strace -v) the whole environment; and
    what the process had on fd 0 then ("inherited" when nothing in it replaced its parent's)."""

    pid: int
    line: str
    stdin: str


@dataclass
class LaptopTrace:
    """What `strace -ff -y -v` of hpclab recorded: every program it and its children started,
    and everything written into each pipe."""

    execs: list[Exec]
    written: dict[str, str]  # "pipe:[inode]" -> all that was written into it, as strace prints it

    @classmethod
    def read(cls, prefix: Path) -> LaptopTrace:
        execs: list[Exec] = []
        written: dict[str, str] = {}
        for path in prefix.parent.glob(prefix.name + ".*"):
            pid, stdin = int(path.suffix[1:]), "inherited"
            for line in path.read_text(errors="replace").splitlines():
                if m := TO_STDIN.match(line):
                    stdin = m.group(1)
                elif line.startswith(("execve(", "execveat(")):
                    execs.append(Exec(pid, line, stdin))
                elif m := PIPE_WRITE.match(line):
                    written[m.group(1)] = written.get(m.group(1), "") + m.group(2)
        return cls(execs, written)

    def stdin_holding(self, secret: str) -> dict[int, Exec]:
        """pid -> the program that ran there (its last execve), for each process whose stdin was a
        pipe into which `secret` was written."""
        return {e.pid: e for e in self.execs if e.stdin.startswith("pipe:") and secret in self.written.get(e.stdin, "")}


@dataclass
class TracedRun(Run):
    """`hpclab` started under strace: `proc` is strace, which passes no signal on; signals go to
    hpclab itself, strace's child."""

    def hpclab_pid(self) -> int:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return int(wait_for(lambda: children.read_text().split(), 10, what="strace to start hpclab")[0])

    def signal(self, sig: int) -> None:
        os.kill(self.hpclab_pid(), sig)


def traced_start(tool: Hpclab, prefix: Path, *args: str) -> TracedRun:
    """Start `hpclab ARGS` under `strace -ff` (one file PREFIX.PID per process): every execve with
    its argv and whole environment, which pipe or file each process got as stdin (dup2 to fd 0),
    and every write, so that what went into each child's stdin is known too."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    n = len(tool.runs)
    out, err = tool.home / f"run{n}.out", tool.home / f"run{n}.err"
    tool.home.mkdir(parents=True, exist_ok=True)
    argv = [STRACE, "-ff", "-qq", "-y", "-v", "-s", "65535", "-e", "trace=execve,execveat,dup2,dup3,write",
            "-o", str(prefix), *HPCLAB, *args]
    proc = subprocess.Popen(argv, env=tool.env, stdin=subprocess.DEVNULL, stdout=out.open("wb"),
                            stderr=err.open("wb"), start_new_session=True)
    run = TracedRun(proc, out, err)
    tool.runs.append(run)
    return run


def daemons(host: str) -> list[int]:
    """The pids of what starts programs on `host` for a user: its sshd listener, and slurmctld
    (with slurmscriptd, which runs its scripts) on login, slurmd on a node."""
    run = Path(tc("HPCLAB_TC_DIR")) / "run"
    pids = [int((run / f"sshd-{host}.pid").read_text())]
    if host == "login":
        ctld = int((run / "slurmctld.pid").read_text())
        pids.append(ctld)
        for task in Path(f"/proc/{ctld}/task").iterdir():
            pids += [int(p) for p in (task / "children").read_text().split()]
    else:
        pids.append(int((run / f"slurmd-{host}.pid").read_text()))
    return pids


class DaemonTrace:
    """`strace -f` attached to one cluster host's daemons (daemons()): from start() to stop(),
    every program they or their children start (execve: path, argv, whole environment) and every
    address they bind. The hosts share the machine's pid namespace, so this runs on the laptop."""

    def __init__(self, host: str, out: Path) -> None:
        self.host = host
        self.out = out
        self.err = out.with_suffix(".err")
        self.text = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        pids = daemons(self.host)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        argv = [STRACE, "-f", "-v", "-s", "65535", "-e", "trace=execve,execveat,bind", "-o", str(self.out),
                *(f"-p{p}" for p in pids)]
        with self.err.open("wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        # (a script slurmctld ran may have ended before strace came to it)
        wait_for(lambda: all(f"Process {p} attached" in self.err.read_text() or not Path(f"/proc/{p}").exists()
                             for p in pids), 30, what=f"strace to attach to the daemons of {self.host}")
        assert self.proc.poll() is None, self.err.read_text()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # strace detaches from every process and exits
            self.proc.wait(60)
        self.text = self.out.read_text(errors="replace") if self.out.exists() else ""

    def lines_with(self, text: str) -> list[str]:
        return [line[:300] for line in self.text.splitlines() if text in line]


@contextlib.contextmanager
def traced(where: Path, hosts: tuple[str, ...] = HOSTS) -> Iterator[dict[str, DaemonTrace]]:
    """DaemonTraces of `hosts` while the block runs; their text is there once it has ended."""
    traces = {h: DaemonTrace(h, where / f"{h}.trace") for h in hosts}
    try:
        for t in traces.values():
            t.start()
        yield traces
    finally:
        for t in traces.values():
            t.stop()


class EnvironScanner(threading.Thread):
    """Reads /proc/*/environ of every process on the machine, over and over. The cluster's hosts
    share the machine's pid namespace, so this sees their processes too (as root)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.halt = threading.Event()
        self.rounds = 0
        self.seen: set[tuple[str, bytes]] = set()  # (command line, environ)

    def run(self) -> None:
        while not self.halt.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    with contextlib.suppress(OSError):
                        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                        self.seen.add((cmd.decode(errors="replace")[:200], Path(f"/proc/{pid}/environ").read_bytes()))
            self.rounds += 1

    def stop(self) -> None:
        self.halt.set()
        self.join(60)

    def holding(self, secret: str) -> list[str]:
        """The command lines of processes whose environment held `secret`."""
        return sorted({cmd for cmd, env in self.seen if secret.encode() in env})


BROWSER = """#!/bin/sh
# a browser that remembers how it was started
printf '%s\\n' "$@" >> "{log}"
"""


def without_url(text: str, port: int, token: str) -> str:
    return text.replace(f"http://127.0.0.1:{port}/lab?token={token}", "<URL>")


def test_token_stays_off_command_lines_out_of_the_scheduler_and_out_of_logs(tool: Hpclab, tmp_path: Path) -> None:
    """Promises 1-3 over one whole session: up (opening a browser) with --debug, a cell run in
    Chromium, failed requests, logs, then Ctrl-C. No argv and no environment: hpclab runs under
    strace -f, and the sshd and SLURM daemons of every host are traced too, so every program
    started for the session, on the laptop or the cluster, is recorded with its argv and
    environment; the token goes into the stdin of one command, the submit, and nothing else's.
    Every process environment on the machine (the cluster's included) is read over and over."""
    browser_log = tmp_path / "browser.log"
    browser = tmp_path / "browser"
    browser.write_text(BROWSER.format(log=browser_log))
    browser.chmod(0o755)
    tool.env_extra["BROWSER"] = str(browser)
    tool.env_extra["DISPLAY"] = ":0"  # with ForwardX11 yes (the user's config) ssh would run xauth for it
    prefix = tmp_path / "trace" / "laptop"
    scan = EnvironScanner()
    scan.start()
    run = None
    # control: a marker in a process environment on every host, which the scan must see
    marker = "hpclab-scan-control-" + secrets.token_hex(8)
    controls = [subprocess.Popen(["env", f"HPCLAB_SCAN_CONTROL={marker}-laptop", "sleep", "2"])]
    controls += [subprocess.Popen([str(Path(tc("HPCLAB_TC_DIR")) / "bin" / "tcx"), h, "env",
                                   f"HPCLAB_SCAN_CONTROL={marker}-{h}", "sleep", "2"]) for h in HOSTS]
    with traced(tmp_path / "daemons") as cluster_traces:
        try:
            for c in controls:
                c.wait(30)
            wait_for(lambda: scan.rounds >= 2, 30, what="two scan rounds")
            assert all(scan.holding(f"{marker}-{h}") for h in ("laptop", *HOSTS)), "the scan missed a control"
            run = traced_start(tool, prefix, "--debug", "up", "testcluster", "--transport", "socket")
            url, port, token = run.wait_url()
            wait_for(browser_log.exists, 30, what="the browser to be started")
            rec = next(iter((tool.home / "state" / "sessions").glob("*.json")))
            sid, job, node = rec.stem, json.loads(rec.read_text())["job_id"], json.loads(rec.read_text())["node"]

            assert run_cell(url, "print(6 * 7)").strip() == "42"
            wrong = secrets.token_urlsafe(32)
            assert request(port, "/api/contents", headers=auth(wrong)).status == 403
            assert request(port, f"/api/contents?token={wrong}").status == 403
            # the real token in a URL and a Referer of a failing request: Jupyter logs both
            assert request(port, f"/api/nothing-here?token={token}",
                           headers={"Referer": f"http://127.0.0.1:{port}/lab?token={token}"}).status == 404

            outputs = {}
            for argv in (["--debug", "logs", sid], ["--debug", "list"], ["--debug", "list", "--json"]):
                proc = tool(*argv)
                assert proc.returncode == 0, proc.stderr
                outputs[" ".join(argv)] = without_url(proc.stdout, port, token) + proc.stderr
            assert "ServerApp" in outputs[f"--debug logs {sid}"], "hpclab logs showed no Jupyter log"

            sdir = f"/home/{user()}/.hpclab/sessions/{sid}"
            for name in ("job.out", "job.err", "job.sh", "rendezvous.json", "started"):
                outputs[f"root: {name}"] = tcx("login", ["cat", f"{sdir}/{name}"]).stdout
            assert "403 GET /api/contents" in outputs["root: job.err"], "Jupyter did not log the failed request"
            assert "404 GET /api/nothing-here" in outputs["root: job.err"]
            assert tcx("login", ["cat", f"{sdir}/token"]).stdout == token  # control: we look at the right place

            named = tcx("login", ["squeue", "-h", "-j", job, "-o", "%j|%k"]).stdout.strip()
            assert named == f"hpclab-{sid}|hpclab"
            for argv in (["scontrol", "show", "job", "-dd", job], ["scontrol", "write", "batch_script", job, "-"],
                         ["squeue", "-h", "-j", job, "-o", "%all"]):
                outputs[" ".join(argv)] = tcx("login", argv).stdout

            run.signal(signal.SIGINT)
            assert run.wait(120) == 130  # strace exits with hpclab's status once all it traced has ended
            # A last whole scan round after the stop (the round under way may have begun before it).
            stopped_at = scan.rounds
            wait_for(lambda: scan.rounds >= stopped_at + 2, 60, what="a scan round after the stop")
        finally:
            scan.stop()
            if run is not None and run.proc.poll() is None:
                run.signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):  # the cause is what the test says
                    run.proc.wait(90)
    fields = tcx("login", ["sacct", "--helpformat"]).stdout.split()
    outputs["sacct"] = tcx("login", ["sacct", "-j", job, "-P", "-o", ",".join(fields)]).stdout
    assert sid in outputs["sacct"]

    # No argv, no environment of any program started on the laptop, or by sshd or SLURM on any
    # host (traced); no process environment on the machine while the session ran (sampled)
    laptop_trace = LaptopTrace.read(prefix)
    assert scan.rounds >= 3
    holding = {"laptop": [e.line[:300] for e in laptop_trace.execs if token in e.line],
               **{host: t.lines_with(token) for host, t in cluster_traces.items()},
               "any environ (sampled)": scan.holding(token)}
    assert holding == {where: [] for where in holding}
    # ...and the token went into the stdin of exactly one program, the ssh that runs the submit
    # (its remote command passes the session id to the shell program, which reads the token first)
    fed = laptop_trace.stdin_holding(token)
    assert len(fed) == 1, [e.line[:300] for e in fed.values()]
    (submit,) = fed.values()
    assert submit.line.startswith('execve("/usr/bin/ssh", ["ssh", ') and "sbatch" in submit.line, submit.line[:500]
    assert f"hpclab {sid}" in submit.line, submit.line[:500]
    assert [p for p, data in laptop_trace.written.items() if token in data] == [submit.stdin]
    # controls: the trace saw the browser start, and hpclab start ssh with and without the token
    assert any(e.line.startswith(f'execve("{browser}"') for e in laptop_trace.execs)
    assert len({e.pid for e in laptop_trace.execs if e.line.startswith('execve("/usr/bin/ssh"')}) > 3
    # The user's config asks for X11 forwarding, for which ssh would run xauth, and a LocalCommand
    assert [e.line[:300] for e in laptop_trace.execs if "/usr/bin/xauth" in e.line] == []
    assert not local_command_ran(tmp_path)

    # controls: the traces saw the submit command on the login node and the job start on its node
    assert cluster_traces["login"].lines_with(f'"hpclab", "{sid}"'), "the submit command is not in the trace"
    assert cluster_traces[node].lines_with(f'"SLURM_JOB_ID={job}"'), f"the job's start on {node} is not in the trace"

    browser_argv = browser_log.read_text()
    assert token not in browser_argv, f"the browser was started with the token: {browser_argv}"
    for what, text in outputs.items():
        assert token not in text, what
    assert token not in without_url(run.stdout(), port, token) and url in run.stdout()
    assert token not in run.stderr()
    for path in (tool.home / "state").rglob("*"):
        if path.is_file():
            assert token not in path.read_text(errors="replace"), path


# -- the agent: never forwarded -----------------------------------------------------------------------------


def agent_forwarding(trace: DaemonTrace) -> list[str]:
    """What in a daemon trace shows a forwarded agent: sshd binding its /tmp/ssh-*/agent.* socket,
    or a program started with SSH_AUTH_SOCK in its environment."""
    return [line[:300] for line in trace.text.splitlines()
            if re.search(r'sun_path="/tmp/ssh-[^"]*/agent\.', line) or '"SSH_AUTH_SOCK=' in line]


def test_agent_is_not_forwarded_though_the_config_asks(cluster: Any, tmp_path: Path) -> None:
    """An ssh-agent holding the user's key, SSH_AUTH_SOCK set for hpclab, and `ForwardAgent yes`
    in the user's config: over a whole socket session (up, list, logs, url, stop) sshd makes no
    agent socket on the login node or the node, and starts nothing with SSH_AUTH_SOCK (traced,
    and sampled with `ls` too). Control: plain ssh with the same config and agent forwards it
    to both."""
    cfg = relaxed_ssh_config(tmp_path)
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with_agent = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
    tool = laptop(tmp_path / "laptop", profile_text(ssh_options=["-F", str(cfg)]), SSH_AUTH_SOCK=str(sock))
    sampled: dict[str, list[str]] = {}
    plain: dict[str, str] = {}
    try:
        wait_for(sock.exists, 10, what="the agent's socket")
        subprocess.run(["ssh-add", "-q", tc("TC_KEY")], env=with_agent, check=True, capture_output=True)
        assert subprocess.run(["ssh-add", "-l"], env=with_agent, capture_output=True, text=True).stdout.count(
            "\n") == 1, "the agent does not hold the key"
        with traced(tmp_path / "session") as during:
            info = tool.json("up", "testcluster", "--transport", "socket", "--detach", "--no-browser")
            node = info["node"]
            for h in ("login", node):
                sampled[h] = cluster.agent_sockets(h)
            for argv in (["list"], ["logs", info["id"]], ["url", info["id"]]):
                proc = tool(*argv)
                assert proc.returncode == 0, proc.stderr
                for h in ("login", node):
                    sampled[h] += cluster.agent_sockets(h)
            proc = tool("stop", info["id"])
            assert proc.returncode == 0, proc.stderr
        assert not local_command_ran(tmp_path)  # (the control below runs it)
        # control: plain ssh with the same config and agent, to the login node and (with a job
        # there, for pam_slurm_adopt) to the node, lists its agent socket from inside the session
        with cluster.job_on(user(), node), traced(tmp_path / "control", ("login", node)) as control:
            for h in ("login", node):
                dest = tc("TC_LOGIN_HOST") if h == "login" else node
                proc = subprocess.run(["ssh", "-F", str(cfg), dest, 'ls -d /tmp/ssh-*/agent.*; echo "$SSH_AUTH_SOCK"'],
                                      env=with_agent, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                      timeout=60)
                plain[h] = proc.stdout
    finally:
        agent.terminate()
        agent.wait(10)
        tool.cleanup()
    assert sampled == {"login": [], node: []}
    for h in ("login", node):
        assert agent_forwarding(during[h]) == [], h
        # controls: the session's connections to this host went through the traced sshd
        assert during[h].lines_with(f"sshd_config-{h}\", \"-E\""), f"no ssh connection to {h} in the trace"
        lines = plain[h].splitlines()
        assert lines and lines[-1].startswith("/tmp/ssh-") and lines[-1] in lines[:-1], (h, plain[h])
        assert agent_forwarding(control[h]), h


# -- promise 8: host keys ---------------------------------------------------------------------------------


def test_changed_host_key_stops_before_anything_is_sent(tool: Hpclab, tmp_path: Path) -> None:
    known = Path(tc("TC_KNOWN_HOSTS")).read_text().splitlines()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "impostor")], check=True)
    impostor = (tmp_path / "impostor.pub").read_text().split()[:2]
    lines = []
    for line in known:
        names = line.split()[0].split(",")
        lines.append(" ".join([line.split()[0], *impostor]) if "tc-login" in names or tc("TC_LOGIN_ADDR") in names
                     else line)
    assert lines != known
    (tmp_path / "known_hosts").write_text("\n".join(lines) + "\n")
    # the user's config says StrictHostKeyChecking no (relaxed_ssh_config)
    wrong_key = ["-F", str(relaxed_ssh_config(tmp_path)), "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}"]
    tool.write_config(profile_text(ssh_options=wrong_key))
    before_dirs = set(os.listdir(f"/home/{user()}/.hpclab/sessions"))
    before = accepted("login", user())
    proc = tool("up", "testcluster", "--no-browser")
    assert proc.returncode == 3, proc.stderr
    assert "host key of tc-login has changed" in proc.stderr and "stopped before sending anything" in proc.stderr
    assert accepted("login", user()) == before
    assert set(os.listdir(f"/home/{user()}/.hpclab/sessions")) <= before_dirs
    assert not list((tool.home / "state" / "sessions").glob("*.json"))
    assert not local_command_ran(tmp_path)
    # control: with the same options plain ssh warns about the changed key and logs in all the same
    plain = subprocess.run(["ssh", *wrong_key, tc("TC_LOGIN_HOST"), "echo", "logged-in"], capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in plain.stderr, plain.stderr
    assert plain.returncode == 0 and plain.stdout.splitlines()[-1] == "logged-in", plain.stderr
    assert accepted("login", user()) == before + 1


# -- promise 9: nothing carries over -----------------------------------------------------------------------


def test_new_session_new_token_and_stop_removes_every_trace(tool: Hpclab) -> None:
    first = tool.json("up", "testcluster", "--transport", "socket", "--detach", "--no-browser")
    old_token = first["url"].split("token=")[1]
    rdv = json.loads((session_dir(first["id"]) / "rendezvous.json").read_text())
    node = first["node"]
    assert tcx(node, ["test", "-S", rdv["socket"]], check=False).returncode == 0  # control
    stopped = tool("stop", first["id"])
    assert stopped.returncode == 0, stopped.stderr
    assert tcx(node, ["test", "-e", rdv["runtime_dir"]], check=False).returncode == 1
    assert tcx(node, ["test", "-e", rdv["socket"]], check=False).returncode == 1
    assert tcx("login", ["test", "-e", f"{session_dir(first['id'])}/token"], check=False).returncode == 1
    assert not session_dir(first["id"]).exists()

    proc = tool("up", "testcluster", "--transport", "tcp", "--detach", "--no-browser", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "older than 2.18" not in proc.stderr  # promise 11: the real, current server is not flagged
    second = json.loads(proc.stdout)
    new_token = second["url"].split("token=")[1]
    assert new_token != old_token and len(new_token) >= 43
    port = int(second["local_port"])
    assert request(port, "/api/contents", headers=auth(new_token)).status == 200
    assert request(port, "/api/contents", headers=auth(old_token)).status == 403
    assert request(port, f"/lab?token={old_token}").status in (302, 403)


# -- promise 10: hostile input ------------------------------------------------------------------------------


@pytest.mark.parametrize(("where", "key", "value"), [
    ("flag", "partition", "debug; touch /tmp/{m}"),
    ("profile", "partition", "debug; touch /tmp/{m}"),
    ("profile", "account", "$(touch /tmp/{m})"),
    ("flag", "account", "`touch /tmp/{m}`"),
    ("flag", "time", "1h; touch /tmp/{m}"),
    ("flag", "mem", "4G$(touch /tmp/{m})"),
    ("flag", "gpus", "1 && touch /tmp/{m}"),
    ("profile", "host", "-oProxyCommand=touch /tmp/{m}"),
    ("profile", "ssh_options", ["-oPermitLocalCommand=yes", "-oLocalCommand=touch /tmp/{m}"]),
])
def test_hostile_values_are_refused_before_any_connection(tool: Hpclab, where: str, key: str, value: Any) -> None:
    mark = "owned-" + secrets.token_hex(4)
    value = [v.format(m=mark) for v in value] if isinstance(value, list) else value.format(m=mark)
    args: list[str] = []
    if where == "flag":
        args = [f"--{key}", value]
    else:
        tool.write_config(relaxed_profile(tool.home.parent.parent, **{key: value}))
    before = accepted("login", user())
    proc = tool("up", "testcluster", "--no-browser", *args)
    assert proc.returncode == 2, proc.stderr
    assert f"'{key}'" in proc.stderr or f"--{key}" in proc.stderr, proc.stderr
    assert accepted("login", user()) == before
    assert markers(mark) == []


def test_hostile_notebook_dir_env_and_directive_are_data(tool: Hpclab) -> None:
    mark = "owned-" + secrets.token_hex(4)
    odd = f"nb dir 'single' \"double\" $(touch /tmp/{mark}) `touch /tmp/{mark}`;\nsecond line"
    top = f"sec-nb-{secrets.token_hex(4)}"
    where = Path("/home") / user() / top / odd
    inside = f"inside-{mark}.txt"
    value = f"$(touch /tmp/{mark}) `touch /tmp/{mark}` ; touch /tmp/{mark}"
    # sbatch splits a directive at spaces (and refuses the rest): ${IFS} is a space only to a shell
    directive = f"--comment=$(touch${{IFS}}/tmp/{mark})"
    tool.write_config(relaxed_profile(tool.home.parent.parent, extra_directives=[directive]) +
                      f"env = {{ HPCLAB_TEST_VALUE = {json.dumps(value)} }}\n")
    try:
        tcx("login", as_user(user(), ["mkdir", "-p", str(where)]))
        tcx("login", as_user(user(), ["touch", str(where / inside)]))
        info = tool.json("up", "testcluster", "--transport", "socket", "--detach", "--no-browser",
                         "--notebook-dir", f"~/{top}/{odd}")
        token = info["url"].split("token=")[1]
        r = request(int(info["local_port"]), "/api/contents", headers=auth(token))
        assert r.status == 200
        assert [c["name"] for c in json.loads(r.body)["content"]] == [inside]  # the lab's root is that dir
        rdv = json.loads((session_dir(info["id"]) / "rendezvous.json").read_text())
        environ = tcx(info["node"], ["cat", f"/proc/{rdv['pid']}/environ"]).stdout.split("\0")
        assert f"HPCLAB_TEST_VALUE={value}" in environ
        assert tcx(info["node"], ["readlink", f"/proc/{rdv['pid']}/cwd"]).stdout.rstrip("\n") == str(where)
        comment = tcx("login", ["squeue", "-h", "-j", info["job_id"], "-o", "%k"]).stdout.strip()
        assert comment == directive.removeprefix("--comment=")
        assert markers(mark) == []
    finally:
        tool.cleanup()
        shutil.rmtree(Path("/home") / user() / top, ignore_errors=True)


# -- promise 11: old servers ---------------------------------------------------------------------------------

FAKE_VERSION = """import jupyter_server, jupyter_server._version
# a test double: makes this real jupyter_server report an old version string, nothing else
jupyter_server.__version__ = jupyter_server._version.__version__ = "2.17.0"
"""


def test_old_server_warning_with_patched_version_string(tool: Hpclab) -> None:
    """The version string is faked (sitecustomize on PYTHONPATH); the server itself is 2.21."""
    d = Path("/home") / user() / f"sec-fakever-{secrets.token_hex(4)}"
    try:
        tcx("login", as_user(user(), ["mkdir", "-p", str(d)]))
        tcx("login", as_user(user(), ["sh", "-c", 'cat > "$1"', "sh", str(d / "sitecustomize.py")]),
            input=FAKE_VERSION)
        tool.write_config(relaxed_profile(tool.home.parent.parent) + f"env = {{ PYTHONPATH = {json.dumps(str(d))} }}\n")
        proc = tool("up", "testcluster", "--detach", "--no-browser", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["jupyter_server"] == "2.17.0"
        assert "jupyter_server 2.17.0, older than 2.18" in proc.stderr
        assert "pip install -U 'jupyter_server>=2.18'" in proc.stderr
    finally:
        tool.cleanup()
        shutil.rmtree(d, ignore_errors=True)
