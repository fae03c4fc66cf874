"""Banners from the user's rc files never reach what hpclab reads: SshRemote.run prints a mark
line first and keeps only what follows it. Checked through real shells (tcsh included) reading
rc files that print, as hpcuser's and hpcuser3's do on the test cluster."""

from __future__ import annotations

import shutil
import subprocess
import types
from pathlib import Path
from unittest import mock

import pytest

from hpclab import remote
from hpclab.remote import OUTPUT_MARK, SshRemote, after_mark

BANNER = "*** welcome ***\n4242\nnode9\n"


def test_after_mark_keeps_only_what_follows_the_mark() -> None:
    assert after_mark(f"{BANNER}{OUTPUT_MARK}\n4711\n") == "4711\n"
    assert after_mark(f"{OUTPUT_MARK}\n4711\n") == "4711\n"
    assert after_mark(f"{OUTPUT_MARK}\n") == ""
    # only the first mark counts: the command's own output may contain it
    assert after_mark(f"{BANNER}{OUTPUT_MARK}\nx\n{OUTPUT_MARK}\n") == f"x\n{OUTPUT_MARK}\n"


def test_without_the_mark_the_output_is_left_alone() -> None:
    assert after_mark("4711\n") == "4711\n"
    assert after_mark(f"x{OUTPUT_MARK}\n4711\n") == f"x{OUTPUT_MARK}\n4711\n"  # not at a line start


def fake_ssh(stdout: str, returncode: int = 0) -> tuple[types.SimpleNamespace, list[list[str]]]:
    sent: list[list[str]] = []

    def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        sent.append(cmd)
        return subprocess.CompletedProcess(cmd, returncode, stdout, "")

    return types.SimpleNamespace(run=run, TimeoutExpired=subprocess.TimeoutExpired, DEVNULL=subprocess.DEVNULL), sent


def test_run_strips_a_banner_from_stdout_and_from_errors() -> None:
    r = SshRemote("login", [], Path("/nonexistent"))
    fake, sent = fake_ssh(f"{BANNER}{OUTPUT_MARK}\n4711\n")
    with mock.patch.object(remote, "subprocess", fake), mock.patch.object(SshRemote, "alive", lambda self: True):
        assert r.run(["sbatch", "--parsable"]).stdout == "4711\n"
    assert sent[0][-1] == f"echo {OUTPUT_MARK}; sbatch --parsable"

    fake, _ = fake_ssh(f"{BANNER}{OUTPUT_MARK}\npartial\n", returncode=1)
    with (mock.patch.object(remote, "subprocess", fake), mock.patch.object(SshRemote, "alive", lambda self: True),
          pytest.raises(remote.RemoteError) as err):
        r.run(["false"])
    assert err.value.stdout == "partial\n"


SHELLS = [s for s in ("sh", "bash", "tcsh", "csh") if shutil.which(s)]


@pytest.mark.parametrize("shell", SHELLS)
def test_the_mark_survives_each_login_shell_with_a_chatty_rc_file(shell: str, tmp_path: Path) -> None:
    """What sshd does: `$SHELL -c COMMAND`, with rc files that print. bash reads $BASH_ENV here
    (as it reads ~/.bashrc for ssh), csh and tcsh read ~/.cshrc / ~/.tcshrc in every shell."""
    rc = "".join(f"echo '{line}'\n" for line in BANNER.splitlines())
    for name in (".cshrc", ".tcshrc", "bashrc"):
        (tmp_path / name).write_text(rc)
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "BASH_ENV": str(tmp_path / "bashrc")}
    command = f"echo {OUTPUT_MARK}; " + remote.shlex.join(["printf", "%s\\n", "job 4711", "a'b"])
    out = subprocess.run([shell, "-c", command], capture_output=True, text=True, env=env, timeout=20)
    assert out.returncode == 0, out.stderr
    if shell in ("bash", "tcsh", "csh"):
        assert out.stdout.startswith(BANNER), f"{shell} did not read its rc file: the test proves nothing"
    assert after_mark(out.stdout) == "job 4711\na'b\n"
