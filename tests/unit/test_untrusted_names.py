"""Names that come from the cluster are data hpclab checks before it acts on them: a job is
hpclab's only by its exact tag, a session directory is removed only by a real session id, and a
rendezvous names a node and a socket, never an option or another session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpclab.cluster import Cluster
from hpclab.errors import ProtocolError
from hpclab.remote import LocalRemote
from hpclab.schedulers import get
from hpclab.sessiondir import Rendezvous


def test_only_jobs_named_exactly_as_hpclab_names_them_are_its_own() -> None:
    out = "\n".join(["4242|hpclab-0123abcd", "4243|hpclab-../../data", "4244|hpclab-0123abcdx",
                     "4245|myhpclab-0123abcd", "4246|hpclab-0123ABCD", "|hpclab-0123abcd"])
    assert get("slurm").parse_tagged(out) == [("0123abcd", "4242")]


@pytest.mark.parametrize("session_id", ["../../data", "0123abcd/..", "", "*", "0123abcd0"])
def test_a_session_directory_is_removed_only_by_a_session_id(tmp_path: Path, session_id: str) -> None:
    login = LocalRemote(tmp_path)
    Cluster(login, "none").remove_session_dir(session_id)
    assert login.counters.commands == 0
    Cluster(login, "none").remove_session_dir("0123abcd")
    assert login.counters.commands == 1


RDV = {"version": 1, "session": "0123abcd", "job_id": "41", "node": "node1", "user": "u", "transport": "socket",
       "address": "", "port": 0, "socket": "/tmp/x/jupyter.sock", "pid": 7, "runtime_dir": "/tmp/x",
       "jupyter_server": "2.21.1"}


def test_a_good_rendezvous_is_read() -> None:
    assert Rendezvous.parse(json.dumps(RDV), "0123abcd").node == "node1"


@pytest.mark.parametrize(("change", "why"), [
    ({"node": "-oProxyCommand=x"}, "not a host name"),
    ({"node": "../etc"}, "not a host name"),
    ({"node": "node1\nx"}, "not a host name"),
    ({"session": "ffffffff"}, "belongs to session"),
    ({"version": 2}, "version 2"),
    ({"socket": "relative.sock"}, "not an absolute path"),
    ({"transport": "tcp", "port": 0, "address": "10.0.0.1"}, "not a TCP port"),
    ({"transport": "tcp", "port": 8888, "address": "-x"}, "not an address"),
    ({"transport": "udp"}, "unknown transport"),
    ({"port": "8888"}, "mistypes"),
])
def test_a_rendezvous_that_is_not_usable_is_refused(change: dict[str, object], why: str) -> None:
    with pytest.raises(ProtocolError, match=why):
        Rendezvous.parse(json.dumps(RDV | change), "0123abcd")
