"""`hpclab up` with the real Grid Engine of the test cluster, and with no scheduler at all
(Jupyter started directly on the login node, as on a lab server): the browser runs a cell on the
node; Ctrl-C, `stop` and `list` behave as with SLURM."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator

import pytest
from lab import Hpclab, hpclab, run_cell, session_dirs, tc, tcx, wait_for

__all__ = ["hpclab"]

NODES = ("node1", "node2")


def sge_jobs(user: str) -> list[str]:
    """Grid Engine job ids of `user`, asked as root on the login node."""
    out = tcx("login", ["qstat", "-u", user]).stdout.splitlines()[2:]
    return [line.split()[0] for line in out if line.strip()]


# testcluster-none runs on the login node: compute nodes admit only users with a SLURM job there.
NONE_HOST = "login"


def node_jobs(user: str, session: str, node: str = NONE_HOST) -> list[str]:
    """Live processes of `user` on `node` that belong to hpclab session `session` (the job
    script names its session directory; Jupyter's socket lives in /tmp/hpclab-SESSION.*)."""
    out = tcx(node, ["ps", "-u", user, "-ww", "-o", "pid=,stat=,args="]).stdout
    return [line for line in out.splitlines()
            if (f"/sessions/{session}/" in line or f"hpclab-{session}." in line) and line.split()[1][:1] != "Z"]


def running_session(hpclab: Hpclab) -> dict[str, str]:
    """The one session the `hpclab` under test has, once `up` has recorded its job."""
    def found() -> dict[str, str] | None:
        rows = hpclab.json("list")
        return rows[0] if rows and rows[0].get("job_id") else None
    return wait_for(found, 60, what="the session record")


@pytest.fixture
def sge(cluster: object) -> Iterator[None]:
    if tc("TC_SGE") != "1":
        pytest.fail("Grid Engine is off in this test cluster (HPCLAB_TC_SGE=1 scripts/testcluster up)")
    yield


def test_sge_up_browser_list_and_stop(hpclab: Hpclab, sge: None) -> None:
    user = tc("TC_USER")
    info = hpclab.json("up", "testcluster-sge", "--detach", "--no-browser")
    assert info["scheduler"] == "sge" and info["state"] == "running"
    assert info["node"] in NODES
    assert info["job_id"] in sge_jobs(user)
    output = run_cell(info["url"], "import socket; print('ON', socket.gethostname())")
    assert output.strip() == f"ON {info['node']}"

    listed = hpclab.json("list")
    assert [(s["id"], s["job_id"], s["state"]) for s in listed] == [(info["id"], info["job_id"], "running")]

    stopped = hpclab.json("stop", info["id"])
    assert stopped[0]["state"] == "ended"
    assert info["job_id"] not in sge_jobs(user)
    assert info["id"] not in session_dirs(user)
    assert hpclab.json("list") == []


def test_sge_ctrl_c_leaves_no_job(hpclab: Hpclab, sge: None) -> None:
    user = tc("TC_USER")
    run = hpclab.start("up", "testcluster-sge", "--no-browser")
    run.wait_url()
    # A Grid Engine job gives no SLURM job on the node, so pam_slurm_adopt refuses SSH there: auto
    # falls back to tcp, visibly and with the node's own reason.
    assert re.search(r"transport: tcp \(the node refuses SSH: node\d refused the login\)", run.stderr()), run.stderr()
    rec = running_session(hpclab)
    assert rec["job_id"] in sge_jobs(user)
    run.signal(signal.SIGINT)
    assert run.wait(90) == 130
    assert rec["job_id"] not in sge_jobs(user)
    assert rec["id"] not in session_dirs(user)


def test_sge_job_that_fails_is_reported_from_accounting(hpclab: Hpclab, sge: None) -> None:
    """No Jupyter on PATH: the job ends at once; hpclab says so and leaves nothing queued."""
    hpclab.write_config(
        "[profiles.testcluster-sge]\n"
        'host = "tc-login"\n'
        f'ssh_options = ["-F", "{tc("TC_SSH_CONFIG")}"]\n'
        'scheduler = "sge"\n'
        'time = "00:10:00"\n'
    )
    proc = hpclab("up", "testcluster-sge", "--no-browser")
    assert proc.returncode == 5, proc.stderr
    assert "'jupyter' is not on PATH" in proc.stderr
    assert hpclab.json("list") == []


def test_none_up_browser_list_and_stop(hpclab: Hpclab) -> None:
    user = tc("TC_USER")
    info = hpclab.json("up", "testcluster-none", "--detach", "--no-browser")
    assert info["scheduler"] == "none" and info["node"] == NONE_HOST
    assert node_jobs(user, info["id"])
    output = run_cell(info["url"], "import socket; print('ON', socket.gethostname())")
    assert output.strip() == f"ON {NONE_HOST}"
    assert [s["id"] for s in hpclab.json("list")] == [info["id"]]

    hpclab.json("stop", info["id"])
    wait_for(lambda: node_jobs(user, info["id"]) == [], 20, what="the job's processes to end")
    assert hpclab.json("list") == []


def test_none_ctrl_c_leaves_no_process(hpclab: Hpclab) -> None:
    user = tc("TC_USER")
    run = hpclab.start("up", "testcluster-none", "--no-browser")
    run.wait_url()
    rec = running_session(hpclab)
    assert node_jobs(user, rec["id"])
    run.signal(signal.SIGINT)
    assert run.wait(90) == 130
    wait_for(lambda: node_jobs(user, rec["id"]) == [], 20, what="the job's processes to end")
    assert rec["id"] not in session_dirs(user)
