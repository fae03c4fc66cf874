"""The test cluster as real sites are: Lmod modules, a second environment, pam_slurm_adopt on the
nodes, node host keys published by the login node only, a tcsh user whose rc files print banners.
And hpclab on it: a socket lab from a laptop that knows only the login node's key, a node key
the login node does not vouch for refused, every command for the tcsh user with banners."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from lab import Hpclab, hpclab, session_dirs, tcx, user_jobs, wait_for

if TYPE_CHECKING:
    from .conftest import Cluster

__all__ = ["hpclab"]

PUBLISHED = "/etc/ssh/ssh_known_hosts"


# --- modules and environments -------------------------------------------------------------------


def test_module_works_in_non_interactive_shells_for_bash_and_tcsh_users(cluster: Cluster) -> None:
    for user in (cluster.user, cluster.user3):
        listed = cluster.ssh(user, "module -t avail")
        avail = (listed.stdout + listed.stderr).split()  # Lmod lists on stderr
        for name in ("jupyter/", "python/", "env2/", "broken/"):
            assert any(m.startswith(name) for m in avail), (user, name, avail)
        found = cluster.ssh(user, "module load jupyter; which jupyter-lab").stdout.strip()
        assert found == f"{cluster.jupyter_venv}/bin/jupyter-lab", user


def test_a_module_with_a_missing_prerequisite_fails_to_load(cluster: Cluster) -> None:
    out = cluster.ssh(cluster.user, "module load broken && echo LOADED; module -t list 2>&1", check=False)
    assert "LOADED" not in out.stdout
    assert "cuda" in out.stderr + out.stdout
    assert "broken" not in out.stdout


def test_env2_has_ipykernel_and_a_marker_package_that_jupyters_venv_lacks(cluster: Cluster) -> None:
    out = cluster.ssh(cluster.user3, "module load env2; python -c 'import ipykernel, tabulate, sys; print(sys.prefix)'")
    assert out.stdout.strip() == str(cluster.env2_venv)
    bare = cluster.exec("login", [f"{cluster.jupyter_venv}/bin/python", "-c", "import tabulate"], check=False)
    assert bare.returncode != 0, "the marker is in the JupyterLab venv too: it marks nothing"


def test_module_works_in_a_batch_job_submitted_from_tcsh(cluster: Cluster) -> None:
    """Lmod's csh init exports BASH_ENV; sbatch carries it into the job's bash, as at sites."""
    out = f"/home/{cluster.user3}/tc-module-job.out"
    script = "#!/bin/bash\nmodule load env2 && python -c 'import tabulate; print(\"MODULE-OK\")'\n"
    job = cluster.ssh(cluster.user3, ["sbatch", "--parsable", "-t", "1", "-o", out], input=script).stdout.strip()
    assert job.isdigit(), job
    cluster.wait_job(job)
    assert Path(out).read_text().strip() == "MODULE-OK"
    Path(out).unlink()


# --- pam_slurm_adopt ----------------------------------------------------------------------------


def test_a_node_admits_a_user_only_while_they_have_a_job_there(cluster: Cluster) -> None:
    user = cluster.user2
    refused = cluster.ssh(user, ["hostname"], host="node1", check=False)
    assert refused.returncode == 255, refused.stdout
    # Someone else's job on the node, or one's own on another node, does not count.
    with cluster.job_on(cluster.user, "node1"), cluster.job_on(user, "node2"):
        assert cluster.ssh(user, ["hostname"], host="node1", check=False).returncode == 255
    with cluster.job_on(user, "node1") as job_id:
        assert cluster.ssh(user, ["hostname"], host="node1").stdout.strip() == "node1"
        # Adopted: PAM ran in sshd's privileged process for the connection (the shell's
        # grandparent), and the job's extern step took that pid in.
        monitor = cluster.ssh(user, 'ps -o ppid= -p "$PPID"', host="node1").stdout.strip()
        assert monitor.isdigit()
        wanted = f"for StepId={job_id}.extern, pid {monitor}"
        wait_for(lambda: wanted in cluster.log("slurmd-node1").read_text(), 10, what=f"'{wanted}' in slurmd's log")
    assert cluster.wait_job(job_id, ("CANCELLED",)) == "CANCELLED"
    # Access ends with the job (its extern step ends a moment after the job is cancelled).
    wait_for(lambda: cluster.ssh(user, ["true"], host="node1", check=False).returncode == 255, 30,
             what="node1 to refuse hpcuser2 again")
    log = cluster.sshd_log("node1").read_text()
    assert f"Access denied for user {user} by PAM account configuration" in log


def test_only_the_nodes_have_pam_slurm_adopt(cluster: Cluster) -> None:
    for node in cluster.nodes:
        assert "pam_slurm_adopt" in cluster.exec(node, ["cat", "/etc/pam.d/sshd"]).stdout
    assert "pam_slurm_adopt" not in cluster.exec("login", ["cat", "/etc/pam.d/sshd"]).stdout
    assert "pam_slurm_adopt" not in Path("/etc/pam.d/sshd").read_text()
    assert cluster.ssh(cluster.user2, ["id", "-un"]).stdout.strip() == cluster.user2  # login: no job needed


# --- published host keys ------------------------------------------------------------------------


def published_lines(cluster: Cluster) -> dict[str, str]:
    """host -> 'type key' as the login node publishes them."""
    text = cluster.exec("login", ["cat", PUBLISHED]).stdout
    return {ln.split()[0].split(",")[0]: " ".join(ln.split()[1:3]) for ln in text.splitlines()
            if ln and not ln.startswith("#")}


def test_the_login_node_publishes_every_node_key_and_the_laptop_knows_only_the_login_node(cluster: Cluster) -> None:
    published = published_lines(cluster)
    pinned = {ln.split()[0].split(",")[0]: " ".join(ln.split()[1:3])
              for ln in cluster.known_hosts.read_text().splitlines() if ln}
    for node in cluster.nodes:
        assert published[node] == pinned[node]
    site = cluster.site_known_hosts.read_text().splitlines()
    assert len(site) == 1 and site[0].split()[0] == cluster.login_addr
    laptop = Path(PUBLISHED).read_text() if Path(PUBLISHED).exists() else ""
    assert not any(published[n].split()[1] in laptop for n in cluster.nodes)


@contextlib.contextmanager
def published_on_login(cluster: Cluster, text: str) -> Iterator[None]:
    """The login node publishes `text` instead, for the duration (a bind mount in its namespace;
    the file lives in the state directory, which the login node sees: its /tmp is its own)."""
    fake = cluster.dir / "etc" / f"published-by-test-{os.getpid()}"
    fake.write_text(text)
    fake.chmod(0o644)
    cluster.exec("login", ["mount", "--bind", str(fake), PUBLISHED])
    try:
        yield
    finally:
        cluster.exec("login", ["umount", PUBLISHED])
        fake.unlink()


def test_site_profile_gives_a_socket_lab_with_node_keys_from_the_login_node(hpclab: Hpclab, cluster: Cluster) -> None:
    info = hpclab.json("up", "testcluster-site", "--detach", "--no-browser")
    assert info["state"] == "running" and info["transport"] == "socket"
    with urllib.request.urlopen(info["url"], timeout=30) as resp:
        assert resp.status == 200
    # The laptop's own configuration does not know the node: plain ssh, with the job there, fails.
    plain = subprocess.run(["ssh", "-F", str(cluster.site_ssh_config), info["node"], "true"],
                           capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert plain.returncode == 255 and "Host key verification failed" in plain.stderr
    hpclab.json("stop", info["id"])


@pytest.mark.parametrize("transport", ["socket", "auto"])
def test_a_node_key_the_login_node_does_not_publish_is_refused(hpclab: Hpclab, cluster: Cluster,
                                                               transport: str) -> None:
    """In auto transport too: a host-key problem is never a reason to fall back to tcp."""
    keys = published_lines(cluster)
    swapped = "".join(f"{n} {keys[m]}\n" for n, m in zip(cluster.nodes, reversed(cluster.nodes), strict=True))
    only_login = f"login {keys['login']}\n"
    for text, what in ((swapped, "mismatching"), (only_login, "unpublished")):
        with published_on_login(cluster, text):
            proc = hpclab("up", "testcluster-site", "--transport", transport, "--detach", "--no-browser")
        assert proc.returncode == 3, (what, proc.stderr)
        assert re.search(r"the host key of node\d (has changed|is not known or does not match)", proc.stderr), \
            (what, proc.stderr)
        assert "transport: tcp" not in proc.stderr, (what, proc.stderr)
        wait_for(lambda: user_jobs(cluster.user) == [], 30, what=f"the job to be gone ({what})")
        assert hpclab.json("list") == [], what


# --- tcsh, banners ------------------------------------------------------------------------------


def test_the_rc_files_really_print_a_banner_in_non_interactive_shells(cluster: Cluster) -> None:
    for user in (cluster.user, cluster.user3):
        raw = subprocess.run([*cluster.ssh_argv(user), "true"], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
        assert raw.stdout == cluster.banner, user
    shell = cluster.exec("login", ["getent", "passwd", cluster.user3]).stdout.strip().split(":")[-1]
    assert shell == "/usr/bin/tcsh"


def test_every_command_works_for_the_tcsh_user_and_the_banner_is_in_no_value(hpclab: Hpclab, cluster: Cluster,
                                                                             tmp_path: Path) -> None:
    user = cluster.user3
    info = hpclab.json("up", "testcluster-3", "--detach", "--no-browser")
    assert info["state"] == "running"
    job_id, node, url = info["job_id"], info["node"], info["url"]
    # Every value hpclab read matches the cluster's own, asked as root.
    assert user_jobs(user) == [job_id]
    squeue_node = tcx("login", ["squeue", "-h", "-j", job_id, "-o", "%N"]).stdout.strip()
    assert node == squeue_node
    token = re.search(r"token=([^&]+)", url).group(1)  # type: ignore[union-attr]
    on_cluster = Path(f"/home/{user}/.hpclab/sessions/{info['id']}/token").read_text()
    assert token == on_cluster
    for word in ("chatty", "node9", "banner"):
        assert word not in json.dumps(info), info
    with urllib.request.urlopen(url, timeout=30) as resp:
        assert resp.status == 200

    listed = hpclab.json("list")
    assert [(s["id"], s["job_id"], s["node"], s["state"]) for s in listed] == [(info["id"], job_id, node, "running")]

    other = Hpclab(home=tmp_path / "second-laptop", config=hpclab.config)
    other.home.mkdir()
    attached = other.json("attach", "--profile", "testcluster-3", info["id"], "--detach", "--no-browser")
    assert attached["job_id"] == job_id and attached["node"] == node
    assert re.search(r"token=([^&]+)", attached["url"]).group(1) == token  # type: ignore[union-attr]
    with urllib.request.urlopen(attached["url"], timeout=30) as resp:
        assert resp.status == 200

    logs = hpclab("logs", info["id"])
    assert logs.returncode == 0, logs.stderr
    assert token not in logs.stdout
    assert not any(line in logs.stdout.splitlines() for line in cluster.banner.splitlines()), logs.stdout

    # Stopped from the second laptop: the job, the session directory, its own tunnel.
    stopped = other.json("stop", info["id"])
    assert stopped[0]["state"] == "cancelled"  # SLURM's word for a job scancel ended
    assert user_jobs(user) == []
    assert info["id"] not in session_dirs(user)
