"""The test cluster itself: what hpclab's end-to-end tests take for granted about it.

Each test names one property of the cluster and checks it through the real parts: OpenSSH from
the laptop namespace, SLURM in the login and node namespaces, the shared home, the network.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from .conftest import Cluster

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# --- logging in ----------------------------------------------------------------------------------


def test_each_user_logs_in_to_the_login_node_with_their_key(cluster: Cluster) -> None:
    for user in (cluster.user, cluster.user2):
        out = cluster.ssh(user, 'echo "$(id -un) $(hostname)"').stdout.split()
        assert out == [user, "login"]


def test_nodes_are_reached_through_the_login_node(cluster: Cluster) -> None:
    for node in cluster.nodes:
        with cluster.job_on(cluster.user, node):
            assert cluster.ssh(cluster.user, ["hostname"], host=node).stdout.strip() == node
    with cluster.job_on(cluster.user2, "node1"):
        assert cluster.ssh(cluster.user2, ["id", "-un"], host="node1").stdout.strip() == cluster.user2


def test_host_keys_are_checked_and_differ_per_host(cluster: Cluster, tmp_path: Path) -> None:
    keys = [line.split()[1:3] for line in cluster.known_hosts.read_text().splitlines() if line.strip()]
    assert len(keys) == len(cluster.hosts)
    assert len({tuple(k) for k in keys}) == len(cluster.hosts), "each host has its own host key"

    empty = tmp_path / "empty_known_hosts"
    empty.touch()
    unknown = subprocess.run(
        ["ssh", "-F", str(cluster.ssh_config), "-o", f"UserKnownHostsFile={empty}", "tc-login", "true"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert unknown.returncode == 255
    assert "Host key verification failed" in unknown.stderr

    # node1's key presented for the login node's address: ssh must refuse it.
    node1_key = next(line for line in cluster.known_hosts.read_text().splitlines() if line.startswith("node1,"))
    swapped = tmp_path / "swapped_known_hosts"
    swapped.write_text(f"{cluster.login_addr} {' '.join(node1_key.split()[1:3])}\n")
    wrong = subprocess.run(
        ["ssh", "-F", str(cluster.ssh_config), "-o", f"UserKnownHostsFile={swapped}", "tc-login", "true"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert wrong.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in wrong.stderr


def test_sshd_allows_agent_forwarding_so_tests_can_prove_hpclab_never_uses_it(cluster: Cluster, tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(cluster.key)], env=env, check=True, capture_output=True, timeout=10)
        forwarded = subprocess.run(
            [*cluster.ssh_argv(cluster.user), "-A", 'echo "$SSH_AUTH_SOCK"; ssh-add -l'],
            env=env, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert forwarded.returncode == 0, forwarded.stderr
        assert forwarded.stdout.startswith(cluster.banner)  # hpcuser's ~/.bashrc
        remote_sock, listing = forwarded.stdout.removeprefix(cluster.banner).split("\n", 1)
        assert remote_sock.startswith("/tmp/ssh-")
        assert "ED25519" in listing
    finally:
        agent.terminate()
        agent.wait(timeout=10)


# --- batch jobs ----------------------------------------------------------------------------------

JOB_SCRIPT = """#!/bin/bash
#SBATCH -J tc-e2e
#SBATCH -o {out}
#SBATCH -t 1
echo "user=$(id -un)"
echo "host=$(hostname)"
echo "slurm_node=$SLURMD_NODENAME"
echo "job=$SLURM_JOB_ID"
"""


@dataclass(frozen=True)
class FinishedJob:
    job_id: str
    output: Path
    fields: dict[str, str]


@pytest.fixture(scope="module")
def finished_job(cluster: Cluster) -> Iterator[FinishedJob]:
    """A batch job submitted over ssh as hpcuser, the script on stdin, waited for until COMPLETED.
    Its output directory in the user's home is removed afterwards."""
    outdir = cluster.home() / f"tc-e2e-{secrets.token_hex(4)}"
    cluster.ssh(cluster.user, ["mkdir", str(outdir)])
    try:
        output = outdir / "job.out"
        submitted = cluster.ssh(cluster.user, ["sbatch", "--parsable"], input=JOB_SCRIPT.format(out=output))
        # sbatch --parsable prints "id" or "id;cluster"
        job_id = submitted.stdout.strip().split(";")[0]
        assert job_id.isdigit(), submitted.stdout
        cluster.wait_job(job_id, timeout=60)
        fields = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
        yield FinishedJob(job_id, output, fields)
    finally:
        cluster.ssh(cluster.user, ["rm", "-rf", str(outdir)])


def test_batch_job_runs_on_a_compute_node_as_the_submitting_user(cluster: Cluster, finished_job: FinishedJob) -> None:
    assert finished_job.fields["user"] == cluster.user
    assert finished_job.fields["host"] in cluster.nodes
    assert finished_job.fields["slurm_node"] == finished_job.fields["host"]
    assert finished_job.fields["job"] == finished_job.job_id


def test_job_output_lands_in_the_shared_home(cluster: Cluster, finished_job: FinishedJob) -> None:
    # Written on the node, read here on the laptop and on the login node: one /home for all.
    stat = finished_job.output.stat()
    assert stat.st_uid == int(cluster.exec("login", ["id", "-u", cluster.user]).stdout)
    on_login = cluster.ssh(cluster.user, ["cat", str(finished_job.output)]).stdout
    assert on_login == finished_job.output.read_text()


def test_sacct_reports_the_finished_job(cluster: Cluster, finished_job: FinishedJob) -> None:
    # slurmctld hands job records to slurmdbd asynchronously: give it a moment.
    argv = ["sacct", "-n", "-X", "-P", "-j", finished_job.job_id, "-o", "JobID,User,State,NodeList,Account"]
    deadline = time.monotonic() + 30
    row: list[str] = []
    while time.monotonic() < deadline:
        lines = cluster.ssh(cluster.user, argv).stdout.splitlines()
        row = lines[0].split("|") if lines else []
        if row and row[2] == "COMPLETED":
            break
        time.sleep(0.5)
    assert row == [finished_job.job_id, cluster.user, "COMPLETED", finished_job.fields["host"], "research"]


def test_jobs_of_the_second_user_run_as_that_user(cluster: Cluster) -> None:
    out = cluster.ssh(cluster.user2, ["srun", "-t", "1", "-N", "1", "id", "-un"], timeout=90).stdout
    assert out.strip() == cluster.user2


def test_partitions_debug_default_long_and_shared(cluster: Cluster) -> None:
    out = cluster.ssh(cluster.user, ["sinfo", "-h", "-o", "%P %a %D %h"]).stdout.split("\n")
    rows = {line.split()[0]: line.split()[1:] for line in out if line.strip()}
    n = str(len(cluster.nodes))
    # shared: idle labs share CPUs (bench/scale.py runs 20 of them on 4 CPUs)
    assert rows == {"debug*": ["up", n, "NO"], "long": ["up", n, "NO"], "shared": ["up", n, "FORCE:12"]}


# --- network -------------------------------------------------------------------------------------


def test_laptop_cannot_reach_the_cluster_network_directly(cluster: Cluster) -> None:
    for addr in ("10.200.1.1", "10.200.1.11", "10.200.1.12"):
        with pytest.raises(OSError) as refused:
            socket.create_connection((addr, 22), timeout=5).close()
        # Refused here, by the laptop's own unreachable route: no packet leaves for that address.
        assert refused.value.errno == errno.EHOSTUNREACH, f"{addr}: {refused.value!r}"
    socket.create_connection((cluster.login_addr, 22), timeout=5).close()
    assert cluster.exec("login", ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "0"


def test_each_host_has_its_own_tmp(cluster: Cluster) -> None:
    name = f"/tmp/tc-e2e-{secrets.token_hex(4)}"
    cluster.exec("node1", ["touch", name], user=cluster.user)
    try:
        assert cluster.exec("node1", ["test", "-e", name], check=False).returncode == 0
        for host in ("login", "node2"):
            assert cluster.exec(host, ["test", "-e", name], check=False).returncode == 1
        assert not Path(name).exists()
    finally:
        cluster.exec("node1", ["rm", "-f", name])


SERVER = """
import functools, http.server, pathlib, sys
root = pathlib.Path(sys.argv[1])
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
server = http.server.ThreadingHTTPServer((sys.argv[2], 0), handler)
(root / "port").write_text(str(server.server_address[1]))
server.serve_forever()
"""


@dataclass(frozen=True)
class TunnelledServer:
    url: str
    token: str


def free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="module")
def tunnelled_server(cluster: Cluster) -> Iterator[TunnelledServer]:
    """An HTTP server run by hpcuser on node1, in node1's private /tmp, reached by ssh -L via login."""
    token = secrets.token_hex(8)
    root = f"/tmp/tc-e2e-web-{token}"
    cluster.exec("node1", ["sh", "-c", f"mkdir {root} && echo '<p id=token>{token}</p>' > {root}/index.html"],
                 user=cluster.user)  # fmt: skip
    server = cluster.spawn("node1", ["/usr/bin/python3", "-c", SERVER, root, "node1"], user=cluster.user)
    tunnel = None
    try:
        deadline = time.monotonic() + 15
        port = ""
        while not port and time.monotonic() < deadline:
            port = cluster.exec("node1", ["cat", f"{root}/port"], check=False).stdout.strip()
            time.sleep(0.1)
        assert port.isdigit(), "the server on node1 did not start"
        local = free_local_port()
        tunnel = subprocess.Popen(
            [*cluster.ssh_argv(cluster.user), "-N", "-o", "ExitOnForwardFailure=yes",
             "-L", f"127.0.0.1:{local}:node1:{port}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        yield TunnelledServer(url=f"http://127.0.0.1:{local}/index.html", token=token)
    finally:
        for proc in (tunnel, server):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=10)
        cluster.exec("node1", ["rm", "-rf", root])


def test_listener_on_a_node_is_reachable_from_the_laptop_through_ssh_via_login(
    cluster: Cluster, tunnelled_server: TunnelledServer
) -> None:
    body = wait_http(tunnelled_server.url, timeout=20)
    assert tunnelled_server.token in body
    # The page lives in node1's private /tmp: no other host could have served it.
    assert cluster.exec("login", ["ls", "/tmp"]).stdout.count(tunnelled_server.token) == 0


def test_headless_chromium_renders_a_page_from_a_node(cluster: Cluster, tunnelled_server: TunnelledServer) -> None:
    from playwright.sync_api import sync_playwright

    wait_http(tunnelled_server.url, timeout=20)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(cluster.chromium),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--no-first-run"],
        )  # fmt: skip
        try:
            page = browser.new_page()
            page.goto(tunnelled_server.url)
            assert page.locator("#token").inner_text() == tunnelled_server.token
        finally:
            browser.close()


# --- software and configuration ------------------------------------------------------------------


def test_jupyterlab_is_available_through_setup_but_not_on_the_default_path(cluster: Cluster) -> None:
    with cluster.job_on(cluster.user, "node1"):
        bare = cluster.ssh(cluster.user, "command -v jupyter", host="node1", check=False)
        assert bare.returncode != 0, f"jupyter is on the default PATH: {bare.stdout}"
        activated = cluster.ssh(
            cluster.user,
            f"source {cluster.jupyter_venv}/bin/activate && jupyter server --version && "
            "python -c 'import jupyterlab, ipykernel; print(jupyterlab.__version__)'",
            host="node1",
        ).stdout.split()
    assert activated[0].startswith("2."), f"jupyter_server 2.x expected, got {activated[0]}"
    assert int(activated[1].split(".")[0]) >= 4
    overrides = cluster.jupyter_venv / "share/jupyter/lab/settings/overrides.json"
    assert '"checkForUpdates": false' in overrides.read_text()


def test_hpclab_config_has_the_testcluster_profiles(cluster: Cluster) -> None:
    profiles = tomllib.loads(cluster.config.read_text())["profiles"]
    ssh_options = ["-F", str(cluster.ssh_config)]
    assert profiles["testcluster"]["host"] == "tc-login"
    assert profiles["testcluster-2"]["host"] == "tc-login-2"
    for name in ("testcluster", "testcluster-2"):
        assert profiles[name]["ssh_options"] == ssh_options
        assert profiles[name]["scheduler"] == "slurm"
        assert profiles[name]["partition"] == "debug"
        assert profiles[name]["setup"] == f"source {cluster.jupyter_venv}/bin/activate"
    assert profiles["testcluster-none"]["host"] == "tc-login"
    assert profiles["testcluster-none"]["scheduler"] == "none"
    assert profiles["testcluster-3"]["host"] == "tc-login-3"
    assert profiles["testcluster-site"]["ssh_options"] == ["-F", str(cluster.site_ssh_config)]
    assert ("testcluster-sge" in profiles) == cluster.sge
