#!/usr/bin/env python3
"""How long `hpclab up` takes on the test cluster, against the floor of doing it by hand.

    eval "$(scripts/testcluster env)"; .venv/bin/python bench/up.py --runs 7

Three ways to a lab that answers, timed from the first command to the first authenticated 200:

  hpclab        `hpclab up testcluster --detach --no-browser --json` (its phases come from --json),
                then `hpclab stop`.
  floor-ssh     the bare manual sequence with no safety at all: plain `ssh` running `sbatch` of a
                Jupyter job with a known port and token, `squeue` over ssh every 0.25 s until it
                runs, one `ssh -N -L`, HTTP GET until 200. Every ssh logs in anew.
  floor-master  the same, typed by someone who knows OpenSSH: one ControlMaster (`ssh -fNM`),
                every command and the forward (`ssh -O forward`) through it.

Equal terms: a warm-up round of all three that is not counted; the order of the three drawn at
random in every round (--seed); each run starts only when the previous job has left the queue;
SSH logins counted on every host (login and nodes) from the sshd logs, up to "ready"; every wait
has a timeout. Prints median/min/max of each figure and hpclab minus each floor.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

SSH_CONFIG = os.environ.get("TC_SSH_CONFIG", "/var/tmp/hpclab-testcluster/ssh/config")
LOGIN = os.environ.get("TC_LOGIN_HOST", "tc-login")
USER = os.environ.get("TC_USER", "hpcuser")
VENV = os.environ.get("TC_JUPYTER_VENV", "/opt/hpclab-jupyter")
LOGS = Path(os.environ.get("HPCLAB_TC_DIR", "/var/tmp/hpclab-testcluster")) / "log"
HOSTS = ("login", *os.environ.get("TC_NODES", "node1 node2").split())
TIMEOUT = 120.0  # seconds, for every wait: a job to start or end, a lab to answer, a command
TEST_LOCK = os.environ.get("HPCLAB_TEST_LOCK", "/var/tmp/hpclab-test.lock")


@contextlib.contextmanager
def test_lock() -> Iterator[None]:
    """The machine-wide lock scripts/test takes: no test run shares the cluster with the benchmark."""
    with open(TEST_LOCK, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"bench: waiting for {TEST_LOCK} (a test run holds it)", file=sys.stderr)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield


class BenchError(Exception):
    pass


def logins() -> dict[str, int]:
    """Public-key logins of the benchmark user so far, per host (sshd logs at VERBOSE)."""
    needle = f"Accepted publickey for {USER} "
    return {h: (LOGS / f"sshd-{h}.log").read_text(errors="replace").count(needle) for h in HOSTS}


def login_figures(before: dict[str, int]) -> dict[str, float]:
    after = logins()
    return {"logins_login": after["login"] - before["login"],
            "logins_nodes": sum(after[h] - before[h] for h in HOSTS if h != "login")}


def wait(what: str, probe: Callable[[], object], interval: float) -> object:
    deadline = time.monotonic() + TIMEOUT
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {TIMEOUT:.0f} s waiting for {what}")
        time.sleep(interval)


def run(argv: list[str], input: str | None = None) -> str:
    proc = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=None if input is not None else subprocess.DEVNULL)
    if proc.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


# The test users' rc files print a banner in every shell, as at many sites: a command's own output
# is what follows this mark (a person reads past the banner; the floors must too).
MARK = "bench-output-begins"


def over_ssh(argv: list[str], command: str, input: str | None = None) -> str:
    """`command` through the ssh `argv` (ending in the destination): its own output, banner dropped."""
    out = run([*argv, f"echo {MARK}; {command}"], input=input)
    return out.partition(MARK + "\n")[2]


def queue_empty() -> bool:
    """No job of the user left in the queue (asked over a fresh ssh; not counted in any run)."""
    return over_ssh(["ssh", "-F", SSH_CONFIG, LOGIN], f"squeue -h -u {USER} -o %i").strip() == ""


def http_ok(port: int, token: str) -> bool:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def floor_run(master: bool) -> dict[str, float]:
    port = random.randint(20000, 30000)
    token = secrets.token_hex(16)
    script = (f"#!/bin/bash\n#SBATCH -o /dev/null\nsource {VENV}/bin/activate\n"
              f"exec jupyter lab --no-browser --ip=$(hostname -I | cut -d' ' -f1) --port={port} "
              f"--ServerApp.port_retries=0 --IdentityProvider.token={token}\n")
    with tempfile.TemporaryDirectory(prefix="bench-cm-") as tmp:
        sock = f"{tmp}/cm"
        base = ["ssh", "-F", SSH_CONFIG, *(["-S", sock] if master else [])]

        def ssh(*argv: str, input: str | None = None) -> str:
            return over_ssh([*base, LOGIN], shlex.join(argv), input=input)

        before = logins()
        t0 = time.monotonic()
        if master:
            # -f: the master goes to the background after the login; it must not hold our pipes.
            with open(f"{tmp}/master.err", "w+") as err:
                started = subprocess.run(["ssh", "-F", SSH_CONFIG, "-fNM", "-S", sock, LOGIN], timeout=TIMEOUT,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
                if started.returncode != 0:
                    err.seek(0)
                    raise BenchError(f"ssh -fNM exited {started.returncode}: {err.read().strip()}")
        tunnel = None
        job = ""
        try:
            job = ssh("sbatch", "--parsable", input=script).strip().split(";")[0]

            def running() -> str:
                state, _, node = ssh("squeue", "-h", "-j", job, "-o", "%T|%N").strip().partition("|")
                if state in ("", "FAILED", "CANCELLED", "TIMEOUT", "COMPLETED"):
                    raise BenchError(f"floor job {job} ended ({state or 'gone'})")
                return node if state == "RUNNING" else ""

            node = str(wait(f"floor job {job} to run", running, 0.25))
            local = free_port()
            forward = f"127.0.0.1:{local}:{node}:{port}"
            if master:
                run([*base, "-O", "forward", "-L", forward, LOGIN])
            else:
                tunnel = subprocess.Popen([*base, "-N", "-L", forward, LOGIN], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait("the floor's lab to answer", lambda: http_ok(local, token), 0.05)
            figures = {"total": time.monotonic() - t0, **login_figures(before)}
        finally:
            if tunnel is not None:
                tunnel.terminate()
                tunnel.wait(timeout=TIMEOUT)
            if job:
                ssh("scancel", job)
            if master:
                subprocess.run([*base, "-O", "exit", LOGIN], capture_output=True, timeout=TIMEOUT)
    return figures


def hpclab_run(home: str) -> dict[str, float]:
    # As installed: bytecode cached (PYTHONDONTWRITEBYTECODE would compile every module each run).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["HPCLAB_HOME"] = home
    before = logins()
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "hpclab", "up", "testcluster", "--detach", "--no-browser", "--json"],
                         env=env, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    total = time.monotonic() - t0
    if out.returncode != 0:
        raise BenchError(f"hpclab up exited {out.returncode}:\n{out.stderr}")
    figures = {"total": total, **login_figures(before)}
    info = json.loads(out.stdout)
    figures.update(info.get("timings", {}))
    if "stats" in info:
        figures["scheduler_queries"] = info["stats"]["scheduler_queries"]
    subprocess.run([sys.executable, "-m", "hpclab", "stop", info["id"]], env=env, capture_output=True,
                   timeout=TIMEOUT, check=True, stdin=subprocess.DEVNULL)
    return figures


def show(name: str, runs: list[dict[str, float]]) -> None:
    print(f"\n{name} ({len(runs)} runs)".ljust(32) + "  median      min      max")
    for key in runs[0]:
        values = [r.get(key, 0.0) for r in runs]
        print(f"  {key:<28} {statistics.median(values):8.3f} {min(values):8.3f} {max(values):8.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="counted rounds (after one warm-up round)")
    ap.add_argument("--seed", type=int, default=None, help="for the order of the runs in each round")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    order_rng = random.Random(seed)
    results: dict[str, list[dict[str, float]]] = {"hpclab": [], "floor-ssh": [], "floor-master": []}
    with tempfile.TemporaryDirectory(prefix="bench-hpclab-") as home:
        ways: dict[str, Callable[[], dict[str, float]]] = {
            "hpclab": lambda: hpclab_run(home),
            "floor-ssh": lambda: floor_run(master=False),
            "floor-master": lambda: floor_run(master=True),
        }
        for round_no in range(args.runs + 1):  # round 0 warms up caches, ssh and slurmctld; not counted
            order = list(ways)
            order_rng.shuffle(order)
            for name in order:
                wait("the previous job to leave the queue", queue_empty, 0.25)
                figures = ways[name]()
                if round_no > 0:
                    results[name].append(figures)
            print(f"round {round_no}{' (warm-up)' if round_no == 0 else ''}: {' '.join(order)}", file=sys.stderr)
    wait("the last job to leave the queue", queue_empty, 0.25)
    print(f"seed {seed}; {args.runs} counted rounds after one warm-up round; times in seconds, logins per run")
    show("floor-ssh: by hand, no safety, a login per command", results["floor-ssh"])
    show("floor-master: by hand, no safety, one ControlMaster", results["floor-master"])
    show("hpclab up --detach", results["hpclab"])
    print("\nhpclab minus floor (median total; median logins on login / nodes)")
    ours = results["hpclab"]
    for floor in ("floor-ssh", "floor-master"):
        theirs = results[floor]
        d = {k: statistics.median(r[k] for r in ours) - statistics.median(r[k] for r in theirs)
             for k in ("total", "logins_login", "logins_nodes")}
        print(f"  vs {floor:<14} {d['total']:+8.3f} s   {d['logins_login']:+.0f} / {d['logins_nodes']:+.0f}")


if __name__ == "__main__":
    try:
        with test_lock():
            main()
    except BenchError as exc:
        raise SystemExit(f"bench/up.py: {exc}") from None
