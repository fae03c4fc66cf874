"""`forward` through LocalRemote (the node is this machine), the node-port listing parser, and the
Host block and Include handling of `ssh-config` / `code` (pure text and local files). The real
OpenSSH, node and pam_slurm_adopt are in tests/e2e/test_node_access.py."""

from __future__ import annotations

import http.server
import socket
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Local
from hpclab.nodeaccess import LISTENERS, hex_to_ipv4, parse_listeners
from hpclab.sshconfig import _other_blocks, add_include, block, drop_block, has_include, include_line
from hpclab.state import SessionRecord


@pytest.fixture
def service() -> Iterator[int]:
    """A small web service on 127.0.0.1 (a 'dashboard in the job')."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"dashboard")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_forward_reaches_the_node_port_is_listed_and_ends_with_stop(local: Local, service: int) -> None:
    sid = str(local.json("up", "local", "--detach", "--no-browser")["id"])
    doc = local.json("forward", sid, str(service))
    assert doc["node_port"] == service and doc["local_port"] != service  # that number is taken here
    assert "reachable by other users" in doc["warning"]
    with urllib.request.urlopen(doc["url"], timeout=5) as resp:
        assert resp.read() == b"dashboard"
    (row,) = local.json("list")
    assert row["forwards"] == [{"node_port": service, "local_port": doc["local_port"], "url": doc["url"]}]
    rc, _, err = local.hpclab("forward", sid, str(service))
    assert rc == 2 and "already forwarded" in err
    # Another session keeps the connection open: the forward must still end with its own session.
    other = str(local.json("up", "local", "--detach", "--no-browser")["id"])
    local.hpclab("stop", sid)
    with pytest.raises(OSError):
        urllib.request.urlopen(doc["url"], timeout=2)
    assert [row["id"] for row in local.json("list")] == [other]


def test_forward_of_a_port_nothing_listens_on_says_so_and_records_nothing(local: Local) -> None:
    sid = str(local.json("up", "local", "--detach", "--no-browser")["id"])
    port = free_port()
    rc, _, err = local.hpclab("forward", sid, str(port))
    assert rc != 0 and f"nothing listens on port {port}" in err
    (row,) = local.json("list")
    assert row["forwards"] == []


def test_forward_to_a_local_port_in_use_is_refused_before_anything_is_opened(local: Local, service: int) -> None:
    sid = str(local.json("up", "local", "--detach", "--no-browser")["id"])
    rc, _, err = local.hpclab("forward", sid, str(service), "--local-port", str(service))
    assert rc != 0 and f"127.0.0.1:{service} is in use" in err
    assert local.json("list")[0]["forwards"] == []


# Captured from /proc/net/tcp and /proc/net/tcp6 through LISTENERS' awk (port 8787 = 0x2253).
LISTENER_LINES = """*** a banner line ***
0100007F 1001
00000000 0
0B01C80A 1002
00000000000000000000000001000000 1001
not hex 12
"""


def test_listeners_are_read_from_the_kernel_tables() -> None:
    found = parse_listeners(LISTENER_LINES)
    assert [(li.address, li.uid) for li in found] == [("loopback", 1001), ("any", 0), ("0B01C80A", 1002),
                                                      ("loopback", 1001)]
    assert hex_to_ipv4("0B01C80A") == "10.200.1.11"
    assert hex_to_ipv4("00000000000000000000000001000000") is None


def test_the_listener_program_runs_in_sh_and_finds_a_port(service: int) -> None:
    import subprocess

    out = subprocess.run(["sh", "-c", LISTENERS, "hpclab", str(service)], capture_output=True, text=True).stdout
    assert any(li.address == "loopback" for li in parse_listeners(out))


SSH_G = """user hpcuser
port 22
identityfile /keys/with space/id_ed25519
identityfile /keys/100%/id
identitiesonly yes
userknownhostsfile /home/me/.ssh/known_hosts /home/me/.ssh/known_hosts2
globalknownhostsfile /etc/ssh/ssh_known_hosts
hostkeyalgorithms ssh-ed25519
forwardagent yes
proxycommand none
"""


def render(**kw: object) -> str:
    args: dict[str, object] = dict(name="hpclab-ab12cd34", node="node7", ssh_g=SSH_G,
                                   proxy=["ssh", "-F", "/cfg/100% sure", "-W", "%h:%p", "--", "login"],
                                   control_path="/state/ctl/abc", key_options=[], comment="session ab12cd34")
    args.update(kw)
    return block(**args)  # type: ignore[arg-type]


def test_the_host_block_copies_auth_and_trust_and_adds_hpclabs_safety() -> None:
    text = render()
    lines = [line.strip() for line in text.splitlines()]
    assert lines[:3] == ["# session ab12cd34", "Host hpclab-ab12cd34", "HostName node7"]
    assert "User hpcuser" in lines and "IdentitiesOnly yes" in lines
    assert 'IdentityFile "/keys/with space/id_ed25519"' in lines  # spaces quoted
    assert "IdentityFile /keys/100%%/id" in lines  # a literal % is not an ssh token
    assert "UserKnownHostsFile /home/me/.ssh/known_hosts /home/me/.ssh/known_hosts2" in lines
    # hpclab's own options, and nothing from -G that would weaken them or is a default
    for line in ("ForwardAgent no", "ForwardX11 no", "StrictHostKeyChecking yes", "ControlMaster no",
                 "ControlPath /state/ctl/abc"):
        assert line in lines
    assert "forwardagent yes" not in text.lower() and "hostkeyalgorithms" not in text.lower()
    proxy = next(line for line in lines if line.startswith("ProxyCommand "))
    assert proxy == "ProxyCommand ssh -F '/cfg/100%% sure' -W %h:%p -- login"


def test_the_host_block_trusts_the_keys_the_login_node_publishes() -> None:
    text = render(key_options=["-o", 'GlobalKnownHostsFile="/etc/ssh/ssh_known_hosts" "/state/ctl/known_hosts-1"'])
    assert 'GlobalKnownHostsFile "/etc/ssh/ssh_known_hosts" "/state/ctl/known_hosts-1"' in text
    assert text.count("GlobalKnownHostsFile") == 1


def test_include_is_added_at_the_top_keeping_the_users_text_and_mode(tmp_path: Path) -> None:
    user = tmp_path / "ssh" / "config"
    user.parent.mkdir()
    user.write_text("Host *\n    ServerAliveInterval 30\n")
    user.chmod(0o644)
    blocks = tmp_path / "state dir" / "ssh_config"
    assert not has_include(user, blocks)
    add_include(user, blocks)
    text = user.read_text()
    assert text.splitlines()[1] == include_line(blocks) == f'Include "{blocks}"'
    assert text.endswith("Host *\n    ServerAliveInterval 30\n")
    assert user.stat().st_mode & 0o777 == 0o644
    assert has_include(user, blocks)


def test_one_sessions_block_is_replaced_or_dropped_without_touching_the_others(tmp_path: Path) -> None:
    path = tmp_path / "ssh_config"
    one, two = render(name="hpclab-one", comment="one"), render(name="hpclab-two", comment="two")
    path.write_text(one + two)
    assert _other_blocks(path, "hpclab-one") == two
    rec = SessionRecord(id="two", profile="p", host="h", ssh_options=[], scheduler="slurm")
    drop_block(tmp_path, rec)
    assert path.read_text() == one
