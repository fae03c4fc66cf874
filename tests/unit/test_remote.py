"""How hpclab calls ssh: safety options first, one quoting step, jump through the login master."""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
from pathlib import Path

import pytest

from hpclab.remote import SshRemote, _classify

# SECURITY.md: what hpclab passes to ssh before the user's own options. Spelled out here, not
# imported: comparing the argv with remote.SAFE_OPTIONS would pass whatever that constant held.
PROMISED = {"forwardagent": "no", "forwardx11": "no", "stricthostkeychecking": "true", "gatewayports": "no",
            "permitlocalcommand": "no"}


def test_safety_options_come_before_the_users(tmp_path: Path) -> None:
    """ssh -G prints the options ssh would use: the promised values win over a user's config
    and a profile's ssh_options that ask for the opposite (ssh keeps the first value it sees)."""
    config = tmp_path / "cfg"
    config.write_text("Host *\n  ForwardAgent yes\n  ForwardX11 yes\n  StrictHostKeyChecking no\n"
                      "  GatewayPorts yes\n  PermitLocalCommand yes\n  LocalCommand true\n")
    weakening = ["-F", str(config), "-o", "ForwardAgent=yes", "-o", "StrictHostKeyChecking=accept-new"]
    r = SshRemote("login", weakening, tmp_path)
    argv = r.argv_for(["-T"])
    assert argv[-2:] == ["--", "login"]
    assert f"ControlPath={r.control_path}" in argv
    out = subprocess.run([argv[0], "-G", *argv[1:-2], "--", "login"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=20)
    assert out.returncode == 0, out.stderr
    effective = dict(ln.split(" ", 1) for ln in out.stdout.splitlines() if " " in ln)
    assert {k: effective.get(k) for k in PROMISED} == PROMISED


def test_control_path_differs_per_destination_and_options(tmp_path: Path) -> None:
    a = SshRemote("login", [], tmp_path)
    b = SshRemote("login", ["-p", "2222"], tmp_path)
    c = SshRemote("node1", [], tmp_path, via=a)
    assert len({a.control_path, b.control_path, c.control_path}) == 3
    assert all(len(Path(x.control_path).name) == 16 for x in (a, b, c))


def test_node_connection_jumps_through_the_login_master(tmp_path: Path) -> None:
    weird = tmp_path / "100% dir"
    login = SshRemote("login", ["-F", "/path with space/config"], weird)
    node = SshRemote("me@node1", ["-F", "/path with space/config"], weird, via=login)
    argv = node._base()  # how the node's master is made
    proxy = next(a for a in argv if a.startswith("ProxyCommand="))[len("ProxyCommand="):]
    # ssh takes the first ProxyCommand: hpclab's comes before the user's options
    assert argv.index("ProxyCommand=" + proxy) < argv.index("/path with space/config")
    # ssh expands %h:%p; every other % must reach the shell as a single %
    assert "%h:%p" in proxy
    expanded = proxy.replace("%%", "%")
    inner = shlex.split(expanded)
    assert inner[:1] == ["ssh"]
    assert f"ControlPath={login.control_path}" in inner
    assert inner[inner.index("-W") + 1] == "%h:%p"
    assert inner[-2:] == ["--", "login"]
    assert "/path with space/config" in inner


def test_remote_command_is_quoted_once() -> None:
    argv = ["sh", "-c", 'printf "%s|" "$@"', "hpclab", "a b", "it's", "$(id)", "x;y", "new\nline"]
    out = subprocess.run(["sh", "-c", shlex.join(argv)], capture_output=True, text=True, check=True).stdout
    assert out == "a b|it's|$(id)|x;y|new\nline|"


def test_ssh_failures_are_told_apart() -> None:
    changed = "@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\nHost key verification failed.\n"
    assert "has changed" in _classify("login", changed).message
    assert "not known" in _classify("login", "Host key verification failed.\n").message
    assert "refused the login" in _classify("login", "hpcuser@10.0.0.1: Permission denied (publickey).").message
    assert "cannot reach" in _classify("login", "ssh: connect to host x port 22: No route to host").message
    assert "cannot resolve" in _classify("nohost", "ssh: Could not resolve hostname nohost: Name").message


def effective_options(argv: list[str]) -> dict[str, str]:
    """What ssh would use for this argv (ending in `-- HOST`), as `ssh -G` prints it."""
    out = subprocess.run([argv[0], "-G", *argv[1:-2], "--", argv[-1]], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=20)
    assert out.returncode == 0, out.stderr
    return dict(ln.split(" ", 1) for ln in out.stdout.splitlines() if " " in ln)


def test_the_master_does_not_persist_forever_and_commands_never_prompt(tmp_path: Path) -> None:
    config = tmp_path / "cfg"
    config.write_text("Host *\n  ControlPersist yes\n  BatchMode no\n")
    r = SshRemote("login", ["-F", str(config)], tmp_path)
    assert effective_options(r.master_argv())["controlpersist"] == "3600"  # an unused master exits after an hour
    assert effective_options(r.argv_for(["-T"]))["batchmode"] == "yes"
    node = SshRemote("node1", ["-F", str(config)], tmp_path, via=r)
    assert effective_options(node.master_argv())["batchmode"] == "yes"  # a node never prompts


def test_commands_started_together_make_one_master(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five commands find no master at once: one logs in, the others wait and use its master.
    A STAND-IN ssh on PATH: `-O check` answers from a marker file; the master takes 0.5 s to log in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ssh"
    fake.write_text(f"""#!/bin/sh
case " $* " in
  *" -O check "*) [ -e {tmp_path}/master ] ;;
  *" -N "*) echo login >> {tmp_path}/logins; sleep 0.5; touch {tmp_path}/master ;;
  *) exit 255 ;;
esac
""")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    ctl = tmp_path / "ctl"
    remotes = [SshRemote("login", [], ctl) for _ in range(5)]
    # alive() also wants the control socket to exist; the stand-in master does not make one
    monkeypatch.setattr(os.path, "exists", lambda p: Path(str(p)).exists() or str(p).startswith(str(ctl)))
    threads = [threading.Thread(target=r.connect) for r in remotes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (tmp_path / "logins").read_text().split() == ["login"]
