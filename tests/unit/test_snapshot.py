"""What one poll of the cluster saw, parsed from the POLL script's sectioned output."""

from __future__ import annotations

from hpclab.schedulers import JobState, get
from hpclab.session import parse_snapshot, version_tuple

OUT = """@@started
node1
@@rendezvous.json
{"version": 1, "node": "node1", "transport": "socket", "socket": "/tmp/x/jupyter.sock", "port": 0}
@@ended.json
@@status
41|RUNNING|node1|None|2026-11-25T20:31:37|29:58
40|PENDING||Resources|2026-11-25T21:00:00|30:00
"""


def test_snapshot_sections() -> None:
    snap = parse_snapshot(get("slurm"), OUT, 0, "41")
    assert snap.started == "node1"
    assert snap.rendezvous is not None and snap.rendezvous["socket"] == "/tmp/x/jupyter.sock"
    assert snap.ended is None
    assert snap.job is not None and snap.job.state is JobState.RUNNING and snap.job.time_left == 1798


def test_failed_status_query_is_unknown_not_ended() -> None:
    snap = parse_snapshot(get("slurm"), "@@started\n@@rendezvous.json\n@@ended.json\n@@status\n", 1, "41")
    assert snap.job is not None and snap.job.state is JobState.UNKNOWN


def test_partial_rendezvous_is_ignored() -> None:
    snap = parse_snapshot(get("slurm"), '@@rendezvous.json\n{"node": "no\n@@status\n', 0, None)
    assert snap.rendezvous is None and snap.job is None


def test_version_tuple() -> None:
    assert version_tuple("2.21.1") == (2, 21, 1)
    assert version_tuple("2.17.0rc1") == (2, 17, 0)
    assert version_tuple("2.18.0.dev0") == (2, 18, 0)
    assert version_tuple("1.24") < (2, 18) <= version_tuple("2.18")
