"""A compute node is reached as the login node's account (Cluster.node, SshRemote.user), not as
whatever the ssh config says for node names: the lab's socket belongs to the job's user."""

from __future__ import annotations

from pathlib import Path

from hpclab.cluster import Cluster
from hpclab.remote import SshRemote


def test_ssh_remote_knows_its_user_from_the_config_without_logging_in(tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host login-alias\n    User alice\n    HostName 192.0.2.1\nHost node*\n    User bob\n")
    login = SshRemote("login-alias", ["-F", str(config)], tmp_path / "ctl")
    assert login.user() == "alice"
    assert SshRemote("carol@login-alias", ["-F", str(config)], tmp_path / "ctl").user() == "carol"


def test_the_node_connection_takes_the_login_user(tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text("Host login-alias\n    User alice\n    HostName 192.0.2.1\nHost node*\n    User bob\n")
    cluster = Cluster(SshRemote("login-alias", ["-F", str(config)], tmp_path / "ctl"), "slurm")
    node = cluster.node("node1")
    assert node.host == "alice@node1"
    assert cluster.node("node1", user="dave").host == "dave@node1"
