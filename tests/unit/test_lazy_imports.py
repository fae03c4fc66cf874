"""The commands that should answer at once load none of the machinery they do not use.

`hpclab --help` parses and prints; `hpclab list` with no session has no cluster to ask. Neither
may import the use cases, SSH, HTTP or the schedulers (bench/cli.py times them; this proves the
import structure that makes them fast, in a fresh interpreter where nothing is loaded yet).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# What a command that reaches a cluster needs, and `--help` never does.
HEAVY = ("hpclab.session", "hpclab.launch", "hpclab.cluster", "hpclab.remote", "hpclab.tunnel",
         "hpclab.watch", "hpclab.schedulers", "hpclab.profiles", "hpclab.state", "http.client", "ssl",
         "subprocess")

PROGRAM = """
import contextlib, io, json, sys
from hpclab import cli
out = io.StringIO()
code = None
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    try:
        code = cli.main(sys.argv[1:])
    except SystemExit as exc:  # argparse's --help
        code = exc.code
print(json.dumps({"code": code, "out": out.getvalue(), "modules": sorted(sys.modules)}))
"""


def run_fresh(tmp_path: Path, *argv: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HPCLAB")}
    env["HPCLAB_HOME"] = str(tmp_path / "home")
    proc = subprocess.run([sys.executable, "-c", PROGRAM, *argv], env=env, capture_output=True, text=True,
                          timeout=60, check=True)
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def loaded(result: dict[str, object]) -> list[str]:
    modules = result["modules"]
    assert isinstance(modules, list)
    return [m for m in HEAVY if m in modules]


def test_help_imports_none_of_the_machinery(tmp_path: Path) -> None:
    result = run_fresh(tmp_path, "--help")
    assert result["code"] == 0 and "COMMAND" in str(result["out"])
    assert loaded(result) == []


def test_help_of_up_imports_none_of_the_machinery(tmp_path: Path) -> None:
    result = run_fresh(tmp_path, "up", "--help")
    assert result["code"] == 0 and "--transport" in str(result["out"])
    assert loaded(result) == []


def test_list_without_sessions_imports_none_of_the_machinery(tmp_path: Path) -> None:
    for argv, shown in ((["list"], "no sessions"), (["list", "--json"], "[]")):
        result = run_fresh(tmp_path, *argv)
        assert result["code"] == 0 and str(result["out"]).strip() == shown
        assert loaded(result) == []


def test_list_with_a_record_still_reads_it(tmp_path: Path) -> None:
    """The quick answer is only for no record at all: an unreadable one is still reported."""
    sessions = tmp_path / "home" / "state" / "sessions"
    sessions.mkdir(parents=True, mode=0o700)
    (sessions / "deadbeef.json").write_text("{not json")
    result = run_fresh(tmp_path, "list")
    assert result["code"] == 0
    assert "deadbeef.json" in str(result["out"]) and "hpclab.session" in loaded(result)
