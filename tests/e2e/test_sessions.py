"""Sessions that outlive the terminal, on the real test cluster: list, attach, stop, logs,
reconnect after the SSH master dies, the job ending under a foreground session."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from lab import Hpclab, hpclab, profile_text, tc, tcx, user_jobs, wait_for

__all__ = ["hpclab"]


def status(port: int, token: str) -> int | None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def masters(home: str) -> list[int]:
    """Pids of ssh ControlMaster processes that belong to this HPCLAB_HOME's control dir."""
    out = subprocess.run(["pgrep", "-f", "ControlMaster=yes"], capture_output=True, text=True).stdout
    pids = []
    for pid in out.split():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        except OSError:
            continue
        if home in cmd or "/tmp/hpclab-" in cmd:
            pids.append(int(pid))
    return pids


def test_two_detached_sessions_list_and_stop(hpclab: Hpclab) -> None:
    a = hpclab.json("up", "testcluster", "--detach", "--no-browser", "--transport", "tcp")
    b = hpclab.json("up", "testcluster", "--detach", "--no-browser", "--transport", "socket")
    rows = {r["id"]: r for r in hpclab.json("list")}
    assert set(rows) == {a["id"], b["id"]}
    for r in rows.values():
        assert r["state"] == "running" and r["tunnel"] == "up" and r["node"] in ("node1", "node2")
        assert 0 < r["time_left"] <= 30 * 60
    stopped = hpclab.json("stop", a["id"])
    assert stopped == [{"id": a["id"], "job_id": a["job_id"], "state": stopped[0]["state"]}]
    assert stopped[0]["state"] in ("cancelled", "ended", "completed")
    assert a["job_id"] not in user_jobs(tc("TC_USER"))
    assert [r["id"] for r in hpclab.json("list")] == [b["id"]]
    assert status(a["local_port"], a["url"].split("token=")[1]) is None  # its forward is gone
    again = hpclab("stop", a["id"])  # the record is gone: a clear "no session", not a crash
    assert again.returncode == 9 and "no session" in again.stderr


def test_killed_master_is_replaced_on_the_same_port(hpclab: Hpclab) -> None:
    run = hpclab.start("up", "testcluster", "--no-browser", "--transport", "socket")
    _, port, token = run.wait_url()
    jobs = user_jobs(tc("TC_USER"))
    assert len(jobs) == 1
    pids = masters(str(hpclab.home))
    assert pids, "no ssh master found for this HPCLAB_HOME"
    started = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: status(port, token) != 200, 5, interval=0.05, what="the tunnel to go down")
    wait_for(lambda: status(port, token) == 200, 10, interval=0.1, what="the lab to answer again")
    elapsed = time.monotonic() - started
    print(f"\nlab answered again through 127.0.0.1:{port} {elapsed:.2f} s after the masters were killed")
    assert user_jobs(tc("TC_USER")) == jobs  # no new job
    run.wait_stderr("reconnected")
    run.signal(signal.SIGINT)
    assert run.wait(90) == 130
    assert user_jobs(tc("TC_USER")) == []


def test_attach_from_a_second_laptop(hpclab: Hpclab, tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = hpclab.json("up", "testcluster", "--detach", "--no-browser")
    second = Hpclab(home=tmp_path / "second-laptop", config=hpclab.config)
    second.home.mkdir()
    try:
        info = second.json("attach", "--profile", "testcluster", "--no-browser", "--detach")
        assert info["id"] == first["id"] and info["job_id"] == first["job_id"]
        assert info["url"].split("token=")[1] == first["url"].split("token=")[1]
        assert status(info["local_port"], first["url"].split("token=")[1]) == 200
        # and the first laptop re-attaches to its own record, same port
        again = hpclab.json("attach", first["id"], "--no-browser", "--detach")
        assert again["local_port"] == first["local_port"]
    finally:
        second("stop", "--all")


def test_scancel_from_outside_is_noticed(hpclab: Hpclab) -> None:
    run = hpclab.start("up", "testcluster", "--no-browser")
    run.wait_url()
    (job,) = user_jobs(tc("TC_USER"))
    started = time.monotonic()
    tcx("login", ["scancel", job])
    code = run.wait(30)
    elapsed = time.monotonic() - started
    print(f"\nhpclab noticed the cancelled job {elapsed:.2f} s after scancel")
    assert code == 7, run.stderr()
    assert "cancelled" in run.stderr()
    assert elapsed < 10
    assert user_jobs(tc("TC_USER")) == []
    assert hpclab.json("list") == []


def test_walltime_warning_and_time_limit_exit_code(hpclab: Hpclab) -> None:
    hpclab.write_config(profile_text(walltime_warnings=["10m", "2m"]))
    run = hpclab.start("up", "testcluster", "--no-browser", "--time", "2", "--transport", "tcp")
    run.wait_url()
    run.wait_stderr("left before the time limit", timeout=40)
    code = run.wait(200)
    assert code == 8, run.stderr()
    assert "time limit reached" in run.stderr()
    assert user_jobs(tc("TC_USER")) == []


def test_idle_shutdown_ends_a_forgotten_job(hpclab: Hpclab) -> None:
    hpclab.write_config(profile_text(idle_timeout="10s"))
    info = hpclab.json("up", "testcluster", "--detach", "--no-browser", "--transport", "tcp")
    wait_for(lambda: info["job_id"] not in user_jobs(tc("TC_USER")), 150, interval=2,
             what="the idle job to end by itself")
    rows = hpclab.json("list")
    assert [r["state"] for r in rows] in (["completed"], ["ended"])  # shown once as ended ...
    assert hpclab.json("list") == []  # ... then forgotten


def test_cleanup_cancels_a_job_whose_record_was_deleted(hpclab: Hpclab) -> None:
    info = hpclab.json("up", "testcluster", "--detach", "--no-browser")
    (hpclab.home / "state" / "sessions" / f"{info['id']}.json").unlink()
    report = hpclab.json("cleanup", "--profile", "testcluster", "--yes")
    assert report == [{"profile": "testcluster", "id": info["id"], "job_id": info["job_id"], "cancelled": True}]
    assert user_jobs(tc("TC_USER")) == []
    assert hpclab.json("cleanup", "--profile", "testcluster", "--yes") == []


def test_logs_and_url(hpclab: Hpclab) -> None:
    info = hpclab.json("up", "testcluster", "--detach", "--no-browser", "--transport", "tcp")
    token = info["url"].split("token=")[1]
    assert status(info["local_port"], "wrong-" + token) == 403  # a failed request lands in Jupyter's log
    url = hpclab("url", info["id"])
    assert url.returncode == 0 and url.stdout.strip() == info["url"]
    logs = hpclab("logs", info["id"])
    assert logs.returncode == 0, logs.stderr
    assert "Jupyter Server" in logs.stdout and "==> job.err <==" in logs.stdout
    assert token not in logs.stdout + logs.stderr
