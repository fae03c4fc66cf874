#!/usr/bin/env python3
"""How hpclab scales on the test cluster: many concurrent sessions from one laptop.

    eval "$(scripts/testcluster env)"; .venv/bin/python bench/scale.py --sizes 1 5 10 20

For each size N, from a fresh laptop (HPCLAB_HOME), N `hpclab up --detach` start at once,
alternating between two cluster accounts (hpcuser on tc-login, hpcuser2 on tc-login-2: two
"clusters" to hpclab), all in the SLURM partition `shared` (two nodes, idle labs share CPUs).
Then, in this order:

  ready       seconds from the first start to the last lab ready; every lab must be ready
  auth        "Accepted publickey" on the login node's sshd (its log): the target is one per account
  sessions    SSH sessions the login sshd started ("Starting session"), and authentications on the nodes
  queries     scheduler queries: the sum of `up --json` stats, and squeue/sacct commands of `list`
  distinct    local ports, session ids and session directories on the cluster: N of each
  list        `hpclab list --json`, warm (median of 3): wall time, rows, scheduler queries
  stop one    stop one session; every other lab must still answer through its tunnel
  stop --all  then no ssh process of this laptop's left, and no job of either account

It takes the machine-wide test lock (/var/tmp/hpclab-test.lock) while it runs: no test shares
the cluster with it. Every wait has a timeout; a failure prints what was seen and stops.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tomllib

TC_DIR = Path(os.environ.get("HPCLAB_TC_DIR", "/var/tmp/hpclab-testcluster"))
LOGS = TC_DIR / "log"
CONFIG = Path(os.environ.get("HPCLAB_CONFIG", TC_DIR / "hpclab.toml"))
USERS = ((os.environ.get("TC_USER", "hpcuser"), "testcluster"),
         (os.environ.get("TC_USER2", "hpcuser2"), "testcluster-2"))
NODES = tuple(os.environ.get("TC_NODES", "node1 node2").split())
TEST_LOCK = os.environ.get("HPCLAB_TEST_LOCK", "/var/tmp/hpclab-test.lock")
TIMEOUT = 300.0
DEBUG_DIR = os.environ.get("HPCLAB_BENCH_DEBUG")  # a directory: every `up` runs with --debug, its log kept there


class BenchError(Exception):
    pass


@contextlib.contextmanager
def test_lock() -> Iterator[None]:
    with open(TEST_LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"bench: waiting for {TEST_LOCK} (a test run holds it)", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def log_count(host: str, needle: str) -> int:
    return (LOGS / f"sshd-{host}.log").read_text(errors="replace").count(needle)


def sshd_figures() -> dict[str, int]:
    users = [u for u, _ in USERS]
    return {
        "auth_login": sum(log_count("login", f"Accepted publickey for {u} ") for u in users),
        "ssh_sessions_login": sum(log_count("login", f"Starting session: command for {u} ") for u in users),
        "auth_nodes": sum(log_count(n, f"Accepted publickey for {u} ") for n in NODES for u in users),
    }


def tcx(host: str, argv: list[str]) -> str:
    proc = subprocess.run([str(TC_DIR / "bin" / "tcx"), host, *argv], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise BenchError(f"{argv} on {host} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def jobs(user: str) -> list[str]:
    return tcx("login", ["squeue", "-h", "-u", user, "-o", "%i"]).split()


def session_dirs(user: str) -> list[str]:
    return tcx("login", ["sh", "-c", f"ls -A /home/{user}/.hpclab/sessions 2>/dev/null || true"]).split()


def http_status(url: str) -> int | None:
    port = url.split("127.0.0.1:")[1].split("/")[0]
    token = url.split("token=")[1]
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def ssh_processes(control_dir: str) -> list[int]:
    """Pids of ssh processes whose command line names this laptop's control directory."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"ssh" and any(control_dir.encode() in a for a in argv):
            found.append(int(proc.name))
    return found


class Laptop:
    def __init__(self, home: Path) -> None:
        self.home = home
        base = tomllib.loads(CONFIG.read_text())["profiles"]
        lines = []
        for _, name in USERS:
            profile = dict(base[name], partition="shared", time="00:30:00")
            lines.append(f"[profiles.{name}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in profile.items()]
        (home / "config.toml").write_text("\n".join(lines) + "\n")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith("HPCLAB_")}
        self.env = dict(env, HPCLAB_HOME=str(home), NO_COLOR="1", BROWSER="true")
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from hpclab.paths import Paths

        self.control_dir = str(Paths.from_env(self.env).control_dir)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hpclab", *args], env=self.env, capture_output=True,
                              text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)

    def json(self, *args: str) -> Any:
        proc = self.run(*args, "--json")
        if proc.returncode != 0:
            raise BenchError(f"hpclab {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
        return json.loads(proc.stdout)


def up_all(laptop: Laptop, n: int) -> tuple[float, list[dict[str, Any]]]:
    profiles = [USERS[i % len(USERS)][1] for i in range(n)]
    t0 = time.monotonic()

    def one(profile: str) -> tuple[float, Any]:
        if not DEBUG_DIR:
            doc = laptop.json("up", profile, "--detach", "--no-browser")
            return time.monotonic() - t0, doc
        proc = laptop.run("up", profile, "--detach", "--no-browser", "--json", "--debug")
        Path(DEBUG_DIR, f"up-{time.monotonic()}.err").write_text(proc.stderr)
        if proc.returncode != 0:
            raise BenchError(f"hpclab up {profile} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return time.monotonic() - t0, json.loads(proc.stdout)

    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(one, profiles))
    return max(t for t, _ in results), [doc for _, doc in results]


def measure(n: int, laptop: Laptop) -> dict[str, Any]:
    for user, _ in USERS:
        if jobs(user):
            raise BenchError(f"{user} has jobs in the queue before the run: {jobs(user)}")
    before = sshd_figures()
    ready, docs = up_all(laptop, n)
    after_up = sshd_figures()
    fig: dict[str, Any] = {"ready_s": ready}
    fig.update({k: after_up[k] - before[k] for k in before})
    fig["up_scheduler_queries"] = sum(d["stats"]["scheduler_queries"] for d in docs)
    fig["up_ssh_connects"] = sum(d["stats"]["ssh_connects"] for d in docs)
    fig["distinct_ports"] = len({d["local_port"] for d in docs})
    fig["distinct_ids"] = len({d["id"] for d in docs})
    fig["distinct_dirs"] = sum(len(set(session_dirs(u)) & {d["id"] for d in docs}) for u, _ in USERS)
    fig["labs_answering"] = sum(http_status(d["url"]) == 200 for d in docs)
    fig["transports"] = ",".join(sorted({d["transport"] for d in docs}))

    # list, warm: the first one after the ups, then three timed
    laptop.run("list", "--json")
    times, queries, rows = [], 0, []
    for _ in range(3):
        t0 = time.monotonic()
        proc = laptop.run("list", "--json", "--debug")
        times.append(time.monotonic() - t0)
        if proc.returncode != 0:
            raise BenchError(f"hpclab list exited {proc.returncode}: {proc.stderr[-2000:]}")
        rows = json.loads(proc.stdout)
        queries = sum(1 for line in proc.stderr.splitlines()
                      if ("run on " in line or "run locally" in line) and (" squeue " in line or " sacct " in line))
    fig["list_s"] = statistics.median(times)
    fig["list_rows"] = len(rows)
    fig["list_rows_up"] = sum(1 for r in rows if r["state"] == "running" and r["tunnel"] == "up")
    fig["list_scheduler_queries"] = queries

    # stopping one session touches no other's tunnel
    if n > 1:
        victim, others = docs[0], docs[1:]
        laptop.json("stop", victim["id"])
        fig["stop_one_broke_others"] = sum(http_status(d["url"]) != 200 for d in others)
    t0 = time.monotonic()
    laptop.json("stop", "--all")
    fig["stop_all_s"] = time.monotonic() - t0
    deadline = time.monotonic() + 5
    while ssh_processes(laptop.control_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    fig["ssh_left"] = len(ssh_processes(laptop.control_dir))
    fig["jobs_left"] = sum(len(jobs(u)) for u, _ in USERS)
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 5, 10, 20])
    args = ap.parse_args()
    results: dict[int, dict[str, Any]] = {}
    with test_lock():
        for n in args.sizes:
            with tempfile.TemporaryDirectory(prefix="bench-scale-") as home:
                laptop = Laptop(Path(home))
                try:
                    results[n] = measure(n, laptop)
                finally:
                    laptop.run("stop", "--all")
                    for pid in ssh_processes(laptop.control_dir):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, 15)
            print(f"N={n}: {json.dumps(results[n])}", file=sys.stderr)
    keys = list(next(iter(results.values())))
    print(f"{'':<26}" + "".join(f"{'N=' + str(n):>10}" for n in results))
    for key in keys:
        cells = []
        for n in results:
            v = results[n].get(key, "-")
            cells.append(f"{v:>10.2f}" if isinstance(v, float) else f"{v!s:>10}")
        print(f"{key:<26}" + "".join(cells))


if __name__ == "__main__":
    try:
        main()
    except BenchError as exc:
        raise SystemExit(f"bench/scale.py: {exc}") from None
