"""hostkeys: which published keys apply to a node, the private file, the ssh options that add it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import stat
import subprocess
from pathlib import Path

from hpclab.hostkeys import (
    global_files_option,
    lookup_name,
    node_options,
    parse_ssh_g,
    select,
    split_files,
    write_known_hosts,
)


def key(seed: bytes, keytype: bytes = b"ssh-ed25519") -> str:
    """A key blob as in known_hosts: length-prefixed type name, then key material."""
    return base64.b64encode(len(keytype).to_bytes(4, "big") + keytype + b"\0\0\0\x20" + seed * 32).decode()


K1, K2 = key(b"1"), key(b"2")
PUBLISHED = f"""# the site's keys
login,10.200.1.1 ssh-ed25519 {K1}
node1,10.200.1.11 ssh-ed25519 {K1} root@node1
node2,10.200.1.12 ssh-ed25519 {K2}
"""

SSH_G = """host node1
hostname node1
port 22
globalknownhostsfile /etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2
userknownhostsfile /home/u/.ssh/known_hosts
"""


def hashed(name: str, salt: bytes = b"0123456789abcdefghij") -> str:
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def test_select_keeps_only_the_lines_for_that_name_and_names_only_it() -> None:
    assert select(PUBLISHED, "node1") == [f"node1 ssh-ed25519 {K1}"]
    assert select(PUBLISHED, "NODE2") == [f"node2 ssh-ed25519 {K2}"]
    assert select(PUBLISHED, "node3") == []
    assert select(PUBLISHED, "node") == []  # no prefix matching


def test_select_follows_openssh_patterns() -> None:
    text = f"node*,!node2 ssh-ed25519 {K1}\n[node1]:2222 ssh-ed25519 {K2}\n"
    assert select(text, "node1") == [f"node1 ssh-ed25519 {K1}"]
    assert select(text, "node2") == []  # negated
    assert select(text, "[node1]:2222") == [f"[node1]:2222 ssh-ed25519 {K2}"]


def test_select_matches_hashed_names_and_keeps_markers() -> None:
    text = (f"{hashed('node1')} ssh-ed25519 {K1}\n@revoked node1 ssh-ed25519 {K2}\n"
            f"@cert-authority *.example ssh-ed25519 {K2}\n")
    assert select(text, "node1") == [f"{hashed('node1')} ssh-ed25519 {K1}", f"@revoked node1 ssh-ed25519 {K2}"]
    assert select(text, "node2") == []
    assert select(text, "n7.example") == [f"@cert-authority n7.example ssh-ed25519 {K2}"]


def test_select_drops_what_is_not_a_key_line() -> None:
    text = (
        "*** welcome to the cluster ***\n4242\n"
        f"@unknown node1 ssh-ed25519 {K1}\n"
        f"node1 ssh-ed25519 not;base64\n"
        f"node1 ssh$(reboot) {K1}\n"
        f"node1 ssh-rsa {K1}\n"  # the blob says ssh-ed25519
        "node1 ssh-ed25519\n"
    )
    assert select(text, "node1") == []


def test_lookup_name_is_the_alias_or_the_hostname_with_a_port() -> None:
    assert lookup_name(parse_ssh_g(SSH_G)) == "node1"
    assert lookup_name({"hostname": "n1.site", "port": "2222"}) == "[n1.site]:2222"
    assert lookup_name({"hostname": "n1", "port": "22", "hostkeyalias": "alias1"}) == "alias1"


def test_split_files_rejoins_paths_with_spaces() -> None:
    assert split_files("/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2") == [
        "/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"]
    assert split_files("/home/a b/kh /dev/null") == ["/home/a b/kh", "/dev/null"]
    assert split_files("none") == []


def test_the_file_is_private_and_stable(tmp_path: Path) -> None:
    ctl = tmp_path / "ctl"
    path = write_known_hosts(ctl, "tag", ["node1 ssh-ed25519 " + K1])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(ctl.stat().st_mode) == 0o700
    assert path.read_text() == f"node1 ssh-ed25519 {K1}\n"
    assert write_known_hosts(ctl, "tag", []) == path and path.read_text() == ""
    assert write_known_hosts(ctl, "other", []) != path


def test_the_option_adds_to_the_configured_files_and_relaxes_nothing(tmp_path: Path) -> None:
    opts = node_options(PUBLISHED, SSH_G, tmp_path / "ctl", "login-control-path")
    assert opts[0] == "-o" and len(opts) == 2
    assert opts[1].startswith('GlobalKnownHostsFile="/etc/ssh/ssh_known_hosts" "/etc/ssh/ssh_known_hosts2" "')
    assert "StrictHostKeyChecking" not in " ".join(opts) and "UserKnownHostsFile" not in " ".join(opts)
    assert node_options(PUBLISHED.replace("node1,", "other,"), SSH_G, tmp_path / "ctl", "x") == []


def test_ssh_reads_the_option_as_the_list_of_files(tmp_path: Path) -> None:
    """ssh itself splits the value: spaces and quotes in paths survive."""
    odd = tmp_path / 'a b"c'
    opts = global_files_option(["/etc/ssh/ssh_known_hosts", "/x y/kh"], odd)
    out = subprocess.run(["ssh", *opts, "-G", "node1"], capture_output=True, text=True, check=True,
                         stdin=subprocess.DEVNULL).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("globalknownhostsfile "))
    assert line == f"globalknownhostsfile /etc/ssh/ssh_known_hosts /x y/kh {odd}"


class FakeLogin:
    """Stands in for the login node's SshRemote: answers `cat` with what it publishes."""

    control_path = "/tmp/ctl/login"

    def __init__(self, published: str) -> None:
        self.published = published
        self.sent: list[list[str]] = []

    def run(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        self.sent.append(argv)
        return subprocess.CompletedProcess(argv, 0, self.published, "")


def test_for_node_asks_the_login_node_and_ssh_for_the_effective_files(tmp_path: Path) -> None:
    from hpclab.hostkeys import PUBLISHED as PATH
    from hpclab.hostkeys import for_node

    login = FakeLogin(PUBLISHED)
    argv = ["ssh", "-F", "/dev/null", "-o", "GlobalKnownHostsFile=/site/kh"]
    opts = for_node(login, "hpcuser@node2", argv, tmp_path / "ctl")  # type: ignore[arg-type]
    assert login.sent == [["cat", PATH]]
    assert opts[1].startswith('GlobalKnownHostsFile="/site/kh" "')
    ours = Path(opts[1].split('"')[3])
    assert ours.read_text() == f"node2 ssh-ed25519 {K2}\n"
    assert for_node(FakeLogin(""), "node2", argv, tmp_path / "ctl") == []  # type: ignore[arg-type]
