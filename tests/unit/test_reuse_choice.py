"""`hpclab up --reuse` and `reuse = true`: attach to a running session of the same profile
instead of submitting; without one (or without the option) a new job starts as before. Through
LocalRemote and the `none` scheduler (see conftest.py); the real cluster is in tests/e2e."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from conftest import Local
from hpclab.tunnel import probe


def up(local: Local, profile: str = "local", *extra: str) -> dict[str, Any]:
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


def token(doc: dict[str, Any]) -> str:
    return str(doc["url"]).split("token=")[1]


def submissions(local: Local) -> int:
    """Jobs started on the 'cluster' so far (one session directory each; none is removed here)."""
    return len(local.session_ids())


def test_reuse_attaches_to_the_running_session_instead_of_submitting(local: Local) -> None:
    first = up(local)
    again = up(local, "local", "--reuse")
    assert (again["id"], again["job_id"], again["url"]) == (first["id"], first["job_id"], first["url"])
    assert "timings" not in again  # attached, not launched: no submit, no queue
    assert submissions(local) == 1
    assert probe(int(again["local_port"]), token(again)) == 200


def test_without_reuse_a_second_up_starts_a_new_job(local: Local) -> None:
    first = up(local)
    second = up(local)
    assert second["id"] != first["id"] and second["job_id"] != first["job_id"]
    assert submissions(local) == 2


def test_reuse_key_in_the_profile_and_no_reuse_flag_override(local: Local) -> None:
    local.config('[profiles.shared]\nhost = "localhost"\nscheduler = "none"\ntransport = "socket"\nreuse = true\n')
    first = up(local, "shared")
    assert up(local, "shared")["id"] == first["id"]
    assert submissions(local) == 1
    fresh = up(local, "shared", "--no-reuse")
    assert fresh["id"] != first["id"] and submissions(local) == 2


def test_reuse_with_no_running_session_starts_one(local: Local) -> None:
    doc = up(local, "local", "--reuse")
    assert "timings" in doc and submissions(local) == 1


def test_reuse_is_per_profile(local: Local) -> None:
    other = up(local, "local-auto")
    doc = up(local, "local", "--reuse")
    assert doc["id"] != other["id"] and submissions(local) == 2


def test_reuse_skips_a_session_whose_job_has_ended(local: Local) -> None:
    first = up(local)
    os.killpg(int(str(first["job_id"])), signal.SIGTERM)
    assert wait_gone(local, str(first["job_id"]))
    doc = up(local, "local", "--reuse")
    assert doc["id"] != first["id"] and "timings" in doc
    assert [r["id"] for r in local.json("list")] == [doc["id"]]  # the ended one was forgotten


def test_reuse_must_be_true_or_false(local: Local) -> None:
    local.config('[profiles.bad]\nhost = "localhost"\nscheduler = "none"\nreuse = "yes"\n')
    rc, _out, err = local.hpclab("up", "bad", "--detach", "--no-browser")
    assert rc == 2 and "reuse must be true or false" in err
