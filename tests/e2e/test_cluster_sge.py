"""Grid Engine in the test cluster: qsub from the login node, jobs on the nodes, qstat and qacct."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .conftest import Cluster

# The job says it started, then waits for the test to release it: qstat sees it running, deterministically.
JOB_SCRIPT = """#!/bin/bash
#$ -N tc-e2e-sge
#$ -S /bin/bash
#$ -j y
#$ -o {out}
echo "user=$(id -un) host=$(hostname) job=$JOB_ID queue=$QUEUE" > {started}
for _ in $(seq 600); do [ -e {release} ] && exit 0; sleep 0.1; done
exit 3
"""


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.2)


def test_qsub_runs_on_a_node_as_the_user_and_qstat_and_qacct_see_it(cluster: Cluster) -> None:
    if not cluster.sge:
        pytest.fail("Grid Engine is off in this test cluster (HPCLAB_TC_SGE=0)")
    base = cluster.home() / f"tc-e2e-{secrets.token_hex(4)}" / "sge"
    cluster.ssh(cluster.user, ["mkdir", str(base.parent)])
    try:
        check_qsub_qstat_qacct(cluster, base)
    finally:
        cluster.ssh(cluster.user, ["rm", "-rf", str(base.parent)])


def check_qsub_qstat_qacct(cluster: Cluster, base: Path) -> None:
    started, release, out = (base.with_suffix(s) for s in (".started", ".release", ".out"))

    script = JOB_SCRIPT.format(out=out, started=started, release=release)
    job_id = cluster.ssh(cluster.user, ["qsub", "-terse"], input=script).stdout.strip()
    assert job_id.isdigit(), job_id

    fields = wait_until(lambda: started.exists() and started.read_text().strip(), 60, "the job to start")
    job = dict(word.split("=", 1) for word in fields.split())
    assert job["user"] == cluster.user
    assert job["host"] in cluster.nodes
    assert job["job"] == job_id
    assert job["queue"] == "all.q"

    # qstat, as the user on the login node: the job is there, running, on that node. For a moment
    # after the start it may still say "t" (transferring): the execd has not reported back yet.
    def qstat_row() -> list[str] | None:
        rows = [line.split() for line in cluster.ssh(cluster.user, ["qstat"]).stdout.splitlines()[2:]]
        row = next((r for r in rows if r and r[0] == job_id), None)
        return row if row and row[4] != "t" else None

    row = wait_until(qstat_row, 20, "qstat to show the job running")
    assert row[3] == cluster.user
    assert row[4] == "r"
    assert row[7] == f"all.q@{job['host']}"

    release.touch()
    wait_until(lambda: job_id not in cluster.ssh(cluster.user, ["qstat"]).stdout, 30, "the job to leave qstat")

    def accounting() -> dict[str, str] | None:
        result = cluster.ssh(cluster.user, ["qacct", "-j", job_id], check=False)
        if result.returncode != 0:
            return None
        return dict(line.split(None, 1) for line in result.stdout.splitlines() if len(line.split(None, 1)) == 2)

    record = wait_until(accounting, 30, "qacct to know the job")
    assert record["owner"].strip() == cluster.user
    assert record["hostname"].strip() == job["host"]
    assert record["exit_status"].strip() == "0"
    assert record["failed"].strip() == "0"
