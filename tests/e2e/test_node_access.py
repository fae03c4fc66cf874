"""`hpclab forward`, `hpclab ssh-config` and `hpclab code` on the real test cluster: one more port
of the job's node on 127.0.0.1, an OpenSSH Host block that lands inside the job (pam_slurm_adopt
admits only users with a job on the node), and VS Code's Remote-SSH on that block.

VS Code cannot be installed here: `code` is a stand-in named as such, a script that records its
arguments and then does what Remote-SSH does first, `ssh -T HOST` with the user's ssh config."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from lab import HPCLAB, Hpclab, accepted, hpclab, tc, tcx, wait_for

__all__ = ["hpclab"]

MARK = "hpclab-forward-test-" + secrets.token_hex(4)


def up(hpclab: Hpclab) -> dict:
    return hpclab.json("up", "testcluster", "--detach", "--no-browser")


def block_ssh(block: Path, alias: str, *command: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh", "-F", str(block), "-o", "BatchMode=yes", alias, *command],
                          capture_output=True, text=True, timeout=60, input=input,
                          stdin=None if input is not None else subprocess.DEVNULL)


def output(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """The command's own lines: the test users' rc files print a banner first."""
    banner = set(Path(tc("TC_BANNER_FILE")).read_text().splitlines())
    return [line for line in proc.stdout.splitlines() if line not in banner]


def get(port: int, host: str = "127.0.0.1") -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/{MARK}.txt", timeout=10) as resp:
        return resp.read().decode()


def test_forward_reaches_a_service_in_the_job_and_ends_with_the_session(hpclab: Hpclab, tmp_path: Path) -> None:
    lab = up(hpclab)
    sid, node = lab["id"], lab["node"]
    block = tmp_path / "block.conf"
    block.write_text(hpclab("ssh-config", sid).stdout)
    # A dashboard the user started in the job, on the node's loopback only.
    web = f"/home/{tc('TC_USER')}/tc-e2e-web-{secrets.token_hex(3)}"
    port = 20000 + secrets.randbelow(10000)
    started = block_ssh(block, f"hpclab-{sid}",
                        f"mkdir -p {web} && echo {MARK} > {web}/{MARK}.txt && cd {web} && "
                        f"(nohup python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 &) && "
                        "sleep 1 && echo ok")
    assert "ok" in output(started), started.stderr
    try:
        fwd = hpclab.json("forward", sid, str(port))
        assert fwd["node"] == node and fwd["node_port"] == port
        assert "reachable by other users" in fwd["warning"]
        local = fwd["local_port"]
        assert wait_for(lambda: get(local).strip() == MARK, 20, what="the node's service through the forward")
        # The local end listens on 127.0.0.1 only: the laptop's cluster-facing address refuses.
        with socket.socket() as s:
            s.settimeout(3)
            assert s.connect_ex((tc("TC_LOGIN_ADDR").rsplit(".", 1)[0] + ".1", local)) != 0
        listed = hpclab.json("list")
        assert [f["node_port"] for f in listed[0]["forwards"]] == [port]
        # A port nothing listens on: said, and nothing forwarded.
        none = hpclab("forward", sid, "8799")
        assert none.returncode != 0 and "nothing listens on port 8799" in none.stderr
        assert [f["node_port"] for f in hpclab.json("list")[0]["forwards"]] == [port]
        # The same node port twice: refused, pointing at the existing forward.
        again = hpclab("forward", sid, str(port))
        assert again.returncode != 0 and f"127.0.0.1:{local}" in again.stderr
        assert hpclab("stop", sid).returncode == 0
        with contextlib.suppress(OSError):
            get(local)
            raise AssertionError("the forward outlived the session")
    finally:
        # proctrack/linuxproc (no cgroups here) loses track of a daemonised process: end it by hand
        tcx(node, ["pkill", "-f", f"http.server {port}"], check=False)
        tcx("login", ["rm", "-rf", web], check=False)


def test_ssh_config_block_lands_in_the_job_over_hpclabs_master_and_on_its_own(hpclab: Hpclab, tmp_path: Path) -> None:
    lab = up(hpclab)
    sid, node, user = lab["id"], lab["node"], tc("TC_USER")
    text = hpclab("ssh-config", sid).stdout
    assert f"Host hpclab-{sid}" in text and f"HostName {node}" in text
    assert "ForwardAgent no" in text and "StrictHostKeyChecking yes" in text
    doc = hpclab.json("ssh-config", sid)
    assert set(doc) == {"id", "alias", "node", "config"} and doc["config"] == text and doc["node"] == node
    alone = tmp_path / "alone.conf"
    alone.write_text(text)
    # Appended to a user's config (here the test cluster's own ssh config, as ~/.ssh/config would be).
    appended = tmp_path / "appended.conf"
    appended.write_text(Path(tc("TC_SSH_CONFIG")).read_text() + "\n" + text)
    logins = accepted("login", user)
    for config in (alone, appended):
        proc = block_ssh(config, f"hpclab-{sid}", "hostname")
        assert output(proc) == [node], proc.stderr
    # Through hpclab's masters: no login of its own on the login node.
    assert accepted("login", user) == logins
    # Files go through the same block (scp and sftp would too, but the test users' chatty rc
    # files break their protocol, as such rc files do at real sites).
    remote = f"/tmp/tc-e2e-{secrets.token_hex(3)}.txt"
    assert block_ssh(alone, f"hpclab-{sid}", f"cat > {remote}", input=MARK + "\n").returncode == 0
    assert output(block_ssh(alone, f"hpclab-{sid}", "cat", remote)) == [MARK]
    # With hpclab's masters gone, the block still works on its own: it logs in itself.
    # (the block names both: the node's in ControlPath, the login's in its ProxyCommand)
    paths = re.findall(r"ControlPath[ =](\S+)", text)
    assert len(paths) == 2
    for path in paths:
        gone = subprocess.run(["ssh", "-o", f"ControlPath={path}", "-O", "exit", "x"], capture_output=True,
                              text=True, timeout=10)
        assert gone.returncode == 0 or "No such file" in gone.stderr, gone.stderr
    proc = block_ssh(alone, f"hpclab-{sid}", "hostname")
    assert output(proc) == [node], proc.stderr
    assert accepted("login", user) > logins
    # Only inside the job: once the session has ended, the node refuses the same block.
    assert hpclab("stop", sid).returncode == 0
    proc = block_ssh(alone, f"hpclab-{sid}", "hostname")
    assert proc.returncode != 0 and "pam_slurm_adopt" in proc.stderr, proc.stderr


@contextlib.contextmanager
def root_ssh_config() -> Iterator[Path]:
    """Root's ~/.ssh/config (what ssh reads for the laptop user here), restored afterwards."""
    path = Path(os.path.expanduser("~root")) / ".ssh" / "config"
    saved = path.read_bytes() if path.exists() else None
    try:
        yield path
    finally:
        if saved is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(saved)


STAND_IN = """#!/bin/sh
# A stand-in for VS Code's `code` launcher (VS Code cannot be installed here): it records its
# arguments and, as Remote-SSH does first, runs `ssh -T HOST` with the user's ssh config.
printf '%s\\n' "$@" > "$CODE_STAND_IN_LOG"
host=${2#ssh-remote+}
ssh -T -o BatchMode=yes "$host" hostname > "$CODE_STAND_IN_LOG.ssh" 2>&1
"""


def test_code_opens_remote_ssh_on_the_node_through_the_users_ssh_config(hpclab: Hpclab, tmp_path: Path) -> None:
    lab = up(hpclab)
    sid, node = lab["id"], lab["node"]
    # Without `code` on PATH: says what to do.
    bare = {**hpclab.env, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([*hpclab_argv(), "code", sid], env=bare, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "'code' command is not on PATH" in proc.stderr and "ssh-config" in proc.stderr
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "code").write_text(STAND_IN)
    (bindir / "code").chmod(0o755)
    log = tmp_path / "code.log"
    with root_ssh_config() as user_config:
        user_config.parent.mkdir(mode=0o700, exist_ok=True)
        user_config.write_text("# the user's own\nHost example-unrelated\n    User nobody\n")
        user_config.chmod(0o644)
        env = {**hpclab.env, "PATH": f"{bindir}:{os.environ['PATH']}", "CODE_STAND_IN_LOG": str(log)}
        # No terminal and no --yes: the user's file is not touched, and the line to add is shown.
        proc = subprocess.run([*hpclab_argv(), "code", sid, "/tmp"], env=env, capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
        assert proc.returncode != 0 and "Include" in proc.stderr
        assert user_config.read_text().startswith("# the user's own")
        proc = subprocess.run([*hpclab_argv(), "code", sid, "/tmp", "--yes"], env=env, capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, proc.stderr
        wait_for(lambda: (log.with_name("code.log.ssh")).exists() and log.with_name("code.log.ssh").read_text(),
                 30, what="the stand-in's ssh")
        assert log.read_text().split() == ["--remote", f"ssh-remote+hpclab-{sid}", "/tmp"]
        assert node in log.with_name("code.log.ssh").read_text().split()
        text = user_config.read_text()
        assert text.splitlines()[1].startswith("Include ") and "# the user's own" in text
        assert user_config.stat().st_mode & 0o777 == 0o644
        blocks = Path(hpclab.home, "state", "ssh_config")
        assert f"Host hpclab-{sid}" in blocks.read_text() and blocks.stat().st_mode & 0o777 == 0o600
        # The block leaves with the session.
        assert hpclab("stop", sid).returncode == 0
        assert f"hpclab-{sid}" not in blocks.read_text()


def hpclab_argv() -> list[str]:
    return list(HPCLAB)
