"""`hpclab up` on the real test cluster: SLURM, sshd, JupyterLab and headless Chromium."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from lab import Hpclab, accepted, hpclab, profile_text, run_cell, session_dirs, tc, tcx, user_jobs, wait_for

__all__ = ["hpclab"]

NODES = ("node1", "node2")


def hold_nodes() -> str:
    """Occupy every CPU of the cluster with a job of the second user; returns its id."""
    out = tcx("login", ["sbatch", "--parsable", "-N2", "--exclusive", "-J", "holder", "-o", "/dev/null",
                        "--wrap", "sleep 600"], user=tc("TC_USER2")).stdout
    job = out.strip().split(";")[0]
    wait_for(lambda: job in user_jobs(tc("TC_USER2")) and tcx(
        "login", ["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip() == "RUNNING", 30, what="holder job")
    return job


@pytest.mark.parametrize("transport", ["tcp", "socket"])
def test_browser_runs_a_cell_on_the_compute_node(hpclab: Hpclab, transport: str) -> None:
    info = hpclab.json("up", "testcluster", "--transport", transport, "--detach", "--no-browser")
    assert info["transport"] == transport
    assert info["node"] in NODES
    assert info["state"] == "running"
    assert info["url"].startswith(f"http://127.0.0.1:{info['local_port']}/lab?token=")
    for key in ("id", "profile", "job_id", "node", "transport", "local_port", "url", "state"):
        assert info[key], key
    output = run_cell(info["url"], "import socket; print('ON', socket.gethostname())")
    assert output.strip() == f"ON {info['node']}"


def test_ctrl_c_while_running_leaves_nothing(hpclab: Hpclab) -> None:
    user = tc("TC_USER")
    run = hpclab.start("up", "testcluster", "--no-browser")
    run.wait_url()
    assert len(user_jobs(user)) == 1
    run.signal(signal.SIGINT)
    assert run.wait(90) == 130
    assert user_jobs(user) == []
    assert session_dirs(user) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_leave_nothing(hpclab: Hpclab, sig: int) -> None:
    user = tc("TC_USER")
    run = hpclab.start("up", "testcluster", "--no-browser", "--transport", "tcp")
    run.wait_url()
    run.signal(sig)
    assert run.wait(90) == 130
    assert user_jobs(user) == []
    assert session_dirs(user) == []


def test_ctrl_c_while_pending_and_again_during_cleanup_leaves_nothing(hpclab: Hpclab) -> None:
    user = tc("TC_USER")
    holder = hold_nodes()
    try:
        run = hpclab.start("up", "testcluster", "--no-browser")
        run.wait_stderr("pending")
        wait_for(lambda: user_jobs(user), 20, what="hpclab's job in the queue")
        run.signal(signal.SIGINT)
        # The second Ctrl-C only once cleanup has begun: hpclab says "stopping" when it has.
        run.wait_stderr("stopping: cancelling the job", interval=0.01)
        run.signal(signal.SIGINT)
        assert run.wait(90) == 130
        # It arrived while cleanup ran (not after the exit), and was acknowledged, not obeyed.
        assert "still cleaning up so that no job is left running" in run.stderr()
        assert user_jobs(user) == []
        assert session_dirs(user) == []
    finally:
        tcx("login", ["scancel", holder], check=False)


def test_pending_shows_reason_and_max_wait_cancels(hpclab: Hpclab) -> None:
    user = tc("TC_USER")
    holder = hold_nodes()
    try:
        proc = hpclab("up", "testcluster", "--no-browser", "--max-wait", "4s")
        assert proc.returncode == 6, proc.stderr
        assert "pending (Resources" in proc.stderr or "pending (Priority" in proc.stderr, proc.stderr
        assert "did not start within 4 s" in proc.stderr
        assert user_jobs(user) == []
    finally:
        tcx("login", ["scancel", holder], check=False)


def test_failing_setup_line_is_reported_and_leaves_nothing(hpclab: Hpclab) -> None:
    user = tc("TC_USER")
    hpclab.write_config(profile_text(setup=["source /opt/hpclab-jupyter/bin/activate",
                                                   "no-such-module-command --load python"]))
    started = time.monotonic()
    proc = hpclab("up", "testcluster", "--no-browser")
    elapsed = time.monotonic() - started
    assert proc.returncode == 5, proc.stderr
    assert "ended before Jupyter was ready" in proc.stderr
    assert "no-such-module-command" in proc.stderr  # the job's own error output is shown
    assert elapsed < 30
    assert user_jobs(user) == []
    assert session_dirs(user) == []


def test_jupyter_missing_is_reported(hpclab: Hpclab) -> None:
    hpclab.write_config(profile_text(setup=[]))
    proc = hpclab("up", "testcluster", "--no-browser")
    assert proc.returncode == 5, proc.stderr
    assert "'jupyter' is not on PATH" in proc.stderr
    assert user_jobs(tc("TC_USER")) == []


def test_unknown_partition_is_a_scheduler_error(hpclab: Hpclab) -> None:
    proc = hpclab("up", "testcluster", "--no-browser", "--partition", "nosuchpartition")
    assert proc.returncode == 4, proc.stderr
    assert "SLURM refused the job" in proc.stderr
    assert "invalid partition" in proc.stderr.lower()
    assert session_dirs(tc("TC_USER")) == []


def test_unreachable_login_node_is_a_connect_error(hpclab: Hpclab) -> None:
    hpclab.write_config(profile_text(
        ssh_options=["-F", tc("TC_SSH_CONFIG"), "-o", "HostName=10.200.0.99", "-o", "ConnectTimeout=5"]))
    proc = hpclab("up", "testcluster", "--no-browser")
    assert proc.returncode == 3, proc.stderr
    assert "cannot reach tc-login" in proc.stderr


def test_refused_key_is_a_connect_error(hpclab: Hpclab, tmp_path) -> None:  # type: ignore[no-untyped-def]
    key = tmp_path / "stranger"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    hpclab.write_config(profile_text(
        ssh_options=["-F", tc("TC_SSH_CONFIG"), "-o", f"IdentityFile={key}", "-o", "IdentitiesOnly=yes",
                     "-o", "IdentityAgent=none"]))
    # the config file's IdentityFile comes first; point -F at a copy without it
    cfg = tmp_path / "ssh_config"
    cfg.write_text("\n".join(ln for ln in Path(tc("TC_SSH_CONFIG")).read_text().splitlines()
                             if "IdentityFile" not in ln) + "\n")
    hpclab.write_config(profile_text(
        ssh_options=["-F", str(cfg), "-o", f"IdentityFile={key}"]))
    proc = hpclab("up", "testcluster", "--no-browser")
    assert proc.returncode == 3, proc.stderr
    assert "refused the login" in proc.stderr


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"wallclock": "1h"}, "unknown key 'wallclock' in [profiles.testcluster]"),
        ({"host": None}, "missing key 'host' in [profiles.testcluster]"),
        ({"time": "forever"}, "bad value 'forever' for 'time' in [profiles.testcluster]"),
    ],
)
def test_bad_profiles_are_refused_before_any_connection(hpclab: Hpclab, table: dict, message: str) -> None:
    text = profile_text(**{k: v for k, v in table.items() if v is not None})
    if table.get("host", "") is None:
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("host ="))
    path = hpclab.write_config(text)
    before = accepted("login", tc("TC_USER"))
    proc = hpclab("up", "testcluster", "--no-browser")
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert str(path) in proc.stderr
    assert accepted("login", tc("TC_USER")) == before
    assert not (hpclab.home / "state" / "ctl").exists()


@pytest.mark.parametrize("transport", ["tcp", "socket"])
def test_one_login_node_authentication_per_up(hpclab: Hpclab, transport: str) -> None:
    user = tc("TC_USER")
    before = {h: accepted(h, user) for h in ("login", "node1", "node2")}
    info = hpclab.json("up", "testcluster", "--transport", transport, "--detach", "--no-browser")
    after = {h: accepted(h, user) for h in ("login", "node1", "node2")}
    assert after["login"] - before["login"] == 1
    node_auths = sum(after[n] - before[n] for n in NODES)
    # socket transport reaches Jupyter's socket through one connection to the node itself
    assert node_auths == (1 if transport == "socket" else 0)
    assert info["state"] == "running"


def test_browser_gets_a_private_redirect_file_not_the_token(hpclab: Hpclab, tmp_path: Path) -> None:
    seen = tmp_path / "browser-argv"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {seen}\n')
    browser.chmod(0o755)
    hpclab.env_extra["BROWSER"] = str(browser)
    info = hpclab.json("up", "testcluster", "--detach", "--transport", "tcp")
    argv = seen.read_text().split()
    token = info["url"].split("token=")[1]
    assert len(argv) == 1 and argv[0].startswith("file://") and token not in argv[0]
    page = Path(argv[0].removeprefix("file://"))
    assert oct(page.stat().st_mode & 0o777) == "0o600"
    assert f'content="0;url={info["url"]}"' in page.read_text()
    assert hpclab("stop", info["id"]).returncode == 0
    assert not page.exists()
