"""Names that come from the cluster are data hpclab checks before it acts on them: a job is
hpclab's only by its exact tag, a session directory is removed only by a real session id, and a
rendezvous names a node and a socket, never an option or another session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import Local
from hpclab.cluster import Cluster, parse_snapshot
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


# -- node names become SSH destinations only when they are host names ------------------------------


@pytest.mark.parametrize("node", ["-oProxyCommand=x", "node1\n", "", "../etc", "node 1", "user@node1"])
def test_a_node_name_that_is_not_a_host_name_is_never_connected_to(tmp_path: Path, node: str) -> None:
    login = LocalRemote(tmp_path)
    cluster = Cluster(login, "none")
    with pytest.raises(ProtocolError, match="not a host name"):
        cluster.node(node)
    assert login.counters.connects == 0 and cluster._nodes == {}
    assert cluster.node("node1.cluster-a_2").host == "node1.cluster-a_2"


@pytest.mark.parametrize("started", ["-oProxyCommand=x", "node1 -v", "node1\nnode2", "\x1b[2Jnode1"])
def test_a_started_file_that_names_no_host_is_refused(started: str) -> None:
    out = f"@@started\n{started}\n@@rendezvous.json\n@@ended.json\n@@status\n"
    with pytest.raises(ProtocolError, match="started file"):
        parse_snapshot(get("none"), out, 0, None, "0123abcd")
    assert parse_snapshot(get("none"), "@@started\nnode1\n@@status\n", 0, None).started == "node1"


# -- cleanup and attach --profile: only the user's own session dirs, only jobs with hpclab's tag ------

FAKE_SQUEUE = """#!/bin/sh
# jobs from $HOME/../jobs ("ID NAME" lines); those scancel named are CANCELLED
jobs="$HOME/../jobs"; gone="$HOME/../cancelled"
case "$*" in
  *%j*) while read -r id name; do grep -qx "$id" "$gone" 2>/dev/null || echo "$id|$name"; done < "$jobs" ;;
  *) while read -r id name; do
       if grep -qx "$id" "$gone" 2>/dev/null; then s=CANCELLED; else s=RUNNING; fi
       echo "$id|$s|node1|None|N/A|20:00"
     done < "$jobs" ;;
esac
"""
FAKE_SCANCEL = '#!/bin/sh\necho "$1" >> "$HOME/../cancelled"\n'
SLURM_PROFILE = '\n[profiles.fake-slurm]\nhost = "localhost"\nscheduler = "slurm"\n'


def fake_slurm(local: Local, jobs: dict[str, str]) -> None:
    """A stand-in squeue/scancel on the "cluster": the user's jobs, id -> job name."""
    local.fake("squeue", FAKE_SQUEUE)
    local.fake("scancel", FAKE_SCANCEL)
    (local.root / "jobs").write_text("".join(f"{i} {n}\n" for i, n in jobs.items()))
    local.config(SLURM_PROFILE)


def session_dir(where: Path, sid: str, job: str, node: str = "node1") -> Path:
    where.mkdir(parents=True, mode=0o700)
    (where / "submitted").write_text(f"{job}\n")
    (where / "token").write_text(f"token-of-{sid}")
    (where / "rendezvous.json").write_text(json.dumps(RDV | {"session": sid, "job_id": job, "node": node}))
    return where


def cancelled(local: Local) -> list[str]:
    path = local.root / "cancelled"
    return path.read_text().split() if path.exists() else []


def test_cleanup_cancels_only_tagged_jobs_with_a_session_dir_of_the_users_own(local: Local) -> None:
    sessions = local.sessions_dir()
    fake_slurm(local, {"4242": "hpclab-0123abcd", "4243": "hpclab-89abcdef", "4244": "hpclab-../../data",
                       "4245": "analysis", "4246": "analysis-2", "4247": "hpclab-cafef00d"})
    session_dir(sessions / "0123abcd", "0123abcd", "4242")  # hpclab's: tagged, and its own dir
    # 4243: tagged, no session dir. 4244: a name that only starts like the tag.
    session_dir(sessions / "00c0ffee", "00c0ffee", "4245")  # a dir naming a job that is not tagged
    elsewhere = session_dir(local.root / "planted" / "cafef00d", "cafef00d", "4246")
    (sessions / "cafef00d").symlink_to(elsewhere)  # a link, naming the user's other job
    session_dir(sessions / "0ddba11a", "0ddba11a", "4247")  # the tag of another session id
    report = local.json("cleanup", "--profile", "fake-slurm", "--yes")
    assert report == [{"profile": "fake-slurm", "id": "0123abcd", "job_id": "4242", "cancelled": True}]
    assert cancelled(local) == ["4242"]
    assert sorted(p.name for p in sessions.iterdir()) == ["00c0ffee", "0ddba11a", "cafef00d"]
    assert (elsewhere / "submitted").exists()


def test_attach_by_profile_ignores_a_session_dir_swapped_for_a_link(local: Local) -> None:
    """With ~/.hpclab/sessions writable by others, someone moves the user's session dir away and
    puts a link to their own files in its place: their node, their token. attach does not read it."""
    sessions = local.sessions_dir()
    fake_slurm(local, {"4242": "hpclab-0123abcd"})
    planted = session_dir(local.root / "planted" / "0123abcd", "0123abcd", "4242", node="evil-node")
    (sessions).mkdir(parents=True)
    (sessions / "0123abcd").symlink_to(planted)
    rc, _out, err = local.hpclab("attach", "--profile", "fake-slurm", "--detach", "--no-browser")
    assert rc == 9 and "no running hpclab session" in err, err
    assert local.remote.counters.connects <= 1  # the login node only; no node connection made
    assert not list((local.state / "state" / "sessions").glob("*.json"))
