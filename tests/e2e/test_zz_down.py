"""`scripts/testcluster down` leaves nothing of the cluster behind; `up` brings it back.

This runs last in the session (marker cluster_restart, see tests/conftest.py): it takes the cluster
away from every other e2e test. It ends by bringing the cluster up again, so that the state after
the session is the one scripts/test expects to tear down.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .conftest import Cluster

pytestmark = pytest.mark.cluster_restart

CLUSTER_DAEMONS = {"slurmctld", "slurmd", "slurmdbd", "slurmstepd", "sge_qmaster", "sge_execd", "sge_shepherd"}


def ns_inode(pid: int, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except OSError:
        return None


def live_processes() -> dict[int, tuple[str, str]]:
    """pid -> (comm, cmdline) of every process that is not a zombie."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            if "\nState:\tZ" in status:
                continue
            comm = (entry / "comm").read_text().strip()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        procs[int(entry.name)] = (comm, cmdline)
    return procs


def recorded_pids(cluster: Cluster) -> dict[int, str]:
    """pid -> comm for every pid file the cluster keeps, while those processes run."""
    files = [*(cluster.dir / "run").glob("*.pid"), cluster.dir / "mysql/run/mariadbd.pid",
             cluster.dir / "slurm/run/slurmdbd.pid"]  # fmt: skip
    pids = {}
    for f in files:
        try:
            pid = int(f.read_text().split()[0])
            pids[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
        except (OSError, ValueError, IndexError):
            continue
    return pids


def test_down_stops_everything_and_up_restores_the_cluster(cluster: Cluster) -> None:
    holders = [int((cluster.dir / "run" / f"holder-{h}.pid").read_text()) for h in cluster.hosts]
    namespaces = {("net", ns_inode(p, "net")) for p in holders} | {("mnt", ns_inode(p, "mnt")) for p in holders}
    assert None not in {ino for _, ino in namespaces}
    daemons = recorded_pids(cluster)
    assert {"slurmctld", "slurmd", "slurmdbd", "mariadbd", "sshd", "sleep"} <= set(daemons.values())

    # Something for down to cancel and sweep: a running job, and an open ssh session.
    job_id = cluster.ssh(cluster.user, ["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "sleep 300"]).stdout
    job_id = job_id.strip().split(";")[0]
    deadline = time.monotonic() + 30
    while cluster.job_state(job_id) != "RUNNING":
        assert time.monotonic() < deadline, f"job {job_id} did not start"
        time.sleep(0.2)
    session = subprocess.Popen(
        [*cluster.ssh_argv(cluster.user), "sleep 300"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip

    try:
        down = cluster.testcluster("down")
        assert down.returncode == 0, down.stdout + down.stderr
        assert re.search(r"^cancelling \d+ job", down.stdout, re.M), down.stdout
        assert session.wait(timeout=15) != 0, "the ssh session outlived its server"

        netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
        assert "hpclab-" not in netns
        assert subprocess.run(["ip", "link", "show", "hpclab-lap"], capture_output=True).returncode != 0
        route = subprocess.run(["ip", "route", "show", "type", "unreachable", "10.200.0.0/16"],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
        assert "10.200.0.0/16" in route, "down keeps the unreachable route"

        left = []
        for pid, (comm, cmdline) in live_processes().items():
            if {("net", ns_inode(pid, "net")), ("mnt", ns_inode(pid, "mnt"))} & namespaces:
                left.append(f"{pid} {comm} (in a cluster namespace)")
            elif comm in CLUSTER_DAEMONS:
                left.append(f"{pid} {comm}")
            elif daemons.get(pid) == comm:
                left.append(f"{pid} {comm} (from a pid file)")
            elif comm in ("mariadbd", "sshd") and str(cluster.dir) in cmdline:
                left.append(f"{pid} {comm}: {cmdline}")
        assert not left, "left running after down:\n" + "\n".join(left)
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
        up = cluster.testcluster("up")
        assert up.returncode == 0, up.stdout + up.stderr
    assert cluster.testcluster("status").returncode == 0
