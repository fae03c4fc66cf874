"""`hpclab up --reuse` on the real test cluster: the running session of the profile is attached
to, with no new job and no new login on the login node; without --reuse a second job starts."""

from __future__ import annotations

import time

from lab import Hpclab, accepted, hpclab, tc, user_jobs

__all__ = ["hpclab"]


def test_up_reuse_attaches_without_a_job_or_a_login(hpclab: Hpclab) -> None:
    user = tc("TC_USER")
    first = hpclab.json("up", "testcluster", "--detach", "--no-browser")
    assert user_jobs(user) == [first["job_id"]]
    logins = accepted("login", user)
    started = time.monotonic()
    again = hpclab.json("up", "testcluster", "--reuse", "--detach", "--no-browser")
    elapsed = time.monotonic() - started
    print(f"\nup --reuse answered in {elapsed:.3f} s")
    assert (again["id"], again["job_id"], again["url"]) == (first["id"], first["job_id"], first["url"])
    assert user_jobs(user) == [first["job_id"]]  # no job submitted
    assert accepted("login", user) == logins  # over the master the first up left for its session
    second = hpclab.json("up", "testcluster", "--detach", "--no-browser")
    assert second["id"] != first["id"] and sorted(user_jobs(user)) == sorted([first["job_id"], second["job_id"]])
    hpclab.json("stop", "--all")
    assert user_jobs(user) == []
