"""The token goes only to a forward hpclab has just proven to hold (issue: "attacked from outside").

After the forward dies (a killed master, a laptop asleep, a reboot), any program may bind its old
local port. `list`, `url` and `attach` must then send that port nothing, and move the lab to
another port, saying so. Through LocalRemote, whose forwards answer like an ssh master's: an
identical forward it holds is confirmed, one whose port another program holds is refused.
The same with a second real user and real OpenSSH is in tests/e2e/test_laptop.py."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import Local
from hpclab.errors import ConfigError, ForwardTaken, MasterGone
from hpclab.paths import Paths, private_dir
from hpclab.remote import NO_MASTER, LocalRemote, SshRemote
from hpclab.session import Attachment, Context
from hpclab.tunnel import listener_uid, probe, wait_ready


class Squatter:
    """Another program on the old port: accepts connections and keeps whatever they send."""

    def __init__(self, port: int) -> None:
        self.server = socket.create_server(("127.0.0.1", port))
        self.received = b""
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            try:
                conn.settimeout(1)
                while data := conn.recv(65536):
                    self.received += data
            except OSError:
                pass
            finally:
                conn.close()

    def close(self) -> None:
        self.server.close()


def up(local: Local) -> tuple[str, int, str]:
    doc = local.json("up", "local", "--detach", "--no-browser")
    return str(doc["id"]), int(doc["local_port"]), str(doc["url"]).split("token=")[1]


def lose_forwards(local: Local) -> None:
    """The forwards vanish while the master lives on."""
    for relay in local.remote._forwards.values():
        relay.close()
    local.remote._forwards.clear()


@pytest.mark.parametrize("master", ["alive", "dead"])
def test_list_sends_a_port_it_does_not_hold_nothing(local: Local, master: str) -> None:
    sid, port, token = up(local)
    if master == "dead":
        local.remote.close()  # the master dies, its forwards with it
    else:
        lose_forwards(local)
    squatter = Squatter(port)
    try:
        (row,) = local.json("list")
        # with a live master, its refusal to bind the port says who holds it; without one, only "down"
        assert (row["id"], row["tunnel"]) == (sid, "taken" if master == "alive" else "down")
        assert squatter.connections == 0 and token.encode() not in squatter.received
    finally:
        squatter.close()


@pytest.mark.parametrize("master", ["alive", "dead"])
@pytest.mark.parametrize("command", ["url", "attach"])
def test_url_and_attach_move_the_lab_off_a_taken_port_and_say_so(local: Local, command: str, master: str) -> None:
    sid, port, token = up(local)
    if master == "dead":
        local.remote.close()
    else:
        lose_forwards(local)
    squatter = Squatter(port)
    try:
        argv = ["url", sid] if command == "url" else ["attach", sid, "--detach", "--no-browser", "--json"]
        rc, out, err = local.hpclab(*argv)
        assert rc == 0, err
        assert f"(was 127.0.0.1:{port}; the old URL no longer works)" in err
        if master == "alive":
            assert f"127.0.0.1:{port} is held by another program" in err
        new = int(out.split("127.0.0.1:")[1].split("/")[0])
        assert new != port and probe(new, token) == 200
        assert squatter.connections == 0 and token.encode() not in squatter.received
        (row,) = local.json("list")
        assert (row["local_port"], row["tunnel"]) == (new, "up")
    finally:
        squatter.close()


def test_after_an_ended_attach_the_old_port_is_no_longer_the_lab(local: Local) -> None:
    sid, port, _ = up(local)
    local.remote.close()
    attachment_doc = local.json("attach", sid, "--detach", "--no-browser")
    ctx = Context(Paths.from_env(dict(os.environ)), lambda host, opts: local.remote)
    attachment = Attachment(ctx, sid)
    attachment.detach()  # what Ctrl-C in `hpclab attach` does
    (row,) = local.json("list")
    assert row["tunnel"] == "none" and row["local_port"] is None
    assert attachment_doc["local_port"] == port


def test_a_forward_the_master_already_holds_is_confirmed_and_a_taken_port_refused(tmp_path: Path) -> None:
    remote = LocalRemote(tmp_path)
    with pytest.raises(MasterGone):
        remote.forward("127.0.0.1:0:/nowhere")  # no connection: nothing is bound
    remote.connect()
    probe_socket = socket.create_server(("127.0.0.1", 0))
    taken = probe_socket.getsockname()[1]
    try:
        with pytest.raises(ForwardTaken):
            remote.forward(f"127.0.0.1:{taken}:/nowhere")
    finally:
        probe_socket.close()
    remote.forward(f"127.0.0.1:{taken}:/nowhere")
    remote.forward(f"127.0.0.1:{taken}:/nowhere")  # the same again: confirmed, not an error
    remote.close()


def test_the_kernel_names_the_owner_of_the_listening_end() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    try:
        assert listener_uid(client) == os.getuid()
    finally:
        client.close()
        server.close()


def test_the_kernel_table_is_read_for_this_very_connection(tmp_path: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    try:
        rows = Path("/proc/net/tcp").read_text().splitlines()
        forged = tmp_path / "tcp"  # every socket as if another user (uid 4242) owned it
        forged.write_text("\n".join([rows[0], *(" ".join(f if i != 7 else "4242" for i, f in enumerate(r.split()))
                                                for r in rows[1:])]))
        assert listener_uid(client, forged) == 4242
        (tmp_path / "empty").write_text(rows[0])
        assert listener_uid(client, tmp_path / "empty") is None
    finally:
        client.close()
        server.close()


def test_a_listener_of_another_uid_gets_a_connection_and_no_request(monkeypatch: pytest.MonkeyPatch) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = server.accept()
        conn.settimeout(2)
        try:
            while data := conn.recv(65536):
                got.append(data)
        except OSError:
            pass
        conn.close()

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setattr("hpclab.tunnel.listener_uid", lambda client: os.getuid() + 4242)
    try:
        assert probe(server.getsockname()[1], "the-token", timeout=2) is None
    finally:
        server.close()
    assert b"the-token" not in b"".join(got)


def test_commands_go_through_the_master_or_fail_without_a_login(tmp_path: Path) -> None:
    """The user's config asks for a jump host and allows prompts: with no master, a command still
    fails at once, before any connection, with hpclab's word for it."""
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host *\n    ProxyJump jump.invalid\n    BatchMode no\n")
    remote = SshRemote("login.invalid", ["-F", str(cfg)], tmp_path / "ctl")
    proc = subprocess.run([*remote.argv_for(["-T"]), "true"], capture_output=True, text=True, timeout=20,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 255 and NO_MASTER in proc.stderr
    assert "jump.invalid" not in proc.stderr  # never tried to connect anywhere


def test_a_command_without_master_logs_in_once_then_gives_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    remote = SshRemote("login.invalid", [], tmp_path / "ctl")
    logins: list[str] = []
    monkeypatch.setattr(remote, "connect", lambda: logins.append("login"))
    with pytest.raises(MasterGone):
        remote.run(["true"])
    assert logins == ["login"]


def test_a_lost_master_is_replaced_once_visibly_and_not_in_a_loop(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    told: list[str] = []
    remote = SshRemote("login.invalid", [], tmp_path / "ctl", notify=told.append)
    ran: list[list[str]] = []

    def fake_run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        ran.append(argv)
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(remote, "alive", lambda: False)
    remote.connect()  # the command's login
    assert len(ran) == 1 and told == []
    remote.connect()  # the master died: one login again, and the user is told
    assert len(ran) == 2 and told == ["the connection to login.invalid is gone; logging in again"]
    with pytest.raises(MasterGone, match="dropped again"):
        remote.connect()  # and died again a moment later: no third login
    assert len(ran) == 2


def test_ready_means_200_not_just_an_answer() -> None:
    """A server that answers, but refuses the token (403), is not a ready lab."""
    import http.server

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(403)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert probe(server.server_address[1], "t") == 403  # control: it answers
        assert wait_ready(server.server_address[1], "t", timeout=0.5) is False
    finally:
        server.shutdown()


def test_a_state_or_control_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "ctl"
    foreign.mkdir(mode=0o700)
    if os.getuid() == 0:
        os.chown(foreign, 65534, 65534)  # nobody's
    else:
        foreign = Path("/")  # root's
    with pytest.raises(ConfigError, match="belongs to another user"):
        private_dir(foreign)
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    assert private_dir(mine) == mine and (mine.stat().st_mode & 0o777) == 0o700  # control, tightened


def test_no_forward_to_a_node_port_once_its_jupyter_has_exited(local: Local) -> None:
    """The job wrote its end marker (Jupyter exited) and the scheduler still shows the job: in tcp
    mode the node's port may be anyone's by now, so attach forwards nothing and says why."""
    sid, port, _ = up(local)
    job = int((local.sessions_dir() / sid / "job.sh.pid").read_text())
    local.remote.close()  # the forward is gone: attach would have to open it again
    (local.sessions_dir() / sid / "ended.json").write_text('{"reason": "exited", "exit_code": 0}\n')
    try:
        rc, _, err = local.hpclab("attach", sid, "--detach", "--no-browser")
        assert rc == 7 and "Jupyter has exited" in err, err
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0
        assert local.json("list") == []  # forgotten, its files removed
    finally:
        # A real job ends right after its end marker; this one was only told it had: end it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job, signal.SIGKILL)
