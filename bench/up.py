#!/usr/bin/env python3
"""How long `hpclab up` takes on the test cluster, against the floor of doing it by hand.

    eval "$(scripts/testcluster env)"; .venv/bin/python bench/up.py --runs 7

hpclab: `hpclab up testcluster --detach --no-browser --json` (its phases come from --json),
then `hpclab stop`. Floor: the bare manual sequence with no safety at all: plain `ssh` running
`sbatch` of a Jupyter job with a known port and token, `squeue` over ssh every 0.25 s until it
runs, one `ssh -N -L`, HTTP GET until 200. Prints median/min/max of each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SSH_CONFIG = os.environ.get("TC_SSH_CONFIG", "/var/tmp/hpclab-testcluster/ssh/config")
LOGIN = os.environ.get("TC_LOGIN_HOST", "tc-login")
VENV = os.environ.get("TC_JUPYTER_VENV", "/opt/hpclab-jupyter")
LOG = Path(os.environ.get("HPCLAB_TC_DIR", "/var/tmp/hpclab-testcluster")) / "log" / "sshd-login.log"


def auths() -> int:
    return LOG.read_text(errors="replace").count("Accepted publickey for ")


def ssh(*argv: str, input: str | None = None) -> str:
    return subprocess.run(["ssh", "-F", SSH_CONFIG, LOGIN, shlex.join(argv)], input=input, capture_output=True,
                          text=True, check=True).stdout


def http_ok(port: int, token: str) -> bool:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def floor_run() -> dict[str, float]:
    port = random.randint(20000, 30000)
    token = "floor" + str(random.randint(0, 10**9))
    script = (f"#!/bin/bash\n#SBATCH -o /dev/null\nsource {VENV}/bin/activate\n"
              f"exec jupyter lab --no-browser --ip=$(hostname -I | cut -d' ' -f1) --port={port} "
              f"--ServerApp.port_retries=0 --IdentityProvider.token={token}\n")
    before = auths()
    t0 = time.monotonic()
    job = ssh("sbatch", "--parsable", input=script).strip().split(";")[0]
    node = ""
    while True:
        state, _, node = ssh("squeue", "-h", "-j", job, "-o", "%T|%N").strip().partition("|")
        if state == "RUNNING":
            break
        time.sleep(0.25)
    local = random.randint(30001, 40000)
    tunnel = subprocess.Popen(["ssh", "-F", SSH_CONFIG, "-N", "-L", f"127.0.0.1:{local}:{node}:{port}", LOGIN],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not http_ok(local, token):
            time.sleep(0.05)
        total = time.monotonic() - t0
    finally:
        tunnel.terminate()
        tunnel.wait()
        ssh("scancel", job)
    return {"total": total, "ssh_auths": auths() - before}


def hpclab_run(home: str) -> dict[str, float]:
    env = dict(os.environ, HPCLAB_HOME=home)
    before = auths()
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "hpclab", "up", "testcluster", "--detach", "--no-browser", "--json"],
                         env=env, capture_output=True, text=True)
    total = time.monotonic() - t0
    if out.returncode != 0:
        raise SystemExit(f"hpclab up failed:\n{out.stderr}")
    info = json.loads(out.stdout)
    figures = {"total": total, "ssh_auths": auths() - before, **info["timings"],
               "scheduler_queries": info["stats"]["scheduler_queries"]}
    subprocess.run([sys.executable, "-m", "hpclab", "stop", info["id"]], env=env, capture_output=True, check=True)
    return figures


def show(name: str, runs: list[dict[str, float]]) -> None:
    print(f"\n{name} ({len(runs)} runs)            median      min      max")
    for key in runs[0]:
        values = [r.get(key, 0.0) for r in runs]
        print(f"  {key:<22} {statistics.median(values):8.3f} {min(values):8.3f} {max(values):8.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    floor, ours = [], []
    with tempfile.TemporaryDirectory() as home:
        for _ in range(args.runs):  # interleaved, so drift in the machine hits both alike
            floor.append(floor_run())
            ours.append(hpclab_run(home))
    show("floor: by hand, no safety", floor)
    show("hpclab up --detach", ours)
    diff = statistics.median(r["total"] for r in ours) - statistics.median(r["total"] for r in floor)
    print(f"\nmedian total, hpclab minus floor: {diff:+.3f} s (target: at most +0.5 s)")


if __name__ == "__main__":
    main()
