"""auto transport remembers, per cluster, what its nodes allowed (transports.py): the next job is
submitted with that transport, so that Jupyter starts with the job instead of waiting for hpclab's
node connection; a node that refuses a remembered "socket" costs one job, never a broken lab.
Through LocalRemote and the `none` scheduler (see conftest.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import Local
from hpclab.errors import LoginRefused
from hpclab.paths import Paths
from hpclab.remote import LocalRemote
from hpclab.transports import TCP_DAYS, Transports


def up(local: Local, profile: str = "local-auto", *extra: str) -> dict[str, Any]:
    doc = local.json("up", profile, "--detach", "--no-browser", *extra)
    assert isinstance(doc, dict)
    return doc


def waited_for_listen(local: Local, doc: dict[str, Any]) -> bool:
    """Whether the job waited for hpclab's answer (the auto script) before starting Jupyter."""
    sdir = local.sessions_dir() / str(doc["id"])
    return "hpclab_i=0" in (sdir / "job.sh").read_text() or (sdir / "listen").exists()


def memory(local: Local) -> Transports:
    return Transports(Paths.from_env({"HPCLAB_HOME": str(local.state), "HOME": str(local.root)}))


def refuse_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every compute node refuses SSH from now on (as pam_slurm_adopt or a firewall would)."""
    connect = LocalRemote.connect

    def refusing(self: LocalRemote) -> None:
        if self.via is not None:
            raise LoginRefused(f"{self.host}: Permission denied (publickey)")
        connect(self)

    monkeypatch.setattr(LocalRemote, "connect", refusing)


def test_the_second_auto_job_starts_jupyter_without_waiting(local: Local) -> None:
    first = up(local)
    assert first["transport"] == "socket" and waited_for_listen(local, first)
    assert memory(local).recall("localhost", [], "none") == "socket"
    second = up(local)
    assert second["transport"] == "socket" and not waited_for_listen(local, second)
    assert second["stats"]["ssh_connects"] == 2  # the node connection is still made (for its socket)


def test_a_remembered_socket_that_a_node_refuses_costs_one_job_then_auto_decides(local: Local) -> None:
    first = up(local)
    local.json("stop", "--all")
    refuse_nodes(local.monkeypatch)
    rc, out, err = local.hpclab("up", "local-auto", "--detach", "--no-browser", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["transport"] == "tcp" and "refuses SSH now" in err
    # one login for this command (LocalRemote counts over the whole test): the master stayed up
    # for the second job while the first was stopped
    assert doc["stats"]["ssh_connects"] == first["stats"]["ssh_connects"] + 1
    assert [r["id"] for r in local.json("list")] == [doc["id"]]  # the first job was stopped, not left
    assert local.session_ids() == [doc["id"]]
    assert memory(local).recall("localhost", [], "none") == "tcp"


def test_a_remembered_tcp_is_used_then_forgotten_after_a_day(local: Local) -> None:
    refuse_nodes(local.monkeypatch)
    assert up(local)["transport"] == "tcp"
    again = up(local)
    assert again["transport"] == "tcp" and not waited_for_listen(local, again)
    later = memory(local)
    later.now = lambda: time.time() + TCP_DAYS * 86400 + 60
    assert later.recall("localhost", [], "none") is None


def test_an_explicit_transport_neither_reads_nor_writes_the_memory(local: Local) -> None:
    memory(local).remember("localhost", [], "none", "tcp")
    assert up(local, "local")["transport"] == "socket"  # profile local: transport = "socket"
    assert memory(local).recall("localhost", [], "none") == "tcp"


def test_memory_is_per_cluster_and_scheduler_and_a_damaged_file_reads_as_empty(tmp_path: Path) -> None:
    mem = Transports(Paths.from_env({"HPCLAB_HOME": str(tmp_path), "HOME": str(tmp_path)}))
    mem.remember("login-a", ["-F", "x"], "slurm", "socket")
    assert mem.recall("login-a", ["-F", "x"], "slurm") == "socket"
    assert mem.recall("login-a", [], "slurm") is None and mem.recall("login-b", ["-F", "x"], "slurm") is None
    assert mem.recall("login-a", ["-F", "x"], "sge") is None  # a Grid Engine job may not open its node
    assert (mem.path.stat().st_mode & 0o777) == 0o600
    mem.path.write_text("{not json")
    assert mem.recall("login-a", ["-F", "x"], "slurm") is None
    mem.remember("login-a", [], "slurm", None)  # forgetting what is not there is fine
