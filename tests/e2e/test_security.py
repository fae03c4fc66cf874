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
from lab import Hpclab, accepted, profile_text, run_cell, tc, tcx, wait_for

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


def gateway_ports_config(where: Path) -> Path:
    """A user's ssh config that asks for GatewayPorts, around the test cluster's own config."""
    cfg = where / "ssh_config"
    cfg.write_text(f"GatewayPorts yes\nInclude {tc('TC_SSH_CONFIG')}\n")
    return cfg


def start_session(tmp: Path, transport: str, umask_line: str) -> Session:
    """Up on NODE with the user's login files setting `umask_line` and this process at umask 022;
    start a kernel; record the modes of everything hpclab made; restore the login files."""
    cfg = gateway_ports_config(tmp)
    tool = laptop(tmp / "laptop", profile_text(ssh_options=["-F", str(cfg)], extra_directives=[f"--nodelist={NODE}"]))
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
    """A fresh laptop for one test; stops only its own sessions."""
    t = laptop(tmp_path / "laptop", profile_text())
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


# -- promises 1-3: the token on command lines, in the scheduler, in logs ----------------------------------------


SCAN = r"""
import json, os
out = []
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as fh:
            cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        try:
            with open("/proc/%s/environ" % pid, "rb") as fh:
                env = fh.read().replace(b"\0", b"\n").decode(errors="replace")
        except OSError:
            env = ""
    except OSError:
        continue
    out.append([pid, cmd, env])
print(json.dumps(out))
"""


class ProcScanner(threading.Thread):
    """Reads every process's cmdline and environ on the laptop and each cluster host, over and over."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.halt = threading.Event()
        self.rounds = 0
        self.cmdlines: dict[str, set[str]] = {}
        self.environs: dict[str, set[tuple[str, str]]] = {}  # (cmdline, environ)
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.halt.is_set():
            for host in ("laptop", *HOSTS):
                argv = ["python3", "-c", SCAN]
                try:
                    if host == "laptop":
                        out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout
                    else:
                        out = tcx(host, argv, timeout=30).stdout
                    for _pid, cmd, env in json.loads(out):
                        self.cmdlines.setdefault(host, set()).add(cmd)
                        self.environs.setdefault(host, set()).add((cmd, env))
                except Exception as exc:  # reported by the test through self.errors
                    self.errors.append(f"{host}: {exc!r}")
            self.rounds += 1

    def stop(self) -> None:
        self.halt.set()
        self.join(60)

    def with_secret(self, secret: str) -> list[str]:
        return [f"{h}: {c[:200]}" for h, cs in self.cmdlines.items() for c in cs if secret in c]

    def environ_with_secret(self, secret: str) -> list[str]:
        return [f"{h}: {c[:120]}" for h, es in self.environs.items() for c, e in es if secret in e]


BROWSER = """#!/bin/sh
# a browser that remembers how it was started, and stays a moment so that scans see it (the test
# checks that they did: the sleep is the window under test, not a wait for a condition)
printf '%s\\n' "$@" >> "{log}"
sleep 1.5
"""


def without_url(text: str, port: int, token: str) -> str:
    return text.replace(f"http://127.0.0.1:{port}/lab?token={token}", "<URL>")


def test_token_stays_off_command_lines_out_of_the_scheduler_and_out_of_logs(tool: Hpclab, tmp_path: Path) -> None:
    """Promises 1-3 over one whole session: up (opening a browser) with --debug, a cell run in
    Chromium, failed requests, logs, then Ctrl-C."""
    browser_log = tmp_path / "browser.log"
    browser = tmp_path / "browser"
    browser.write_text(BROWSER.format(log=browser_log))
    browser.chmod(0o755)
    tool.env_extra["BROWSER"] = str(browser)
    scan = ProcScanner()
    scan.start()
    run = None
    # control: a marker on a command line on every host, which the scan must see
    marker = "hpclab-scan-control-" + secrets.token_hex(8)
    controls = [subprocess.Popen(["sh", "-c", "sleep 3", marker])]
    controls += [subprocess.Popen([str(Path(tc("HPCLAB_TC_DIR")) / "bin" / "tcx"), h, "sh", "-c", "sleep 3", marker])
                 for h in HOSTS]
    try:
        wait_for(lambda: scan.rounds >= 2, 30, what="two scan rounds")
        for c in controls:
            c.wait(30)
        assert {h.split(":")[0] for h in scan.with_secret(marker)} == {"laptop", *HOSTS}
        run = tool.start("--debug", "up", "testcluster", "--transport", "socket")
        url, port, token = run.wait_url()
        wait_for(browser_log.exists, 30, what="the browser to be started")
        rec = next(iter((tool.home / "state" / "sessions").glob("*.json")))
        sid, job = rec.stem, json.loads(rec.read_text())["job_id"]

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
        assert run.wait(120) == 130
        # A last whole scan round after the stop (the round under way may have begun before it).
        stopped_at = scan.rounds
        wait_for(lambda: scan.rounds >= stopped_at + 2, 60, what="a scan round after the stop")
    finally:
        scan.stop()
        if run is not None and run.proc.poll() is None:
            run.signal(signal.SIGTERM)
    fields = tcx("login", ["sacct", "--helpformat"]).stdout.split()
    outputs["sacct"] = tcx("login", ["sacct", "-j", job, "-P", "-o", ",".join(fields)]).stdout
    assert sid in outputs["sacct"]

    assert scan.errors == [] and scan.rounds >= 3, (scan.rounds, scan.errors[:3])
    assert scan.with_secret(token) == []
    browser_argv = browser_log.read_text()
    assert token not in browser_argv, f"the browser was started with the token: {browser_argv}"
    assert any(str(browser) in c for c in scan.cmdlines.get("laptop", ())), "no scan saw the browser running"
    for what, text in outputs.items():
        assert token not in text, what
    assert token not in without_url(run.stdout(), port, token) and url in run.stdout()
    assert token not in run.stderr()
    for path in (tool.home / "state").rglob("*"):
        if path.is_file():
            assert token not in path.read_text(errors="replace"), path
    # not a promise: where the token is in a process environment (readable by its owner and root)
    print("environ holding the token:", scan.environ_with_secret(token) or "none")


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
    tool.write_config(profile_text(ssh_options=["-F", tc("TC_SSH_CONFIG"),
                                                "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}"]))
    before_dirs = set(os.listdir(f"/home/{user()}/.hpclab/sessions"))
    before = accepted("login", user())
    proc = tool("up", "testcluster", "--no-browser")
    assert proc.returncode == 3, proc.stderr
    assert "host key of tc-login has changed" in proc.stderr and "stopped before sending anything" in proc.stderr
    assert accepted("login", user()) == before
    assert set(os.listdir(f"/home/{user()}/.hpclab/sessions")) <= before_dirs
    assert not list((tool.home / "state" / "sessions").glob("*.json"))


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
        tool.write_config(profile_text(**{key: value}))
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
    tool.write_config(profile_text(extra_directives=[directive]) +
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
        tool.write_config(profile_text() + f"env = {{ PYTHONPATH = {json.dumps(str(d))} }}\n")
        proc = tool("up", "testcluster", "--detach", "--no-browser", "--json")
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["jupyter_server"] == "2.17.0"
        assert "jupyter_server 2.17.0, older than 2.18" in proc.stderr
        assert "pip install -U 'jupyter_server>=2.18'" in proc.stderr
    finally:
        tool.cleanup()
        shutil.rmtree(d, ignore_errors=True)
