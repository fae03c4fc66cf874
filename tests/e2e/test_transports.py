"""auto transport on the real test cluster remembers what the nodes allowed (transports.py): the
second job starts Jupyter at once on the socket, hpclab still proves the node connection; on the
same login node a Grid Engine job (whose node refuses SSH: no SLURM job there for
pam_slurm_adopt) is not misled by what SLURM jobs were allowed."""

from __future__ import annotations

import re

from lab import Hpclab, accepted, hpclab, session_dirs, tc, tcx, user_jobs

__all__ = ["hpclab"]


def listen_file(user: str, session_id: str) -> bool:
    path = f"/home/{user}/.hpclab/sessions/{session_id}/listen"
    return tcx("login", ["test", "-e", path], check=False).returncode == 0


def test_second_auto_up_starts_jupyter_without_waiting_and_sge_still_decides(hpclab: Hpclab) -> None:
    user = tc("TC_USER")
    first = hpclab("up", "testcluster", "--detach", "--no-browser", "--json")
    assert first.returncode == 0, first.stderr
    assert "transport: socket" in first.stderr and "allowed before" not in first.stderr
    first_id = re.search(r'"id": "([0-9a-f]+)"', first.stdout).group(1)  # type: ignore[union-attr]
    assert listen_file(user, first_id)  # the job waited for hpclab's answer

    nodes = {h: accepted(h, user) for h in ("node1", "node2")}
    second = hpclab.json("up", "testcluster", "--detach", "--no-browser")
    assert second["transport"] == "socket" and not listen_file(user, second["id"])
    # at most the node connection for the socket (none when the first session's, to the same node, serves)
    assert sum(accepted(h, user) - n for h, n in nodes.items()) <= 1
    assert sorted(session_dirs(user)) == sorted([first_id, second["id"]])

    hpclab.json("stop", "--all")
    assert user_jobs(user) == []

    if tc("TC_SGE") == "1":  # no SLURM job of the user left on a node: pam_slurm_adopt refuses SSH there
        sge = hpclab("up", "testcluster-sge", "--detach", "--no-browser", "--json")
        assert sge.returncode == 0, sge.stderr
        assert re.search(r"transport: tcp \(the node refuses SSH: node\d refused the login\)", sge.stderr), sge.stderr
        assert "allowed before" not in sge.stderr
        hpclab.json("stop", "--all")
