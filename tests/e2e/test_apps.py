"""The other apps on the real test cluster: Jupyter Notebook 7, real code-server 4.100 (Lmod module
code-server), and the dashboards JupyterLab users reach through jupyter-server-proxy.

code-server's attacker is the second user (hpcuser2) on the node, and anyone who reaches its
forward without the password; the password must be in no argv, log or job file."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import shlex
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lab import Hpclab, hpclab, profile_text, session_dirs, sge_jobs, tc, tcx, user_jobs, wait_for

__all__ = ["hpclab"]

NODES = ("node1", "node2")
# The job's bash is no login shell: Lmod's `module` comes from its profile script.
CODE_SERVER_SETUP = [". /etc/profile.d/lmod.sh", "module load code-server"]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]


def ask(port: int, method: str, path: str, headers: dict[str, str] | None = None,
         body: str | None = None) -> tuple[int, dict[str, str], str]:
    """One request through the forward, no redirect followed: (status, headers lower-cased, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, text
    finally:
        conn.close()


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ.get("TC_CHROMIUM", "/usr/bin/chromium"),
                                    headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# -- Jupyter Notebook 7 -------------------------------------------------------------------------


def test_notebook_app_opens_its_tree_page_and_keeps_the_token(hpclab: Hpclab) -> None:
    info = hpclab.json("up", "testcluster", "--app", "notebook", "--detach", "--no-browser")
    port = info["local_port"]
    assert info["app"] == "notebook" and info["node"] in NODES and info["state"] == "running"
    assert info["url"].startswith(f"http://127.0.0.1:{port}/tree?token=")
    assert info["app_version"] == info["jupyter_server"] and info["password"] is None
    # The job ran Notebook 7 (`jupyter notebook`), not the lab: its process on the node says so.
    ps = tcx(info["node"], ["ps", "-u", tc("TC_USER"), "-o", "args="]).stdout
    assert "jupyter-notebook" in ps and "jupyter-lab" not in ps, ps
    # Without the token: the login page, not the tree.
    status, headers, _ = ask(port, "GET", "/tree")
    assert status == 302 and "/login" in headers["location"]
    with chromium() as browser:
        page = browser.new_page()
        page.set_default_timeout(60000)
        page.goto(info["url"])
        page.locator(".jp-DirListing-content").wait_for()  # the file browser of Notebook's tree page
        assert urllib.parse.urlparse(page.url).path == "/tree"
        assert page.locator("#jp-NotebookLogo, .jp-NotebookKernelLogo, #jp-top-panel").count() > 0
        assert page.title() == "Home"
    (row,) = hpclab.json("list")
    assert row["app"] == "notebook" and row["tunnel"] == "up"


def test_notebook_app_holds_to_the_token_whatever_the_users_config_says(hpclab: Hpclab) -> None:
    """hpclab's private Jupyter Server config holds Notebook 7 as it holds the lab: the user's
    files that open a stock server (no token, any origin) open nothing."""
    from test_jupyter_config import OPEN_LAB_PY, OPEN_PY, user_jupyter_files

    evil = "http://evil.example"
    with user_jupyter_files({"jupyter_server_config.py": OPEN_PY, "jupyter_notebook_config.py": OPEN_LAB_PY}):
        info = hpclab.json("up", "testcluster", "--app", "notebook", "--detach", "--no-browser")
        port, token = info["local_port"], info["url"].split("token=")[1]
        assert ask(port, "GET", "/api/contents", {"Authorization": f"token {token}"})[0] == 200  # control
        for path, headers in (("/api/contents", {}), ("/api/contents?token=", {}),
                              ("/api/contents", {"Authorization": "token "})):
            assert ask(port, "GET", path, headers)[0] == 403, (path, headers)
        status, headers, _ = ask(port, "GET", "/tree")
        assert status == 302 and headers["location"].startswith("/login")
        _, headers, _ = ask(port, "GET", "/api/contents", {"Authorization": f"token {token}", "Origin": evil})
        assert "access-control-allow-origin" not in headers
        hpclab("stop", info["id"])


# -- code-server ------------------------------------------------------------------------------


def code_server_profile(hpclab: Hpclab, **extra: Any) -> None:
    hpclab.write_config(profile_text(**{"app": "code-server", "setup": CODE_SERVER_SETUP, **extra}))


@contextlib.contextmanager
def users_code_server_dirs() -> Iterator[None]:
    """code-server's user data dir is the user's usual one (~/.local/share/code-server): the test
    removes it afterwards if it made it. ~/.config/code-server/config.yaml must never appear."""
    home = Path("/home") / tc("TC_USER")
    data = home / ".local" / "share" / "code-server"
    config = home / ".config" / "code-server"
    existed = data.exists()
    assert not config.exists(), f"{config} exists before the test: remove it"
    try:
        yield
        assert not config.exists(), "code-server made its default config file (with a password of its own)"
    finally:
        if not existed:
            tcx("login", ["rm", "-rf", str(data)], check=False)
        tcx("login", ["rm", "-rf", str(config)], check=False)


def rendezvous(session_id: str) -> dict[str, Any]:
    path = Path("/home") / tc("TC_USER") / ".hpclab" / "sessions" / session_id / "rendezvous.json"
    return dict(json.loads(path.read_text()))


def test_code_server_is_private_and_holds_to_its_password(hpclab: Hpclab) -> None:
    code_server_profile(hpclab)
    with users_code_server_dirs():
        up = hpclab("up", "testcluster", "--detach", "--no-browser", "--json", "--debug")
        assert up.returncode == 0, up.stderr
        info = json.loads(up.stdout)
        port, password, node = info["local_port"], info["password"], info["node"]
        assert password not in up.stderr and "ssh" in up.stderr  # every step logged, the password masked
        assert info["app"] == "code-server" and info["transport"] == "socket" and node in NODES
        assert info["app_version"] == "4.100.3" and info["jupyter_server"] is None
        assert info["url"] == f"http://127.0.0.1:{port}/"
        assert isinstance(password, str) and len(password) >= 40
        assert hpclab.json("url", info["id"]) == {"id": info["id"], "url": info["url"], "token": None,
                                                  "password": password, "local_port": port}

        # The socket: 0600 in the job's 0700 private dir; the second user cannot connect to it.
        sock = rendezvous(info["id"])["socket"]
        assert sock.endswith("/code-server.sock")
        assert tcx(node, ["stat", "-c", "%a %U", sock]).stdout.split() == ["600", tc("TC_USER")]
        assert tcx(node, ["stat", "-c", "%a", str(Path(sock).parent)]).stdout.strip() == "700"
        probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
                 "try:\n s.connect(sys.argv[1])\nexcept OSError as e:\n print('refused', e.errno)\n"
                 "else:\n print('connected')")
        attacker = tcx(node, ["python3", "-c", probe, sock], user=tc("TC_USER2")).stdout.strip()
        assert attacker.startswith("refused"), attacker
        # (as a control: the same program as the user connects)
        assert tcx(node, ["python3", "-c", probe, sock], user=tc("TC_USER")).stdout.strip() == "connected"

        # Without the password: / sends to the login page; a wrong one is refused; the right one logs in.
        status, headers, _ = ask(port, "GET", "/")
        assert status == 302 and headers["location"].endswith("login"), (status, headers)
        status, headers, body = ask(port, "GET", "/login")
        assert status == 200 and 'name="password"' in body
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        status, headers, body = ask(port, "POST", "/login", form,
                                     urllib.parse.urlencode({"password": password[:-1] + "x"}))
        assert status == 200 and "set-cookie" not in headers and "Incorrect password" in body
        status, headers, _ = ask(port, "POST", "/login", form, urllib.parse.urlencode({"password": password}))
        assert status == 302 and headers["set-cookie"].startswith("code-server-session=")
        cookie = headers["set-cookie"].split(";")[0]
        status, _, body = ask(port, "GET", "/?folder=" + urllib.parse.quote(f"/home/{tc('TC_USER')}"),
                               {"Cookie": cookie})
        assert status == 200 and "vscode-workbench-web-configuration" in body

        # The password in no argv (every process of the node), log or job file.
        argv = tcx(node, ["ps", "-eo", "args="]).stdout
        assert "code-server" in argv and password not in argv
        sdir = Path("/home") / tc("TC_USER") / ".hpclab" / "sessions" / info["id"]
        for f in sdir.iterdir():
            if f.name != "token":
                assert password not in f.read_text(errors="replace"), f
        assert (sdir / "token").stat().st_mode & 0o777 == 0o600
        config = tcx(node, ["cat", f"{Path(sock).parent}/code-server.yaml"]).stdout
        assert password not in config and "hashed-password" in config
        assert tcx(node, ["stat", "-c", "%a", f"{Path(sock).parent}/code-server.yaml"]).stdout.strip() == "600"
        hpclab("stop", info["id"])


def test_code_server_workbench_opens_logged_in_and_its_terminal_runs_on_the_node(hpclab: Hpclab) -> None:
    code_server_profile(hpclab)
    marker = Path("/home") / tc("TC_USER") / f"tc-e2e-code-server-{secrets.token_hex(4)}"
    with users_code_server_dirs():
        # BROWSER=true: hpclab writes its private login page and "opens" it; Chromium opens that page.
        info = hpclab.json("up", "testcluster", "--detach")
        page_file = hpclab.home / "state" / "open" / f"{info['id']}.html"
        assert page_file.stat().st_mode & 0o777 == 0o600
        assert info["password"] in page_file.read_text()
        try:
            with chromium() as browser:
                page = browser.new_page()
                page.set_default_timeout(90000)
                page.goto(page_file.as_uri())
                page.locator(".monaco-workbench").wait_for()
                assert urllib.parse.urlparse(page.url).netloc == f"127.0.0.1:{info['local_port']}"
                # A folder of the user's own: trust it if VS Code asks.
                with contextlib.suppress(Exception):
                    page.get_by_role("button", name="Yes, I trust the authors").click(timeout=5000)
                page.keyboard.press("Control+Shift+Backquote")
                page.locator(".xterm").first.wait_for()
                page.locator(".xterm").first.click()
                time.sleep(2)  # the shell's prompt
                page.keyboard.type(f"hostname > {shlex.quote(str(marker))}\n")
                wait_for(lambda: marker.exists() and marker.read_text().strip(), 60,
                         what="the terminal's hostname file")
                assert marker.read_text().strip() == info["node"]
        finally:
            tcx("login", ["rm", "-f", str(marker)], check=False)
        hpclab("stop", info["id"])


def test_up_stops_a_code_server_that_a_wrapper_opened(hpclab: Hpclab) -> None:
    """A `code-server` earlier on PATH that adds --auth none (a site wrapper, a setup line's):
    hpclab's own config cannot undo a command-line option, so its check before "ready" must
    see / served without the password, stop the job and leave nothing."""
    user = tc("TC_USER")
    wrap = Path("/home") / user / f"tc-e2e-wrap-{secrets.token_hex(4)}"
    try:
        wrap.mkdir()
        (wrap / "code-server").write_text('#!/bin/sh\nexec /opt/hpclab-code-server/bin/code-server "$@" --auth none\n')
        (wrap / "code-server").chmod(0o755)
        tcx("login", ["chown", "-R", f"{user}:{user}", str(wrap)])
        code_server_profile(hpclab, setup=[*CODE_SERVER_SETUP, f"export PATH={shlex.quote(str(wrap))}:$PATH"])
        with users_code_server_dirs():
            proc = hpclab("up", "testcluster", "--detach", "--no-browser")
            assert proc.returncode == 2, proc.stderr
            assert "code-server does not hold to its password, so hpclab stopped it" in proc.stderr
            assert "request for / without the password got HTTP 302, not the redirect to the login" in proc.stderr
            assert user_jobs(user) == [] and session_dirs(user) == []
    finally:
        tcx("login", ["rm", "-rf", str(wrap)], check=False)


def test_code_server_missing_is_a_job_error(hpclab: Hpclab) -> None:
    hpclab.write_config(profile_text(app="code-server"))  # the Jupyter venv only: no code-server on PATH
    proc = hpclab("up", "testcluster", "--detach", "--no-browser")
    assert proc.returncode == 5, proc.stderr
    assert "'code-server' is not on PATH; give the profile modules" in proc.stderr


# What a second user on the login node sends to code-server's port: (status, set-cookie?, body).
ASK_AS_USER2 = """import http.client, json, sys, urllib.parse
addr, port, path, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
conn = http.client.HTTPConnection(addr, port, timeout=60)
if password:
    conn.request("POST", path, body=urllib.parse.urlencode({"password": password}),
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
else:
    conn.request("GET", path)
r = conn.getresponse()
print(json.dumps([r.status, r.getheader("Location"), r.getheader("Set-Cookie"), r.read().decode(errors="replace")]))
"""


def listeners(node: str, port: int) -> list[str]:
    """Local addresses of the sockets listening on `port` on `node` (kernel tables, hex as printed)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in tcx(node, ["cat", table]).stdout.splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[1].endswith(f":{port:04X}"):
                found.append(f[1])
    return found


def test_code_server_over_tcp_listens_on_the_nodes_address_behind_its_password(hpclab: Hpclab) -> None:
    """transport tcp: real code-server on the node's own address at the port the job chose (not
    0.0.0.0), reached through the login connection, the browser page logs in; a second user on
    the login node who reaches that port gets the login page, and a wrong password is refused;
    stop leaves nothing."""
    code_server_profile(hpclab)
    user = tc("TC_USER")
    with users_code_server_dirs():
        # BROWSER=true: hpclab writes its private login page and "opens" it; Chromium opens that page.
        info = hpclab.json("up", "testcluster", "--transport", "tcp", "--detach")
        port, password, node = info["local_port"], info["password"], info["node"]
        assert info["app"] == "code-server" and info["transport"] == "tcp" and info["state"] == "running"
        assert info["app_version"] == "4.100.3" and node in NODES
        rdv = rendezvous(info["id"])
        addr, node_port = rdv["address"], rdv["port"]
        assert rdv["transport"] == "tcp" and rdv["socket"] == "" and 0 < node_port < 65536
        assert addr not in ("", "0.0.0.0") and not addr.startswith("127.")
        hexaddr = "".join(f"{int(o):02X}" for o in reversed(addr.split(".")))
        assert listeners(node, node_port) == [f"{hexaddr}:{node_port:04X}"]  # its address alone, no wildcard
        argv = tcx(node, ["ps", "-ww", "-u", user, "-o", "args="]).stdout
        assert f"--bind-addr {addr}:{node_port}" in argv and password not in argv

        # Through the tunnel: the login page without the password, in with it.
        status, headers, _ = ask(port, "GET", "/")
        assert status == 302 and headers["location"].endswith("login"), (status, headers)
        status, headers, _ = ask(port, "POST", "/login", {"Content-Type": "application/x-www-form-urlencoded"},
                                 urllib.parse.urlencode({"password": password}))
        assert status == 302 and headers["set-cookie"].startswith("code-server-session=")

        # The browser hpclab opens lands in the workbench, logged in, through the tunnel.
        with chromium() as browser:
            page = browser.new_page()
            page.set_default_timeout(90000)
            page.goto((hpclab.home / "state" / "open" / f"{info['id']}.html").as_uri())
            page.locator(".monaco-workbench").wait_for()
            assert urllib.parse.urlparse(page.url).netloc == f"127.0.0.1:{port}"

        # The second user, on the login node, straight to the node's port.
        def as_user2(path: str, pw: str = "") -> list[Any]:
            out = tcx("login", ["python3", "-c", ASK_AS_USER2, addr, str(node_port), path, pw], user=tc("TC_USER2"))
            return list(json.loads(out.stdout))

        status, location, cookie, _ = as_user2("/")
        assert status == 302 and location.endswith("login") and cookie is None
        status, _, cookie, body = as_user2("/login")
        assert status == 200 and 'name="password"' in body and cookie is None
        status, _, cookie, body = as_user2("/login", password[:-1] + "x")
        assert status == 200 and cookie is None and "Incorrect password" in body

        hpclab("stop", info["id"])
        assert user_jobs(user) == [] and session_dirs(user) == []
        assert listeners(node, node_port) == []


def test_code_server_auto_falls_back_to_tcp_where_the_node_refuses_ssh(hpclab: Hpclab) -> None:
    """A Grid Engine job gives no SLURM job on the node, so pam_slurm_adopt refuses SSH there:
    auto falls back to tcp for code-server as for Jupyter, says so, and the session works."""
    if tc("TC_SGE") != "1":
        raise AssertionError("Grid Engine is off in this test cluster (HPCLAB_TC_SGE=1 scripts/testcluster up)")
    user = tc("TC_USER")
    hpclab.write_config(profile_text("testcluster-sge", app="code-server", transport="auto",
                                     setup=CODE_SERVER_SETUP))
    with users_code_server_dirs():
        up = hpclab("up", "testcluster-sge", "--detach", "--no-browser", "--json")
        assert up.returncode == 0, up.stderr
        assert "transport: tcp (the node refuses SSH:" in up.stderr, up.stderr
        assert "the password keeps them out" in up.stderr
        info = json.loads(up.stdout)
        assert (info["app"], info["transport"], info["scheduler"]) == ("code-server", "tcp", "sge")
        rdv = rendezvous(info["id"])
        assert rdv["address"] not in ("", "0.0.0.0") and rdv["port"] > 0
        port, password = info["local_port"], info["password"]
        status, headers, _ = ask(port, "GET", "/")
        assert status == 302 and headers["location"].endswith("login"), (status, headers)
        status, headers, _ = ask(port, "POST", "/login", {"Content-Type": "application/x-www-form-urlencoded"},
                                 urllib.parse.urlencode({"password": password}))
        assert status == 302 and headers["set-cookie"].startswith("code-server-session=")
        hpclab("stop", info["id"])
        assert info["job_id"] not in sge_jobs(user) and session_dirs(user) == []


# -- jupyter-server-proxy ----------------------------------------------------------------------


def test_lab_serves_a_dashboard_of_the_job_through_its_proxy_with_the_token_only(hpclab: Hpclab) -> None:
    """A web server the job started on the node's loopback (as a Dask or TensorBoard dashboard)
    is served at /proxy/PORT/ of the lab, behind the lab's token."""
    port = 20000 + secrets.randbelow(20000)
    mark = f"dashboard-{secrets.token_hex(8)}"
    serve = (f'hpclab_dash=$(mktemp -d) && echo {mark} > "$hpclab_dash/index.html" && '
             f'( cd "$hpclab_dash" && exec python3 -m http.server {port} --bind 127.0.0.1 ) >/dev/null 2>&1 &')
    hpclab.write_config(profile_text(setup=["source /opt/hpclab-jupyter/bin/activate", serve]))
    info = hpclab.json("up", "testcluster", "--detach", "--no-browser")
    local, token = info["local_port"], info["url"].split("token=")[1]
    status, _, body = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(
        ask(local, "GET", f"/proxy/{port}/", {"Authorization": f"token {token}"})), 30, what="the dashboard")
    assert mark in body
    for headers in ({}, {"Authorization": "token not-the-token"}):
        status, resp_headers, body = ask(local, "GET", f"/proxy/{port}/", headers)
        assert mark not in body
        assert status == 403 or (status == 302 and "/login" in resp_headers["location"]), (status, resp_headers)
