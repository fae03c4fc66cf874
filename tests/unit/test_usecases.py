"""The use cases end to end on this machine: up, list, url, logs, attach, stop, cleanup and their
error paths, through LocalRemote, the `none` scheduler and a STAND-IN Jupyter (see conftest.py).
The same flows against the real SLURM, Grid Engine, sshd and JupyterLab are in tests/e2e."""

from __future__ import annotations

import json
import os
import stat
import string
import time
from pathlib import Path

from conftest import Local
from hpclab.tunnel import probe


def up(local: Local, profile: str = "local", *extra: str) -> dict[str, object]:
    doc = local.json("up", profile, "--detach", "--no-browser", *extra)
    assert isinstance(doc, dict)
    return doc


def wait_gone(local: Local, pid: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while local.job_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_up_gives_a_lab_that_answers_only_with_the_token(local: Local) -> None:
    doc = up(local)
    port, token = doc["local_port"], doc["url"].split("token=")[1]  # type: ignore[union-attr]
    assert doc["state"] == "running" and doc["transport"] == "socket" and doc["scheduler"] == "none"
    assert isinstance(port, int) and probe(port, token) == 200
    assert probe(port, "not-the-token") == 403
    assert len(token) >= 43 and set(token) <= set(string.ascii_letters + string.digits + "-_")  # 256 bits
    sdir = local.sessions_dir() / str(doc["id"])
    assert stat.S_IMODE(sdir.stat().st_mode) == 0o700
    assert (sdir / "token").read_text() == token and stat.S_IMODE((sdir / "token").stat().st_mode) == 0o600
    assert token not in (sdir / "job.sh").read_text()
    assert doc["stats"]["ssh_connects"] == 2  # type: ignore[index]  # the login node, and the node for its socket


def test_auto_transport_chooses_socket_where_the_node_accepts_a_connection(local: Local) -> None:
    doc = up(local, "local-auto")
    assert doc["transport"] == "socket"
    listen = local.sessions_dir() / str(doc["id"]) / "listen"
    assert listen.read_text() == "socket"


def test_list_url_logs_then_stop_leaves_nothing(local: Local) -> None:
    doc = up(local)
    sid, job = str(doc["id"]), str(doc["job_id"])
    (row,) = local.json("list")
    assert (row["id"], row["state"], row["tunnel"]) == (sid, "running", "up")

    rc, out, _ = local.hpclab("url", sid)
    assert rc == 0 and out.strip() == doc["url"]

    token = str(doc["url"]).split("token=")[1]
    (local.sessions_dir() / sid / "job.out").write_text(f"a line with the token {token} in it\n")
    rc, out, _ = local.hpclab("logs", sid)
    assert rc == 0 and "a line with the token ********" in out and token not in out

    (stopped,) = local.json("stop", sid)
    assert stopped == {"id": sid, "job_id": job, "state": "ended"}
    assert wait_gone(local, job), "the job's process is still running after stop"
    assert local.session_ids() == []
    assert local.json("list") == []
    assert not list((local.state / "state" / "sessions").glob("*.json"))


def test_stop_all(local: Local) -> None:
    jobs = [str(up(local)["job_id"]) for _ in range(2)]
    assert len(local.json("stop", "--all")) == 2
    assert all(wait_gone(local, j) for j in jobs)


def test_a_dead_tunnel_shows_down_and_attach_brings_it_back(local: Local) -> None:
    doc = up(local)
    local.remote.close()  # the forward dies, as when the ssh master is killed
    (row,) = local.json("list")
    assert row["tunnel"] == "down" and row["state"] == "running"
    attached = local.json("attach", str(doc["id"]), "--detach", "--no-browser")
    assert attached["url"] == doc["url"]  # the same local port, free again
    token = str(doc["url"]).split("token=")[1]
    assert probe(int(attached["local_port"]), token) == 200


def test_attach_from_a_second_computer_finds_the_session_on_the_cluster(local: Local) -> None:
    doc = up(local)
    local.monkeypatch.setenv("HPCLAB_HOME", str(local.root / "second"))
    (local.root / "second").mkdir()
    (local.root / "second" / "config.toml").write_text((local.state / "config.toml").read_text())
    found = local.json("attach", "--profile", "local", "--detach", "--no-browser")
    assert found["id"] == doc["id"] and found["job_id"] == doc["job_id"]
    assert str(found["url"]).split("token=")[1] == str(doc["url"]).split("token=")[1]
    assert found["local_port"] != doc["local_port"]  # the first computer still holds its port


def test_cleanup_cancels_a_job_no_record_covers(local: Local) -> None:
    doc = up(local)
    for record in (local.state / "state" / "sessions").glob("*.json"):
        record.unlink()
    (orphan,) = local.json("cleanup", "--profile", "local", "--yes")
    assert orphan == {"profile": "local", "id": doc["id"], "job_id": doc["job_id"], "cancelled": True}
    assert wait_gone(local, str(doc["job_id"]))
    assert local.session_ids() == []


def test_cleanup_asks_and_leaves_the_job_without_yes(local: Local) -> None:
    doc = up(local)
    for record in (local.state / "state" / "sessions").glob("*.json"):
        record.unlink()
    (orphan,) = local.json("cleanup", "--profile", "local")  # stdin is no terminal: nobody said yes
    assert orphan["cancelled"] is False and local.job_alive(str(doc["job_id"]))


# -- errors: a clear message, the right exit code, nothing left behind -------------------------


def test_up_refuses_a_hpclab_dir_that_others_can_write(local: Local) -> None:
    """Someone could have planted files in it: up says so and how to fix it, starts nothing,
    and does not silently tighten it (what is inside needs a look first)."""
    sessions = local.sessions_dir()
    sessions.mkdir(parents=True)
    sessions.chmod(0o777)
    rc, out, err = local.hpclab("up", "local", "--detach", "--no-browser")
    assert rc == 2, err
    assert "~/.hpclab/sessions on the cluster is writable by other users" in err
    assert "chmod 700 ~/.hpclab ~/.hpclab/sessions" in err and "ls -la" in err
    assert out == "" and local.session_ids() == [] and stat.S_IMODE(sessions.stat().st_mode) == 0o777
    assert not list((local.state / "state" / "sessions").glob("*.json"))
    sessions.chmod(0o755)  # the user's own and nobody else's to write: tightened, and up works
    assert up(local)["state"] == "running" and stat.S_IMODE(sessions.stat().st_mode) == 0o700



def test_a_failing_setup_line_ends_with_the_jobs_own_error(local: Local) -> None:
    local.config('\n[profiles.broken]\nhost = "localhost"\nscheduler = "none"\nsetup = "false_command_xyz"\n')
    rc, _, err = local.hpclab("up", "broken", "--detach", "--no-browser")
    assert rc == 5, err
    assert "ended before Jupyter was ready" in err and "false_command_xyz" in err
    assert local.session_ids() == [] and local.json("list") == []


def test_jupyter_that_exits_before_it_is_ready(local: Local) -> None:
    local.remote.env = dict(local.remote.env or {}, FAKE_JUPYTER_FAIL="3")
    rc, _, err = local.hpclab("up", "local", "--detach", "--no-browser")
    assert rc == 5, err
    assert "jupyter exited with status 3 before it was ready" in err


def test_the_scheduler_refusing_the_job_is_exit_4_with_its_words(local: Local) -> None:
    local.fake("sbatch", "#!/bin/sh\ncat >/dev/null\necho 'sbatch: error: invalid partition specified: nope' >&2\n"
                         "exit 1\n")
    local.config('\n[profiles.slurm]\nhost = "localhost"\nscheduler = "slurm"\npartition = "nope"\n')
    rc, _, err = local.hpclab("up", "slurm", "--detach", "--no-browser")
    assert rc == 4, err
    assert "SLURM refused the job" in err and "invalid partition specified: nope" in err
    assert local.session_ids() == [] and local.json("list") == []


def test_an_old_jupyter_server_is_named_with_how_to_upgrade(local: Local) -> None:
    local.remote.env = dict(local.remote.env or {}, FAKE_JUPYTER_VERSION="2.17.0")
    rc, _, err = local.hpclab("up", "local", "--detach", "--no-browser")
    assert rc == 0
    assert "jupyter_server 2.17.0, older than 2.18" in err


def test_bad_input_is_refused_before_anything_runs(local: Local) -> None:
    rc, _, err = local.hpclab("up", "local", "--partition", "debug\n", "--detach")
    assert rc == 2 and "partition" in err
    rc, _, err = local.hpclab("up", "local", "--mem", "4G; rm -rf ~", "--detach")
    assert rc == 2 and "mem" in err
    rc, _, err = local.hpclab("up", "nosuch")
    assert rc == 2 and "no profile 'nosuch'" in err and "local" in err
    assert local.remote.counters.connects == 0 and local.session_ids() == []


def test_an_unknown_session_is_exit_9(local: Local) -> None:
    for command in (["stop", "0123abcd"], ["url", "nope"], ["logs", "../x"], ["attach", "zz", "--detach"]):
        rc, _, err = local.hpclab(*command)
        assert rc == 9, (command, err)
        assert "no session" in err


def test_a_corrupt_record_is_a_clear_error_not_a_traceback(local: Local) -> None:
    sessions = local.state / "state" / "sessions"
    sessions.mkdir(parents=True)
    (sessions / "0123abcd.json").write_text("{not json")
    rc, _, err = local.hpclab("stop", "0123abcd")
    assert rc == 2 and "unreadable session record" in err and "Traceback" not in err
    rc, _out, err = local.hpclab("list")
    assert rc == 0 and "unreadable session record" in err


def test_a_record_with_an_unknown_scheduler_is_a_clear_error(local: Local) -> None:
    doc = up(local)
    path = local.state / "state" / "sessions" / f"{doc['id']}.json"
    record = json.loads(path.read_text())
    path.write_text(json.dumps(record | {"scheduler": "moab"}))
    rc, _, err = local.hpclab("stop", str(doc["id"]))
    assert rc == 2 and "unknown scheduler 'moab'" in err and "Traceback" not in err
    path.write_text(json.dumps(record))
    assert local.hpclab("stop", str(doc["id"]))[0] == 0


def test_state_files_are_private_whatever_the_umask(local: Local) -> None:
    old = os.umask(0o002)
    try:
        up(local)
    finally:
        os.umask(old)
    for path in [local.state / "state", *Path(local.state / "state").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
