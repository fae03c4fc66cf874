"""Promises 2 and 6 of SECURITY.md, attacked on the test cluster.

2. The user's Jupyter config cannot weaken the lab. hpcuser's ~/.jupyter holds config files that
   open a stock JupyterLab (an empty token, a known password, allow_origin '*', checks off,
   tornado_settings that override the server's own), and a setup line exports JUPYTER_TOKEN,
   JUPYTER_NO_CONFIG, a JUPYTER_CONFIG_PATH with more of the same and a runtime dir elsewhere.
   The lab hpclab starts still wants its token and nothing else. A control starts a stock
   JupyterLab (the cluster's own venv) on the laptop with the same files and shows that they
   do open it. A config hpclab cannot neutralize (code that patches jupyter_server) makes
   `hpclab up` fail with a message that says so, and leaves no job behind.
6. No foreign origin, on any path: no answer carries Access-Control-Allow-Origin for a web page
   of another origin, on every kind of URL the server has, with the token in a header or in
   the query, for GET and for a preflight; foreign-origin websockets are refused.

Every test restores hpcuser's files in a `finally`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import Hpclab, profile_text, session_dirs, tc, tcx, user_jobs, wait_for
from test_security import Response, auth, cookie_header, laptop, login, request, user, websocket_status

EVIL = "http://evil.example"
PASSWORD = "known-password-" + secrets.token_hex(4)


def venv() -> Path:
    return Path(tc("TC_JUPYTER_VENV"))


def hashed(password: str) -> str:
    out = subprocess.run([str(venv() / "bin" / "python"), "-c",
                          "import sys; from jupyter_server.auth import passwd; print(passwd(sys.argv[1]))", password],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


# -- what the user's files say ---------------------------------------------------------------------------------

# Opens a stock lab to everyone and to every web page: no token, any origin, checks off; also
# in the forms that win over a plain section (a subclass's section, tornado_settings, which
# override the server's own settings) and through the identity provider itself.
OPEN_PY = """\
from jupyter_server.auth.identity import PasswordIdentityProvider
c.IdentityProvider.token = ""
c.PasswordIdentityProvider.token = ""
c.HpclabIdentityProvider.token = ""
c.ServerApp.token = ""
c.ServerApp.allow_origin = "*"
c.ServerApp.allow_origin_pat = ".*"
c.ServerApp.allow_credentials = True
c.ServerApp.disable_check_xsrf = True
c.ServerApp.allow_remote_access = True
c.ServerApp.local_hostnames = ["localhost", "evil.example"]
c.ServerApp.authenticate_prometheus = False
c.ServerApp.identity_provider_class = PasswordIdentityProvider
c.ServerApp.tornado_settings = {
    "headers": {"Access-Control-Allow-Origin": "*", "access-control-allow-credentials": "true"},
    "allow_origin": "*", "allow_origin_pat": ".*", "allow_credentials": True, "disable_check_xsrf": True,
    "xsrf_cookies": False, "allow_remote_access": True, "local_hostnames": ["localhost", "evil.example"],
    "authenticate_prometheus": False, "identity_provider": PasswordIdentityProvider(token=""),
}
"""
OPEN_JSON = {"IdentityProvider": {"token": ""}, "HpclabIdentityProvider": {"token": ""},
             "ServerApp": {"allow_origin": "*", "disable_check_xsrf": True}}
OPEN_LAB_PY = 'c.ServerApp.allow_origin = "*"\nc.IdentityProvider.token = ""\n'


def password_json(hashed_password: str) -> dict[str, Any]:
    """A known password that logs in to a stock lab (and may be changed from its login page)."""
    section = {"hashed_password": hashed_password, "password_required": True, "allow_password_change": True}
    return {"PasswordIdentityProvider": section, "HpclabIdentityProvider": section,
            "IdentityProvider": {"token": ""}, "ServerApp": {"password": hashed_password}}


# Code in a config file can do anything: this one makes every request someone's. hpclab's
# config cannot undo it; the check before "ready" must notice.
PATCH_PY = """\
from jupyter_server.auth.identity import IdentityProvider, User
IdentityProvider.get_user = lambda self, handler: User("anyone")
"""


def home() -> Path:
    return Path("/home") / user()


def give(path: Path) -> None:
    pw = pwd.getpwnam(user())
    os.chown(path, pw.pw_uid, pw.pw_gid)


@contextlib.contextmanager
def user_jupyter_files(files: dict[str, str]) -> Iterator[None]:
    """Put `files` (name -> text) into hpcuser's ~/.jupyter; restore what was there."""
    d = home() / ".jupyter"
    made_dir = not d.exists()
    if made_dir:
        d.mkdir(mode=0o700)
        give(d)
    saved = {name: (d / name).read_bytes() if (d / name).exists() else None for name in files}
    try:
        for name, text in files.items():
            (d / name).write_text(text)
            give(d / name)
        yield
    finally:
        for name, data in saved.items():
            if data is None:
                (d / name).unlink(missing_ok=True)
            else:
                (d / name).write_bytes(data)
        if made_dir:
            shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def extra_config_dir(files: dict[str, str]) -> Iterator[Path]:
    """A config directory of hpcuser's own, for a setup line's JUPYTER_CONFIG_PATH."""
    d = home() / f"tc-e2e-jcfg-{secrets.token_hex(4)}"
    d.mkdir(mode=0o700)
    give(d)
    try:
        for name, text in files.items():
            (d / name).write_text(text)
            give(d / name)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- the control: the same files open a stock JupyterLab ----------------------------------------------------------


@dataclass
class StockLab:
    port: int
    token: str


@contextlib.contextmanager
def stock_lab(tmp: Path, files: dict[str, str]) -> Iterator[StockLab]:
    """A plain `jupyter lab` of the cluster's venv on the laptop, with `files` as its user
    config and a token of its own in JUPYTER_TOKEN (what the files do to a lab that has one)."""
    config, runtime = tmp / "config", tmp / "runtime"
    for d in (config, runtime):
        d.mkdir(parents=True, mode=0o700)
    for name, text in files.items():
        (config / name).write_text(text)
    token = secrets.token_urlsafe(32)
    env = {"PATH": f"{venv() / 'bin'}:/usr/bin:/bin", "HOME": str(tmp), "JUPYTER_CONFIG_DIR": str(config),
           "JUPYTER_RUNTIME_DIR": str(runtime), "JUPYTER_DATA_DIR": str(tmp / "data"), "JUPYTER_TOKEN": token}
    log = (tmp / "stock.log").open("wb")
    proc = subprocess.Popen([str(venv() / "bin" / "jupyter"), "lab", "--no-browser", "--allow-root",
                             "--ServerApp.port=0", "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={tmp}"],
                            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=tmp)
    try:
        def info() -> dict[str, Any] | None:
            assert proc.poll() is None, (tmp / "stock.log").read_text()
            found = [p for p in runtime.glob("jpserver-*.json") if p.stat().st_size]
            return json.loads(found[0].read_text()) if found else None
        port = int(wait_for(info, 90, 0.2, "the stock lab's server-info file")["port"])

        def answers() -> bool:
            # Jupyter Server writes its server-info file before its event loop binds the port
            # (ServerApp._bind_http_server runs as an io_loop callback), so "refused" means "not yet".
            assert proc.poll() is None, (tmp / "stock.log").read_text()
            try:
                return request(port, "/api/status", headers=auth(token)).status in (200, 403)
            except ConnectionRefusedError:
                return False
        wait_for(answers, 30, 0.2, "the stock lab answering")
        log_text = (tmp / "stock.log").read_text()
        assert "Exception while loading config file" not in log_text, log_text  # every file took effect
        yield StockLab(port, token)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_the_weakening_files_do_open_a_stock_lab(tmp_path: Path) -> None:
    """The premise of the tests below: without hpclab these files open JupyterLab."""
    with stock_lab(tmp_path / "open", {"jupyter_server_config.py": OPEN_PY,
                                       "jupyter_server_config.json": json.dumps(OPEN_JSON),
                                       "jupyter_lab_config.py": OPEN_LAB_PY}) as lab:
        assert request(lab.port, "/api/contents").status == 200  # no token needed
        assert request(lab.port, "/metrics").status == 200
        r = request(lab.port, "/api/contents", headers={"Origin": EVIL})
        assert r.header("Access-Control-Allow-Origin") == ["*"]
        assert r.header("Access-Control-Allow-Credentials") == ["true"]
        assert request(lab.port, "/api/contents", host="evil.example").status == 200
    with stock_lab(tmp_path / "password", {"jupyter_server_config.json": json.dumps(password_json(hashed(PASSWORD)))}
                   ) as lab:
        r = login(lab.port, PASSWORD)
        assert r.status == 302
        assert request(lab.port, "/api/contents", headers={"Cookie": cookie_header(r)}).status == 200
    with stock_lab(tmp_path / "patch", {"jupyter_server_config.py": PATCH_PY}) as lab:
        assert request(lab.port, "/api/contents").status == 200


# -- hpclab's lab with these files ----------------------------------------------------------------------------


@dataclass
class Lab:
    tool: Hpclab
    info: dict[str, Any]

    @property
    def port(self) -> int:
        return int(self.info["local_port"])

    @property
    def token(self) -> str:
        return str(self.info["url"]).split("token=", 1)[1]

    @property
    def rdv(self) -> dict[str, Any]:
        return json.loads((home() / ".hpclab" / "sessions" / str(self.info["id"]) / "rendezvous.json").read_text())

    def start_kernel(self) -> str:
        r = request(self.port, "/api/kernels", method="POST", headers=auth(self.token), body='{"name": "python3"}')
        assert r.status == 201, r
        return str(json.loads(r.body)["id"])


def up(tmp: Path, setup: list[str] | None = None, transport: str = "socket") -> Lab:
    base = ["source " + str(venv() / "bin" / "activate")]
    tool = laptop(tmp / "laptop", profile_text(setup=base + (setup or [])))
    proc = tool("up", "testcluster", "--transport", transport, "--detach", "--no-browser", "--json", timeout=240)
    lab = Lab(tool, {})
    if proc.returncode != 0:
        tool.cleanup()
        raise AssertionError(f"hpclab up exited {proc.returncode}:\n{proc.stderr}")
    lab.info = json.loads(proc.stdout)
    return lab


def allowed(r: Response) -> list[str]:
    """The CORS headers an answer gives another origin."""
    return [f"{name}: {value}" for name in ("Access-Control-Allow-Origin", "Access-Control-Allow-Credentials")
            for value in r.header(name)]


def check_requires_its_token(lab: Lab, other_token: str) -> None:
    port, token = lab.port, lab.token
    assert request(port, "/api/contents", headers=auth(token)).status == 200  # control: the token works
    for path, headers in (("/api/contents", {}), ("/api/contents?token=", {}),
                          (f"/api/contents?token={other_token}", {}), ("/api/contents", auth(other_token)),
                          ("/api/contents", auth(""))):
        assert request(port, path, headers=headers).status == 403, (path, headers)
    assert request(port, "/metrics").status == 403
    lab_page = request(port, "/lab")
    assert lab_page.status == 302 and lab_page.header("Location")[0].startswith("/login")
    # a web page of another origin, with the token: nothing it may read
    for r in (request(port, "/api/contents", headers={**auth(token), "Origin": EVIL}),
              request(port, f"/api/contents?token={token}", headers={"Origin": EVIL}),
              request(port, "/api/contents", method="OPTIONS",
                      headers={"Origin": EVIL, "Access-Control-Request-Method": "GET",
                               "Access-Control-Request-Headers": "authorization"})):
        assert allowed(r) == [], r.headers
    # DNS rebinding: the Host check stays on
    for host in ("evil.example", f"evil.example:{port}"):
        assert request(port, "/api/contents", host=host, headers=auth(token)).status in (400, 403), host
    # a browser's cookie without the XSRF token cannot change anything (disable_check_xsrf is off)
    cookie = cookie_header(login(port, token))
    assert request(port, "/api/contents", headers={"Cookie": cookie}).status == 200  # control: the cookie works
    r = request(port, "/api/kernels", method="POST", body='{"name": "python3"}', headers={"Cookie": cookie})
    assert r.status == 403, r
    # websockets: the lab's own page is accepted (control), another origin is not, token or not
    kernel = lab.start_kernel()
    channels = f"/api/kernels/{kernel}/channels"
    assert websocket_status(port, channels, origin=f"http://127.0.0.1:{port}", cookie=cookie) == 101
    assert websocket_status(port, channels, origin=EVIL, cookie=cookie) in (400, 403)
    assert websocket_status(port, f"{channels}?token={token}", origin=EVIL) in (400, 403)


def test_user_config_and_setup_lines_cannot_open_the_lab(cluster: Any, tmp_path: Path) -> None:
    other_token = secrets.token_urlsafe(32)
    elsewhere = f"/tmp/tc-e2e-jcfg-runtime-{secrets.token_hex(4)}"
    lab = None
    with user_jupyter_files({"jupyter_server_config.py": OPEN_PY,
                             "jupyter_server_config.json": json.dumps(OPEN_JSON),
                             "jupyter_lab_config.py": OPEN_LAB_PY}), \
            extra_config_dir({"jupyter_server_config.py": OPEN_PY}) as extra:
        try:
            lab = up(tmp_path, [f"export JUPYTER_TOKEN={other_token} JUPYTER_CONFIG_PATH={extra}",
                                f"export JUPYTER_NO_CONFIG=1 JUPYTER_RUNTIME_DIR={elsewhere}",
                                "export JUPYTER_ALLOW_INSECURE_WRITES=1",
                                'jupyter() { command jupyter "$@" --IdentityProvider.token=; }'])
            assert re.fullmatch(r"/tmp/hpclab-[0-9a-f]{8}\.\w{6}", lab.rdv["runtime_dir"]), lab.rdv
            node = str(lab.info["node"])
            assert tcx(node, ["ls", "-A", elsewhere], check=False).stdout.strip() == ""  # nothing of the lab's there
            check_requires_its_token(lab, other_token)
            check_no_foreign_origin_anywhere(lab)
        finally:
            if lab is not None:
                lab.tool.cleanup()
            for node in ("node1", "node2"):
                tcx(node, ["rm", "-rf", elsewhere], check=False)


def test_a_known_password_in_the_user_config_does_not_log_in(cluster: Any, tmp_path: Path) -> None:
    lab = None
    with user_jupyter_files({"jupyter_server_config.json": json.dumps(password_json(hashed(PASSWORD)))}):
        try:
            lab = up(tmp_path)
            port = lab.port
            assert login(port, lab.token).status == 302  # control: the login form takes the token
            r = login(port, PASSWORD)
            assert r.status != 302, "the user's password logged in"
            assert request(port, "/api/contents", headers={"Cookie": cookie_header(r)}).status == 403
            # nor can the login page set a new one
            new = "new-" + secrets.token_hex(8)
            assert login(port, lab.token, new).status == 302
            after = login(port, new)
            assert after.status != 302 and request(port, "/api/contents",
                                                   headers={"Cookie": cookie_header(after)}).status == 403
            assert request(port, "/api/contents").status == 403
        finally:
            if lab is not None:
                lab.tool.cleanup()


def test_a_config_hpclab_cannot_undo_stops_up_with_a_clear_message(cluster: Any, tmp_path: Path) -> None:
    tool = laptop(tmp_path / "laptop", profile_text())
    try:
        with user_jupyter_files({"jupyter_server_config.py": PATCH_PY}):
            proc = tool("up", "testcluster", "--detach", "--no-browser", timeout=240)
        assert proc.returncode == 2, proc.stderr
        assert "the lab does not hold to its token, so hpclab stopped it" in proc.stderr
        assert "a request without the token got HTTP 200, not 403" in proc.stderr
        assert "~/.jupyter/jupyter_server_config.py" in proc.stderr and "patches jupyter_server" in proc.stderr
        assert "lab?token=" not in proc.stdout + proc.stderr
        # nothing left: no job, no session directory, no record
        wait_for(lambda: not user_jobs(user()), 60, 0.5, "hpcuser's jobs to go")
        assert session_dirs(user()) == []
        assert json.loads(tool("list", "--json").stdout) == []
    finally:
        tool.cleanup()


# -- promise 6: no foreign origin on any path ----------------------------------------------------------------------


def put(lab: Lab, path: str, model: dict[str, Any]) -> None:
    r = request(lab.port, "/api/contents/" + urllib.parse.quote(path), method="PUT", headers=auth(lab.token),
                body=json.dumps(model))
    assert r.status in (200, 201), r


def delete(lab: Lab, path: str) -> None:
    request(lab.port, "/api/contents/" + urllib.parse.quote(path), method="DELETE", headers=auth(lab.token))


NOTEBOOK = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "hello"}], "metadata": {},
            "nbformat": 4, "nbformat_minor": 5}


def check_no_foreign_origin_anywhere(lab: Lab) -> None:
    port, token = lab.port, lab.token
    name = f"tc-e2e-jcfg-{secrets.token_hex(4)}"
    txt, ipynb = f"{name}.txt", f"{name}.ipynb"
    put(lab, txt, {"type": "file", "format": "text", "content": "hello"})
    put(lab, ipynb, {"type": "notebook", "content": NOTEBOOK})
    try:
        kernel = lab.start_kernel()
        page = request(port, "/lab", headers=auth(token))
        assert page.status == 200
        static = sorted(set(re.findall(r'(/static/lab/[^"\'?]+\.js)', page.body.decode())))
        assert static, "no /static/lab/ script in the lab page"
        paths = ["/api/contents", f"/api/contents/{txt}", "/api/kernels", f"/api/kernels/{kernel}", "/api/sessions",
                 "/api/status", "/api/kernelspecs", "/api/me", "/api/terminals", "/api/config/notebook",
                 f"/files/{txt}", f"/nbconvert/html/{ipynb}", "/lab", f"/lab/tree/{ipynb}", "/lab/api/settings",
                 "/lab/api/workspaces", "/lab/api/translations", static[0], "/static/favicon.ico",
                 "/kernelspecs/python3/logo-64x64.png", "/login", "/metrics", "/lsp/status", "/api/nbconvert"]
        missing = [p for p in paths if request(port, p, headers=auth(token)).status >= 400]
        assert missing == [], f"paths this jupyter_server does not have (fix the list): {missing}"
        seen = []
        preflight = {"Origin": EVIL, "Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "authorization"}
        for path in paths:
            sep = "&" if "?" in path else "?"
            for method, target, headers in (
                ("GET", path, {**auth(token), "Origin": EVIL}),
                ("GET", f"{path}{sep}token={token}", {"Origin": EVIL}),
                ("GET", path, {**auth(token), "Origin": "null"}),
                ("OPTIONS", path, preflight),
                ("OPTIONS", f"{path}{sep}token={token}", preflight),
            ):
                r = request(port, target, method=method, headers=headers)
                if allowed(r):
                    seen.append(f"{method} {target.replace(token, '<token>')}: {allowed(r)}")
        assert seen == []
        # websockets from another origin, the token in the query
        for ws in (f"/api/kernels/{kernel}/channels", "/api/events/subscribe"):
            assert websocket_status(port, f"{ws}?token={token}", origin=EVIL) in (400, 403), ws
            assert websocket_status(port, f"{ws}?token={token}", origin=f"http://127.0.0.1:{port}") == 101, ws
    finally:
        for path in (txt, ipynb):
            delete(lab, path)


def test_no_foreign_origin_on_any_path(cluster: Any, tmp_path: Path) -> None:
    """Promise 6 on a lab with no config of the user's: every kind of URL, the token in a header
    and in the query, GET and preflight; websockets."""
    lab = up(tmp_path)
    try:
        check_no_foreign_origin_anywhere(lab)
    finally:
        lab.tool.cleanup()


# -- a cookie secret the user's config knows ----------------------------------------------------------------

KNOWN_SECRET = "hpclab-known-cookie-secret-" + secrets.token_hex(8)
SECRET_PY = f"c.ServerApp.cookie_secret = {KNOWN_SECRET.encode()!r}\n"


def forged_cookie(port: int) -> str:
    """A login cookie for 127.0.0.1:`port` signed with KNOWN_SECRET, as jupyter_server makes them
    (tornado's signed value of the user's JSON, under username-127-0-0-1-PORT)."""
    code = ("import json, sys; from tornado.web import create_signed_value; "
            "user = {'username': 'intruder', 'name': 'intruder', 'display_name': 'intruder', "
            "'initials': None, 'avatar_url': None, 'color': None}; "
            "print(create_signed_value(sys.argv[1].encode(), sys.argv[2], json.dumps(user)).decode())")
    name = f"username-127-0-0-1-{port}"
    value = subprocess.run([str(venv() / "bin" / "python"), "-c", code, KNOWN_SECRET, name], check=True,
                           capture_output=True, text=True).stdout.strip()
    return f"{name}={value}"


def test_a_cookie_secret_the_user_config_knows_forges_no_login(cluster: Any, tmp_path: Path) -> None:
    """Whoever knows a cookie secret set in ~/.jupyter (or kept in a cookie_secret_file) could sign
    a login cookie for the lab; hpclab's lab signs with a fresh secret of its own."""
    with stock_lab(tmp_path / "stock", {"jupyter_server_config.py": SECRET_PY}) as stock:
        # control: the forged cookie does log in to a stock lab with that config
        assert request(stock.port, "/api/contents", headers={"Cookie": forged_cookie(stock.port)}).status == 200
    lab = None
    with user_jupyter_files({"jupyter_server_config.py": SECRET_PY}):
        try:
            lab = up(tmp_path)
            assert request(lab.port, "/api/contents", headers={"Cookie": forged_cookie(lab.port)}).status == 403
            assert request(lab.port, "/api/contents", headers=auth(lab.token)).status == 200  # control
        finally:
            if lab is not None:
                lab.tool.cleanup()
