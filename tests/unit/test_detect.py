"""Which scheduler a login node runs: the probe's text, and how it is read."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hpclab.schedulers import names
from hpclab.schedulers.detect import DETECT_SCRIPT, NONE_FOUND, parse_detect

FIXTURES = Path(__file__).parent / "fixtures" / "detect"


@pytest.mark.parametrize(("name", "scheduler"), [
    ("slurm-and-sge.txt", "slurm"),  # captured: the test cluster's login node has both
    ("sge.txt", "sge"),  # captured: SGE 8.1.9 alone on PATH
    ("nothing.txt", NONE_FOUND),  # captured: nothing on PATH
    ("pbs.txt", "pbs"),
    ("torque.txt", "torque"),
    ("lsf.txt", "lsf"),
])
def test_parse_detect(name: str, scheduler: str) -> None:
    assert parse_detect((FIXTURES / name).read_text()) == scheduler


def test_every_answer_is_a_known_scheduler_or_none_found() -> None:
    for path in FIXTURES.glob("*.txt"):
        assert parse_detect(path.read_text()) in (*names(), NONE_FOUND)


def test_unidentified_qsub_is_not_guessed() -> None:
    assert parse_detect("@@have qsub\n@@qsub-version\nqsub: invalid option\n") == NONE_FOUND


def test_probe_is_one_line_without_bang() -> None:
    assert "\n" not in DETECT_SCRIPT and "!" not in DETECT_SCRIPT


def fake_bin(tmp_path: Path, **tools: str) -> str:
    """A PATH holding only sh, head and fake tools that print `tools[name]` (and log their argv)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for real in ("sh", "head", "cat"):
        (bin_dir / real).symlink_to(subprocess.run(["sh", "-c", f"command -v {real}"], capture_output=True,
                                                   text=True, check=True).stdout.strip())
    for name, text in tools.items():
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\necho "$0 $*" >> {tmp_path}/argv.log\nif [ -t 0 ]; then :; else cat >> '
                        f'{tmp_path}/stdin.log; fi\nprintf "%s\\n" {text!r}\n')
        path.chmod(0o755)
    return str(bin_dir)


def run_probe(path: str) -> str:
    return subprocess.run(["/bin/sh", "-c", DETECT_SCRIPT], capture_output=True, text=True, timeout=10,
                          env={"PATH": path}, check=True).stdout


def test_probe_on_fake_pbs_reads_nothing_from_stdin(tmp_path: Path) -> None:
    path = fake_bin(tmp_path, qsub="pbs_version = 2022.1.1", qstat="qstat: invalid option -- 'h'")
    out = run_probe(path)
    assert parse_detect(out) == "pbs"
    stdin = tmp_path / "stdin.log"
    assert not stdin.exists() or stdin.read_text() == ""  # every probe reads /dev/null


def test_probe_never_asks_grid_engine_qsub_for_a_version(tmp_path: Path) -> None:
    path = fake_bin(tmp_path, qsub="should not run", qstat="SGE 8.1.9")
    assert parse_detect(run_probe(path)) == "sge"
    assert "qsub --version" not in (tmp_path / "argv.log").read_text()
