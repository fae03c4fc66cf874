"""The laptop's promises with hpclab run by an ordinary user and attacked by another one.

hpcuser runs hpclab on the laptop (this machine) as themselves, not as root, at umask 022, with a
relaxed ~/.ssh/config of the kind users copy from the web (StrictHostKeyChecking no, BatchMode no,
ForwardAgent yes, GatewayPorts yes, PermitLocalCommand yes). hpcuser2, another ordinary user of
the same laptop, is the attacker: they read what they can, connect to what they can, and take
the lab's local port over once its forward has died. Real OpenSSH, SLURM and JupyterLab.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lab import janitor, tc, wait_for

ROOT = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"  # the system's: root's own Python may live where users cannot read


def as_user(user: str, argv: list[str], env: dict[str, str]) -> list[str]:
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--",
            "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]


@dataclass
class Laptop:
    """hpclab as `user`, with a state directory hpclab makes under a world-readable `base`."""

    base: Path
    user: str
    env: dict[str, str]

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        argv = as_user(self.user, ["sh", "-c", 'umask 022; exec "$@"', "sh", PYTHON, "-m", "hpclab", *args],
                       self.env)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def json(self, *args: str) -> Any:
        proc = self.run(*args, "--json")
        assert proc.returncode == 0, f"hpclab {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
        return json.loads(proc.stdout)

    @property
    def home(self) -> Path:
        return Path(self.env["HPCLAB_HOME"])

    def masters(self) -> list[int]:
        """pids of this laptop's ssh masters."""
        out = subprocess.run(["pgrep", "-u", self.user, "-f", f"ControlPath={self.control_dir}"],
                             capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    @property
    def control_dir(self) -> str:
        code = "from hpclab.paths import Paths; print(Paths.from_env().control_dir)"
        argv = as_user(self.user, [PYTHON, "-c", code], self.env)
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()


def attacker_python(code: str, *args: str, timeout: float = 30) -> Any:
    """Run `code` as hpcuser2 on the laptop; its JSON output."""
    proc = subprocess.run(as_user(tc("TC_USER2"), [PYTHON, "-c", code, *args], {"PATH": "/usr/bin:/bin"}),
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def laptop(cluster: Any) -> Iterator[Laptop]:
    janitor()
    user = tc("TC_USER")
    base = Path(tempfile.mkdtemp(prefix="hl-laptop-", dir="/tmp"))
    base.chmod(0o755)  # anyone may look: what hpclab makes inside must protect itself
    shutil.copytree(ROOT / "src" / "hpclab", base / "src" / "hpclab")
    key = base / "key"
    shutil.copy(tc("TC_KEY"), key)
    shutil.copy(tc("TC_KNOWN_HOSTS"), base / "known_hosts")
    ssh_config = base / "ssh_config"
    ssh_config.write_text(
        "# what users paste from the web: hpclab's own options must win over every line of it\n"
        f"Host tc-login\n    HostName {tc('TC_LOGIN_ADDR')}\n    User {user}\n"
        f"Host node1 node2\n    User {user}\n"
        f"Host *\n    IdentityFile {key}\n    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {base / 'known_hosts'}\n    GlobalKnownHostsFile /dev/null\n"
        "    StrictHostKeyChecking no\n    BatchMode no\n    ForwardAgent yes\n    GatewayPorts yes\n"
        f"    PermitLocalCommand yes\n    LocalCommand touch {base / 'localcommand-ran'}\n"
    )
    config = base / "config.toml"
    config.write_text(
        "[profiles.testcluster]\n"
        'host = "tc-login"\n'
        f"ssh_options = {json.dumps(['-F', str(ssh_config)])}\n"
        'scheduler = "slurm"\npartition = "debug"\ntime = "00:30:00"\n'
        'setup = "source /opt/hpclab-jupyter/bin/activate"\n'
    )
    browser = base / "browser"
    browser.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {base}/browser-args\n')
    browser.chmod(0o755)
    subprocess.run(["chown", f"{user}:{user}", str(key), str(base)], check=True)
    key.chmod(0o600)
    tool = Laptop(base, user, {
        "HOME": f"/home/{user}", "USER": user, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(base / "src"),
        "HPCLAB_HOME": str(base / "state"), "HPCLAB_CONFIG": str(config), "NO_COLOR": "1",
        "BROWSER": str(browser),
    })
    try:
        yield tool
    finally:
        tool.run("stop", "--all")
        for pid in tool.masters():
            os.kill(pid, signal.SIGKILL)
        janitor()
        shutil.rmtree(base, ignore_errors=True)


READ_ALL = r"""
import errno, json, os, socket, stat, sys
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
out = {}
for path in sys.argv[1:]:
    try:
        mode = os.lstat(path).st_mode
    except OSError as e:
        out[path] = errno.errorcode.get(e.errno, str(e.errno))
        continue
    if stat.S_ISDIR(mode):
        out[path] = attempt(lambda: os.listdir(path))
    elif stat.S_ISSOCK(mode):
        s = socket.socket(socket.AF_UNIX)
        out[path] = attempt(lambda: s.connect(path))
    else:
        out[path] = attempt(lambda: open(path).read())
print(json.dumps(out))
"""


def test_an_ordinary_users_laptop_files_are_closed_to_another_user(laptop: Laptop) -> None:
    info = laptop.json("up", "testcluster", "--detach")
    opened = (laptop.base / "browser-args").read_text().split()
    assert len(opened) == 1 and opened[0].startswith("file://"), opened  # the redirect file, not the URL
    redirect = opened[0].removeprefix("file://")
    token = str(info["url"]).split("token=")[1]
    assert token not in " ".join(opened)
    control = Path(laptop.control_dir)
    sockets = [str(control / name) for name in os.listdir(control)]
    assert sockets, "no control socket"
    records = [str(p) for p in (laptop.home / "state" / "sessions").glob("*.json")] or \
        [str(p) for p in laptop.home.rglob(f"{info['id']}.json")]
    assert records, "no session record"
    targets = [str(laptop.home), str(control), *sockets, *records, redirect]
    # control: the user themselves reaches every one of them
    own = subprocess.run(as_user(laptop.user, [PYTHON, "-c", READ_ALL, *targets], {"PATH": "/usr/bin:/bin"}),
                         capture_output=True, text=True, check=True).stdout
    assert set(json.loads(own).values()) == {"ok"}, own
    seen = attacker_python(READ_ALL, *targets)
    assert {path: result for path, result in seen.items() if result == "ok"} == {}
    assert not (laptop.base / "localcommand-ran").exists()  # PermitLocalCommand yes did not win
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout
    bound = [ln.split()[3] for ln in listening.splitlines() if ln.split()[3].endswith(f":{info['local_port']}")]
    assert bound == [f"127.0.0.1:{info['local_port']}"]  # GatewayPorts yes did not win


class Squatter:
    """hpcuser2 listening on a local port: records every connection and every byte."""

    CODE = r"""
import json, socket, sys, threading
server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
print("listening", flush=True)
server.settimeout(float(sys.argv[2]))
got = {"connections": 0, "data": ""}
try:  # until the timeout, or SIGINT from the test
    while True:
        conn, _ = server.accept()
        got["connections"] += 1
        conn.settimeout(2)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                got["data"] += data.decode("latin-1")
        except OSError:
            pass
        conn.close()
except (OSError, KeyboardInterrupt):
    pass
print(json.dumps(got), flush=True)
"""

    def __init__(self, port: int, seconds: float) -> None:
        self.proc = subprocess.Popen(
            as_user(tc("TC_USER2"), [PYTHON, "-c", self.CODE, str(port), str(seconds)], {"PATH": "/usr/bin:/bin"}),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "listening", self.proc.stderr.read() if self.proc.stderr else line

    def result(self) -> dict[str, Any]:
        out, _ = self.proc.communicate(timeout=120)
        return json.loads(out.strip().splitlines()[-1])


def kill_masters(laptop: Laptop) -> int:
    pids = laptop.masters()
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return len(pids)


def test_a_port_taken_over_after_the_master_died_gets_nothing(laptop: Laptop) -> None:
    info = laptop.json("up", "testcluster", "--detach", "--no-browser")
    sid, port = str(info["id"]), int(info["local_port"])
    token = str(info["url"]).split("token=")[1]
    assert kill_masters(laptop) >= 1  # laptop asleep too long, a crash, a reboot
    wait_for(lambda: laptop.masters() == [], 10, what="the masters to die")
    squatter = Squatter(port, seconds=60)  # hpcuser2 takes the old port at once

    listed = laptop.run("list", "--json")
    (row,) = json.loads(listed.stdout)
    assert (row["id"], row["tunnel"], row["state"]) == (sid, "down", "running")
    assert "the connection to tc-login is gone; logging in again" in listed.stderr  # visibly, once

    proc = laptop.run("url", sid)
    assert proc.returncode == 0, proc.stderr
    assert f"(was 127.0.0.1:{port}; the old URL no longer works)" in proc.stderr
    new_url = proc.stdout.strip()
    assert f"127.0.0.1:{port}/" not in new_url and token in new_url
    new_port = int(new_url.split("127.0.0.1:")[1].split("/")[0])

    (row,) = laptop.json("list")
    assert (row["local_port"], row["tunnel"]) == (new_port, "up")
    attached = laptop.json("attach", sid, "--detach", "--no-browser")
    assert attached["local_port"] == new_port

    squatter.proc.send_signal(signal.SIGINT)
    got = squatter.result()
    assert token not in got["data"], "the token reached the other user's listener"
    assert got["connections"] == 0, got  # the master refused the port: hpclab did not even connect


def test_a_foreground_attach_moves_off_a_port_taken_while_it_watches(laptop: Laptop) -> None:
    info = laptop.json("up", "testcluster", "--detach", "--no-browser")
    sid, port = str(info["id"]), int(info["local_port"])
    token = str(info["url"]).split("token=")[1]
    out, err = laptop.base / "attach.out", laptop.base / "attach.err"
    for f in (out, err):
        f.touch()
        subprocess.run(["chown", laptop.user, str(f)], check=True)
    argv = as_user(laptop.user, ["sh", "-c", f'exec "$@" >{out} 2>{err}', "sh", PYTHON, "-m", "hpclab",
                                 "attach", sid, "--no-browser"], laptop.env)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: "press Ctrl-C" in err.read_text(), 60, what="attach to watch")
        kill_masters(laptop)
        squatter = Squatter(port, seconds=60)
        wait_for(lambda: "the lab moves to" in err.read_text() or "the old URL" in err.read_text()
                 or "re-established" in err.read_text(), 90, what="the watch to repair the tunnel")
        wait_for(lambda: "re-established" in err.read_text(), 60, what="the tunnel on its new port")
        (row,) = laptop.json("list")
        assert row["local_port"] != port and row["tunnel"] == "up"
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    squatter.proc.send_signal(signal.SIGINT)
    got = squatter.result()
    assert token not in got["data"] and "Authorization" not in got["data"], got
    (row,) = laptop.json("list")
    assert row["tunnel"] == "none"  # an ended attach leaves no forward behind, and says so


def test_a_session_that_ends_by_itself_leaves_no_forward_and_no_master(laptop: Laptop) -> None:
    info = laptop.json("up", "testcluster", "--detach", "--no-browser")
    port = int(info["local_port"])
    assert laptop.masters()
    subprocess.run(["/var/tmp/hpclab-testcluster/bin/tcx", "login", "scancel", str(info["job_id"])], check=True)
    wait_for(lambda: laptop.json("list")[0]["state"] != "running", 60, what="the job to end")
    # the command that saw the end closed the forward and the masters no session needs
    wait_for(lambda: laptop.masters() == [], 10, what="the masters to close")
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    assert laptop.json("list") == []
