"""What one poll of the cluster saw, parsed from the POLL script's sectioned output."""

from __future__ import annotations

import pytest

from hpclab.cluster import parse_snapshot
from hpclab.errors import ProtocolError
from hpclab.launch import version_tuple
from hpclab.schedulers import JobState, get

OUT = """@@started
node1
@@rendezvous.json
{"version": 1, "session": "0123abcd", "job_id": "41", "node": "node1", "user": "hpcuser", "transport": "socket", \
"address": "", "port": 0, "socket": "/tmp/x/jupyter.sock", "pid": 4242, "runtime_dir": "/tmp/x", \
"jupyter_server": "2.21.1"}
@@ended.json
@@status
41|RUNNING|node1|None|2026-11-25T20:31:37|29:58
40|PENDING||Resources|2026-11-25T21:00:00|30:00
"""


def test_snapshot_sections() -> None:
    snap = parse_snapshot(get("slurm"), OUT, 0, "41")
    assert snap.started == "node1"
    assert snap.rendezvous is not None and snap.rendezvous.socket == "/tmp/x/jupyter.sock"
    assert snap.rendezvous.target == "/tmp/x/jupyter.sock" and snap.rendezvous.node == "node1"
    assert snap.ended is None
    assert snap.job is not None and snap.job.state is JobState.RUNNING and snap.job.time_left == 1798


def test_failed_status_query_is_unknown_not_ended() -> None:
    snap = parse_snapshot(get("slurm"), "@@started\n@@rendezvous.json\n@@ended.json\n@@status\n", 1, "41")
    assert snap.job is not None and snap.job.state is JobState.UNKNOWN


def test_an_unreadable_rendezvous_is_an_error_that_says_so() -> None:
    # The job writes the file atomically: a reader never sees half of it, so bad text is an error.
    with pytest.raises(ProtocolError, match="not valid JSON"):
        parse_snapshot(get("slurm"), '@@rendezvous.json\n{"node": "no\n@@status\n', 0, None)


def test_no_rendezvous_yet() -> None:
    snap = parse_snapshot(get("slurm"), "@@started\nnode1\n@@rendezvous.json\n@@ended.json\n@@status\n", 0, None)
    assert snap.started == "node1" and snap.rendezvous is None and snap.ended is None and snap.job is None


def test_version_tuple() -> None:
    assert version_tuple("2.21.1") == (2, 21, 1)
    assert version_tuple("2.17.0rc1") == (2, 17, 0)
    assert version_tuple("2.18.0.dev0") == (2, 18, 0)
    assert version_tuple("1.24") < (2, 18) <= version_tuple("2.18")
