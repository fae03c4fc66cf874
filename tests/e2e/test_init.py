"""`hpclab init --yes` on the real test cluster, then `hpclab up` with exactly what it wrote."""

from __future__ import annotations

import json
import stat
from typing import TYPE_CHECKING

from lab import Hpclab, accepted, hpclab, lab_api, session_dirs, tc, user_jobs

from hpclab.profiles import load_profiles

if TYPE_CHECKING:
    from .conftest import Cluster

__all__ = ["hpclab"]


def test_init_yes_then_up_with_what_it_wrote(cluster: Cluster, hpclab: Hpclab) -> None:
    hpclab.config = hpclab.home / "hpclab" / "config.toml"  # no config file yet
    logins = accepted("login", cluster.user)
    proc = hpclab("init", "probed", "--host", tc("TC_LOGIN_HOST"), "--ssh-options", f"-F {cluster.ssh_config}",
                  "--yes", "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert accepted("login", cluster.user) == logins + 1  # the probe and the doctor share one login
    assert doc["written"] == {"host": tc("TC_LOGIN_HOST"), "ssh_options": ["-F", str(cluster.ssh_config)],
                              "scheduler": "slurm", "partition": "debug", "time": "01:00:00",
                              "modules": ["jupyter"]}
    assert all(c["status"] in ("ok", "skip") for c in doc["checks"]), doc["checks"]
    assert stat.S_IMODE(hpclab.config.stat().st_mode) == 0o600
    assert load_profiles(hpclab.config) == {"probed": doc["written"]}
    assert user_jobs(cluster.user) == [] and session_dirs(cluster.user) == []  # init submitted nothing

    up = hpclab.json("up", "probed", "--detach", "--no-browser", timeout=300)
    assert up["state"] == "running" and up["jupyter_server"]
    assert lab_api(up["url"], "/api/status")["started"]
    stopped = hpclab.json("stop", up["id"])
    assert stopped == [{"id": up["id"], "job_id": up["job_id"], "state": "cancelled"}]

    again = hpclab("init", "probed", "--host", tc("TC_LOGIN_HOST"), "--yes", timeout=60)
    assert again.returncode == 2 and "profile 'probed' exists" in again.stderr
    assert load_profiles(hpclab.config) == {"probed": doc["written"]}
