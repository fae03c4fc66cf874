"""The `cluster` fixture: the test cluster that scripts/testcluster runs, as one object.

    def test_something(cluster):
        cluster.ssh("hpcuser", ["sinfo", "-h"])            # over ssh to the login node, as that user
        cluster.exec("node1", ["ss", "-ltn"])               # inside a host's namespaces, as root
        cluster.exec("node1", ["id", "-un"], user="hpcuser")
        cluster.sshd_log("login")                           # Path of that host's sshd log (VERBOSE)

Attributes come from `scripts/testcluster env`, so tests and scripts agree on every path.

hpcuser's and hpcuser3's rc files print a banner on every shell (`cluster.banner`); `ssh()`
returns the command's own output, after a mark line it prints first, as hpclab itself reads it.
"""

from __future__ import annotations

import contextlib
import shlex
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTCLUSTER = ROOT / "scripts" / "testcluster"

Command = str | Sequence[str]
# Printed before the command by ssh(): what comes before it is the rc files' banner.
MARK = "tc-output-begins"


def testcluster_env() -> dict[str, str]:
    """The variables `scripts/testcluster env` exports (PATH excluded)."""
    out = subprocess.run(
        [str(TESTCLUSTER), "env"], capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL
    ).stdout
    env = {}
    for line in out.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            if name != "PATH":
                env[name] = value
    return env


@dataclass(frozen=True)
class Cluster:
    dir: Path
    config: Path  # hpclab.toml with the testcluster profiles
    ssh_config: Path
    known_hosts: Path
    login_addr: str
    user: str
    user2: str
    user3: str  # tcsh, chatty rc files
    key: Path
    key2: Path
    key3: Path
    nodes: tuple[str, ...]
    jupyter_venv: Path
    chromium: Path
    sge: bool
    aliases: dict[str, str]  # user -> ssh alias of the login node as that user
    site_ssh_config: Path  # a laptop that knows only the login node's host key (alias site_host)
    site_known_hosts: Path
    site_host: str
    env2_venv: Path
    modules: Path
    banner: str  # what hpcuser's and hpcuser3's rc files print, every line ending in a newline

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Cluster:
        return cls(
            dir=Path(env["HPCLAB_TC_DIR"]),
            config=Path(env["HPCLAB_CONFIG"]),
            ssh_config=Path(env["TC_SSH_CONFIG"]),
            known_hosts=Path(env["TC_KNOWN_HOSTS"]),
            login_addr=env["TC_LOGIN_ADDR"],
            user=env["TC_USER"],
            user2=env["TC_USER2"],
            user3=env["TC_USER3"],
            key=Path(env["TC_KEY"]),
            key2=Path(env["TC_KEY2"]),
            key3=Path(env["TC_KEY3"]),
            nodes=tuple(env["TC_NODES"].split()),
            jupyter_venv=Path(env["TC_JUPYTER_VENV"]),
            chromium=Path(env["TC_CHROMIUM"]),
            sge=env.get("TC_SGE") == "1",
            aliases={env["TC_USER"]: env["TC_LOGIN_HOST"], env["TC_USER2"]: env["TC_LOGIN_HOST2"],
                     env["TC_USER3"]: env["TC_LOGIN_HOST3"]},
            site_ssh_config=Path(env["TC_SITE_SSH_CONFIG"]),
            site_known_hosts=Path(env["TC_SITE_KNOWN_HOSTS"]),
            site_host=env["TC_SITE_HOST"],
            env2_venv=Path(env["TC_ENV2_VENV"]),
            modules=Path(env["TC_MODULES"]),
            banner=Path(env["TC_BANNER_FILE"]).read_text(),
        )

    @property
    def hosts(self) -> tuple[str, ...]:
        return ("login", *self.nodes)

    @property
    def tcx(self) -> Path:
        return self.dir / "bin" / "tcx"

    def ssh_argv(self, user: str | None = None, host: str | None = None) -> list[str]:
        """`ssh -F <config> <alias>`: to the login node as `user`, or to `host` (a node, via ProxyJump)."""
        user = user or self.user
        if host is None or host == "login":
            return ["ssh", "-F", str(self.ssh_config), self.aliases[user]]
        return ["ssh", "-F", str(self.ssh_config), "-l", user, host]

    def ssh(
        self,
        user: str | None,
        cmd: Command,
        input: str | None = None,
        *,
        host: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` over ssh as `user` on the login node (or on `host`). A list is quoted for the remote shell.
        stdout is the command's own: the rc files' banner before it is dropped (see MARK)."""
        remote = cmd if isinstance(cmd, str) else shlex.join(cmd)
        result = _run([*self.ssh_argv(user, host), f"echo {MARK}; {remote}"], input=input, check=check,
                      timeout=timeout)
        _, sep, rest = result.stdout.partition(MARK + "\n")
        if sep:
            result.stdout = rest
        return result

    def exec_argv(self, host: str, argv: Sequence[str], user: str | None = None) -> list[str]:
        """The argv that runs `argv` inside `host`'s namespaces: as root, or as `user` (in their home)."""
        if user is None:
            return [str(self.tcx), host, *argv]
        return [
            str(self.tcx), host,
            "setpriv", "--reuid", user, "--regid", user, "--init-groups", "--reset-env", "--",
            "sh", "-c", 'cd "$HOME" && exec "$@"', "sh", *argv,
        ]  # fmt: skip

    def exec(
        self,
        host: str,
        argv: Sequence[str],
        user: str | None = None,
        input: str | None = None,
        *,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside a cluster host, as root or as `user`; no ssh involved."""
        return _run(self.exec_argv(host, argv, user), input=input, check=check, timeout=timeout)

    def spawn(self, host: str, argv: Sequence[str], user: str | None = None) -> subprocess.Popen[bytes]:
        """Start `argv` in the background inside a host. The Popen's pid is the command itself."""
        return subprocess.Popen(
            self.exec_argv(host, argv, user),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def sshd_log(self, host: str) -> Path:
        return self.dir / "log" / f"sshd-{host}.log"

    def log(self, name: str) -> Path:
        """A daemon log: slurmctld, slurmd-node1, slurmdbd, mariadb, sshd-login, ..."""
        return self.dir / "log" / f"{name}.log"

    def home(self, user: str | None = None) -> Path:
        """The user's home: /home is shared by the laptop and every host."""
        return Path("/home") / (user or self.user)

    def agent_sockets(self, host: str = "login") -> list[str]:
        """Forwarded ssh-agent sockets open on `host` now (sshd makes /tmp/ssh-*/agent.* per session)."""
        out = self.exec(host, ["sh", "-c", "ls -d /tmp/ssh-*/agent.* 2>/dev/null || true"]).stdout
        return out.split()

    def job_state(self, job_id: str) -> str | None:
        """JobState from slurmctld (root on the login node), or None if it does not know the job."""
        result = self.exec("login", ["scontrol", "-o", "show", "job", job_id], check=False)
        for word in result.stdout.split():
            if word.startswith("JobState="):
                return word.partition("=")[2]
        return None

    def wait_job(self, job_id: str, states: Sequence[str] = ("COMPLETED",), timeout: float = 60) -> str:
        """Poll until the job is in a final state; return it. Fails the test when it is not in `states`."""
        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED"}
        deadline = time.monotonic() + timeout
        state = None
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in final:
                break
            time.sleep(0.2)
        assert state in states, f"job {job_id} ended as {state}, expected one of {list(states)}"
        return state

    @contextlib.contextmanager
    def job_on(self, user: str, node: str, timeout: float = 60) -> Iterator[str]:
        """A running job of `user` on `node` (its id) while the block runs: with it, pam_slurm_adopt
        lets the user's ssh in. Cancelled afterwards."""
        out = self.exec("login", ["sbatch", "--parsable", "-J", "tc-node-access", "-w", node, "-t", "10",
                                  "-o", "/dev/null", "--wrap", "sleep 600"], user=user)
        job_id = out.stdout.strip().split(";")[0]
        try:
            deadline = time.monotonic() + timeout
            while self.job_state(job_id) != "RUNNING":
                assert time.monotonic() < deadline, f"job {job_id} of {user} did not start on {node}"
                time.sleep(0.2)
            yield job_id
        finally:
            self.exec("login", ["scancel", job_id], check=False)

    def testcluster(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run scripts/testcluster with these arguments (down, up, status, ...)."""
        return _run([str(TESTCLUSTER), *args], check=False, timeout=timeout)


def _run(
    argv: Sequence[str], *, input: str | None = None, check: bool, timeout: float
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{shlex.join(argv)} exited {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
        )
    return result


@pytest.fixture(scope="session")
def cluster(cluster_gate: None) -> Cluster:
    """The running test cluster (fails or skips through cluster_gate when it is not up)."""
    return Cluster.from_env(testcluster_env())
