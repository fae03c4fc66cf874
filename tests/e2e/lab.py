"""Helpers for end-to-end tests of hpclab itself on the test cluster: run the real `hpclab`
command with an isolated HPCLAB_HOME, look at the cluster as its users and as root, drive a
real headless Chromium. Import the fixtures into a test module with `from lab import *`."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HPCLAB = [sys.executable, "-m", "hpclab"]
TC_DIR = Path(os.environ.get("HPCLAB_TC_DIR", "/var/tmp/hpclab-testcluster"))
URL_RE = re.compile(r"http://127\.0\.0\.1:(\d+)/lab\?token=([A-Za-z0-9_\-]+)")


@functools.cache
def _cluster_env() -> dict[str, str]:
    from conftest import testcluster_env

    return testcluster_env()


def tc(name: str) -> str:
    """A variable of `scripts/testcluster env` (HPCLAB_CONFIG, TC_USER, ...)."""
    return os.environ.get(name) or _cluster_env()[name]


def tcx(host: str, argv: list[str], *, user: str | None = None, input: str | None = None,
        check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run argv inside a cluster host (login, node1, node2), as root or as `user`."""
    cmd = [str(TC_DIR / "bin" / "tcx"), host]
    if user:
        cmd += ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--reset-env", "--",
                "env", f"HOME=/home/{user}", f"USER={user}", "PATH=/usr/local/bin:/usr/bin:/bin"]
    proc = subprocess.run(cmd + argv, input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{shlex.join(argv)} on {host} exited {proc.returncode}: {proc.stderr}")
    return proc


def user_jobs(user: str) -> list[str]:
    """Job ids the scheduler still has pending or running for `user` (asked as root on login)."""
    out = tcx("login", ["squeue", "-h", "-u", user, "-t", "PENDING,RUNNING,COMPLETING,CONFIGURING",
                        "-o", "%i"]).stdout
    return out.split()


def wait_for(predicate: Any, timeout: float, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Run:
    """A foreground `hpclab` process whose output goes to files we can read while it runs."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_url(self, timeout: float = 120) -> tuple[str, int, str]:
        def found() -> tuple[str, int, str] | None:
            m = URL_RE.search(self.stdout())
            if m:
                return m.group(0), int(m.group(1)), m.group(2)
            if self.proc.poll() is not None:
                raise AssertionError(f"hpclab exited {self.proc.returncode}:\n{self.stderr()}")
            return None
        return wait_for(found, timeout, what="the lab URL")

    def wait_stderr(self, text: str, timeout: float = 60, interval: float = 0.2) -> None:
        wait_for(lambda: text in self.stderr() or (self.proc.poll() is not None and text in self.stderr())
                 or self._dead(text), timeout, interval, what=repr(text))

    def _dead(self, text: str) -> bool:
        if self.proc.poll() is not None and text not in self.stderr():
            raise AssertionError(f"hpclab exited {self.proc.returncode} without saying {text!r}:\n{self.stderr()}")
        return False

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout=timeout)


@dataclass
class Hpclab:
    """The real hpclab command with its own HPCLAB_HOME (a "laptop")."""

    home: Path
    config: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    runs: list[Run] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"HPCLAB_HOME": str(self.home), "HPCLAB_CONFIG": str(self.config), "NO_COLOR": "1",
                    "BROWSER": "true"})
        env.update(self.env_extra)
        return env

    def __call__(self, *args: str, timeout: float = 180, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*HPCLAB, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL)

    def json(self, *args: str, timeout: float = 180) -> Any:
        proc = self(*args, "--json", timeout=timeout)
        assert proc.returncode == 0, f"hpclab {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
        return json.loads(proc.stdout)

    def start(self, *args: str) -> Run:
        n = len(self.runs)
        out, err = self.home / f"run{n}.out", self.home / f"run{n}.err"
        self.home.mkdir(parents=True, exist_ok=True)
        proc = subprocess.Popen([*HPCLAB, *args], env=self.env, stdin=subprocess.DEVNULL,
                                stdout=out.open("wb"), stderr=err.open("wb"), start_new_session=True)
        run = Run(proc, out, err)
        self.runs.append(run)
        return run

    def write_config(self, text: str) -> Path:
        path = self.home / "config.toml"
        self.home.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self.config = path
        return path

    def cleanup(self) -> None:
        for run in self.runs:
            if run.proc.poll() is None:
                run.proc.send_signal(signal.SIGTERM)
                try:
                    run.proc.wait(timeout=90)
                except subprocess.TimeoutExpired:
                    run.proc.kill()
        self("stop", "--all", timeout=180)


def profile_text(name: str = "testcluster", **overrides: Any) -> str:
    """A config with one profile copied from the test cluster's, with `overrides`."""
    import tomllib

    base = tomllib.loads(Path(tc("HPCLAB_CONFIG")).read_text())["profiles"][name]
    base.update(overrides)
    lines = [f"[profiles.{name}]"]
    for key, value in base.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def session_dirs(user: str) -> list[str]:
    """hpclab session directories on the cluster (shared /home) of `user`."""
    out = tcx("login", ["sh", "-c", f"ls -A /home/{user}/.hpclab/sessions 2>/dev/null || true"]).stdout
    return out.split()


def accepted(host: str, user: str) -> int:
    """How many public-key logins of `user` the sshd of `host` has logged (LogLevel VERBOSE)."""
    with open(f"{tc('HPCLAB_TC_DIR')}/log/sshd-{host}.log") as fh:
        return sum(1 for line in fh if f"Accepted publickey for {user} " in line)


def sge_jobs(user: str) -> list[str]:
    """Grid Engine job ids of `user` in any state (asked as root on login); [] without Grid Engine."""
    if tc("TC_SGE") != "1":
        return []
    out = tcx("login", ["qstat", "-u", user], check=False).stdout
    return [line.split()[0] for line in out.splitlines()[2:] if line.split() and line.split()[0].isdigit()]


# What tests leave in a test user's home when they do not clean up: notebooks the browser made
# (run_cell), job output directories of test_cluster*.py. The janitor also removes JupyterLab's
# .ipynb_checkpoints, which stays behind (empty) when a notebook is deleted.
LEFTOVER_GLOBS = ("Untitled*.ipynb", "tc-e2e*")


def leftovers(user: str) -> list[str]:
    home = Path("/home") / user
    return sorted(str(p) for pattern in LEFTOVER_GLOBS for p in home.glob(pattern))


def janitor() -> None:
    """Cancel every job of the test users (SLURM and Grid Engine), remove their session directories
    and what tests leave in their homes, so that one test's leftovers (a test that failed halfway)
    cannot fail the next one's checks nor pile up."""
    for user in (tc("TC_USER"), tc("TC_USER2"), tc("TC_USER3")):
        for job in user_jobs(user):
            tcx("login", ["scancel", job], check=False)
        if sge_jobs(user):
            tcx("login", ["qdel", "-f", "-u", user], check=False)
            wait_for(lambda u=user: not sge_jobs(u), 30, what=f"Grid Engine jobs of {user} to go")
        tcx("login", ["sh", "-c", f"rm -rf /home/{user}/.hpclab/sessions/*"], check=False)
        for path in [*leftovers(user), f"/home/{user}/.ipynb_checkpoints"]:
            tcx("login", ["rm", "-rf", path], check=False)


@pytest.fixture
def hpclab(cluster: Any, tmp_path: Path) -> Iterator[Hpclab]:
    janitor()
    tool = Hpclab(home=tmp_path / "laptop", config=Path(tc("HPCLAB_CONFIG")))
    tool.home.mkdir()
    yield tool
    tool.cleanup()
    left = [p for u in (tc("TC_USER"), tc("TC_USER2")) for p in leftovers(u)]
    janitor()
    assert not left, f"the test left files in the test users' homes: {left}"


def lab_api(url: str, path: str, method: str = "GET") -> Any:
    """A request to the lab's REST API, with the token of its URL; the decoded JSON answer, if any."""
    m = URL_RE.search(url)
    assert m, url
    req = urllib.request.Request(f"http://127.0.0.1:{m.group(1)}{path}", method=method,
                                 headers={"Authorization": f"token {m.group(2)}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = resp.read()
    return json.loads(body) if body else None


def lab_contents(url: str) -> list[str]:
    """Paths of the files in the lab's root directory (the notebook_dir)."""
    return [item["path"] for item in lab_api(url, "/api/contents")["content"]]


def remove_new_notebooks(url: str, before: set[str]) -> None:
    for path in set(lab_contents(url)) - before:
        if path.endswith(".ipynb"):
            lab_api(url, "/api/contents/" + urllib.parse.quote(path), method="DELETE")


def run_cell(url: str, code: str, timeout: float = 60, kernel: str | None = None) -> str:
    """Open the lab in headless Chromium, make a notebook, run `code`, return the output text.
    `kernel`: the launcher card's label (a kernel's display name) to make it with; the first one
    when None. The notebook is deleted afterwards (through the lab's API), so the user's home stays clean."""
    from playwright.sync_api import sync_playwright

    before = set(lab_contents(url))
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=os.environ.get("TC_CHROMIUM", "/usr/bin/chromium"), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--no-first-run", "--disable-component-update", "--disable-sync"],
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(timeout * 1000)
            page.goto(url.replace("/lab?", "/lab?reset&"))
            cards = page.locator(".jp-LauncherCard[data-category='Notebook']")
            if kernel is not None:
                cards = cards.filter(has=page.locator(".jp-LauncherCard-label p", has_text=re.compile(
                    "^" + re.escape(kernel) + "$")))
            cards.first.click()
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for()
            cell = page.locator(".jp-Notebook .jp-Cell .cm-content").first
            focused = page.locator(".jp-Notebook .jp-Cell .cm-editor.cm-focused").first
            output = page.locator(".jp-OutputArea-output").first
            # Keys typed right after the kernel turns idle are sometimes lost: type only into a
            # focused editor, run the cell only once it holds the code, and retry, replacing the text.
            for attempt in range(3):
                try:
                    cell.click()
                    focused.wait_for(timeout=10000)
                    page.keyboard.press("Control+a")
                    page.keyboard.type(code)
                    page.wait_for_function("([el, code]) => el.innerText.trim() === code.trim()",
                                           arg=[cell.element_handle(), code], timeout=10000)
                    page.keyboard.press("Shift+Enter")
                    output.wait_for(timeout=20000)
                    break
                except Exception:
                    if attempt == 2:
                        raise
            return output.inner_text()
        finally:
            browser.close()
            # When the lab is gone already, the hpclab fixture's check of the home reports what is left.
            with contextlib.suppress(OSError):
                remove_new_notebooks(url, before)


class ForcedLogin:
    """A key of one test only, authorized for the user with a forced command that sets PATH
    before running the original command: the login node then shows that test's commands
    (emulators, or a PATH without SLURM) while every other connection stays as it was.
    `ssh_config` reaches the login node as `tc-login-forced` with that key; remove() undoes all."""

    def __init__(self, tmp_path: Path, user: str | None = None) -> None:
        self.user = user or tc("TC_USER")
        self.token = os.urandom(4).hex()
        self.home = Path("/home") / self.user
        self.key = tmp_path / "forced_key"
        self.ssh_config = tmp_path / "ssh_config"
        self.marker = f"hpclab-forced-login-{self.token}"

    def install(self, path: str) -> Path:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.marker, "-f", str(self.key)],
                       check=True)
        forced = f'export PATH={path}; exec /bin/bash -c \\"$SSH_ORIGINAL_COMMAND\\"'
        line = f'command="{forced}",no-agent-forwarding,no-X11-forwarding {self.key.with_suffix(".pub").read_text()}'
        with (self.home / ".ssh" / "authorized_keys").open("a") as fh:
            fh.write(line if line.endswith("\n") else line + "\n")
        self.ssh_config.write_text(
            f"Host tc-login-forced\n    HostName {tc('TC_LOGIN_ADDR')}\n    User {self.user}\n"
            "    HostKeyAlias tc-login\n"
            f"Host node1 node2\n    User {self.user}\n    ProxyJump tc-login-forced\n"
            f"Host *\n    IdentityFile {self.key}\n    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {tc('TC_KNOWN_HOSTS')}\n    GlobalKnownHostsFile /dev/null\n"
            "    StrictHostKeyChecking yes\n    BatchMode yes\n    ConnectTimeout 10\n"
        )
        return self.ssh_config

    def chown(self, path: Path) -> None:
        """Give `path` (recursively) to the user, as if they had made it."""
        subprocess.run(["chown", "-R", f"{self.user}:{self.user}", str(path)], check=True)

    def remove(self) -> None:
        keys = self.home / ".ssh" / "authorized_keys"
        kept = [ln for ln in keys.read_text().splitlines(keepends=True) if self.marker not in ln]
        tmp = keys.with_name(f".authorized_keys.{self.token}")
        tmp.write_text("".join(kept))
        st = keys.stat()
        os.chown(tmp, st.st_uid, st.st_gid)
        tmp.chmod(st.st_mode & 0o777)
        os.replace(tmp, keys)
