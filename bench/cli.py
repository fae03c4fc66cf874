#!/usr/bin/env python3
"""How fast hpclab answers the commands that should answer at once: `hpclab --help` and
`hpclab list` with no sessions (target: at most 75 ms median on this machine).

    .venv/bin/python bench/cli.py --runs 20

Each command runs as a new process (the `hpclab` script next to this Python, as a user runs it),
with HPCLAB_HOME in a fresh empty directory and bytecode cached as after a pip install, after one
warm-up run that is not counted. Prints
the median, min and max wall time of each, a bare `python -c pass` for the interpreter's own
share, and then the slowest imports of each command (`python -X importtime`, cumulative).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_MS = 75.0


def hpclab_argv() -> list[str]:
    script = Path(sys.executable).parent / "hpclab"
    return [str(script)] if script.exists() else [sys.executable, "-m", "hpclab"]


def timed(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=60)
    elapsed = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0:
        raise SystemExit(f"bench/cli.py: {' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return elapsed


def import_offenders(args: list[str], env: dict[str, str], top: int) -> list[tuple[int, str]]:
    """(cumulative microseconds, module) of the slowest imports of `hpclab ARGS`."""
    code = "import sys; from hpclab.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code, *args], env=env,
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, timeout=60)
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:"):].split("|")
        rows.append((int(cumulative), name.rstrip()))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=20, help="counted runs of each command (at least 20 for the figure)")
    ap.add_argument("--top", type=int, default=12, help="how many of the slowest imports to show")
    args = ap.parse_args()
    commands = {"python -c pass": [sys.executable, "-c", "pass"],
                "hpclab --help": [*hpclab_argv(), "--help"],
                "hpclab list (no sessions)": [*hpclab_argv(), "list"]}
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as home:
        # As installed by pip: bytecode compiled once and kept (PYTHONDONTWRITEBYTECODE would make
        # every run compile every module again, which no installed hpclab does).
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("HPCLAB_") and k != "PYTHONDONTWRITEBYTECODE"}
        env["HPCLAB_HOME"] = home
        times: dict[str, list[float]] = {name: [] for name in commands}
        for argv in commands.values():
            timed(argv, env)  # warm-up: the page cache and the bytecode files
        for _ in range(args.runs):  # interleaved, so that a busy moment costs every command alike
            for name, argv in commands.items():
                times[name].append(timed(argv, env))
        print(f"{args.runs} runs each, interleaved, after a warm-up; wall time in ms (target <= {TARGET_MS:.0f})")
        print(f"  {'command':<28} {'median':>8} {'min':>8} {'max':>8}")
        for name, values in times.items():
            verdict = "" if name.startswith("python") else (
                "  ok" if statistics.median(values) <= TARGET_MS else "  OVER")
            print(f"  {name:<28} {statistics.median(values):8.1f} {min(values):8.1f} {max(values):8.1f}{verdict}")
        for label, cli_args in (("--help", ["--help"]), ("list", ["list"])):
            print(f"\nslowest imports of hpclab {label} (cumulative ms, python -X importtime)")
            for micro, module in import_offenders(cli_args, env, args.top):
                print(f"  {micro / 1000:7.1f}  {module}")


if __name__ == "__main__":
    main()
