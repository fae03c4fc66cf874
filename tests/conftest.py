"""Test-suite wiring: the `e2e` marker, what an e2e test does when the test cluster is missing,
and the gate that keeps a full run from passing with tests left out.

Every test under tests/e2e/ is marked `e2e`. Without the cluster those tests skip and say why;
with HPCLAB_REQUIRE_E2E=1 (set by scripts/test, hence CI) they fail instead, so a run can never
look green while the end-to-end layer did not run.

The full run (no pytest arguments, HPCLAB_FULL_RUN=1 from scripts/test, or CI set) also fails
when PYTEST_ADDOPTS or HPCLAB_UPDATE_GOLDEN is set, when any test is skipped, xfailed or
deselected, when a test file under tests/ contributed no test, when fewer tests of a layer ran
than were collected, or when a shell the quoting tests use is missing. Every run ends with the
count of tests per layer.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTCLUSTER = ROOT / "scripts" / "testcluster"
TESTS_DIR = ROOT / "tests"
E2E_DIR = TESTS_DIR / "e2e"
UNIT_DIR = TESTS_DIR / "unit"
LAYERS = ("unit", "e2e")
# tests/unit/test_quoting.py runs commands through each of these; a missing one would shrink it silently.
SHELLS = ("sh", "dash", "bash", "tcsh")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in item.path.parents:
            item.add_marker(pytest.mark.e2e)
    # A restart pulls the cluster from under any test that runs after it: those go last.
    items.sort(key=lambda item: item.get_closest_marker("cluster_restart") is not None)


@functools.cache
def cluster_missing() -> str | None:
    """Why the test cluster cannot be used, or None when it is up and healthy."""
    if os.geteuid() != 0:
        return "the test cluster needs root (network namespaces); run scripts/test as root"
    try:
        status = subprocess.run(
            [str(TESTCLUSTER), "status"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"scripts/testcluster status did not run: {exc}"
    if status.returncode != 0:
        return "the test cluster is not up (scripts/testcluster up starts it):\n" + status.stdout + status.stderr
    return None


def require_cluster() -> None:
    """Skip, or fail under HPCLAB_REQUIRE_E2E=1, when the test cluster is not usable."""
    reason = cluster_missing()
    if reason is None:
        return
    if os.environ.get("HPCLAB_REQUIRE_E2E") == "1":
        pytest.fail(f"HPCLAB_REQUIRE_E2E=1, but {reason}", pytrace=False)
    pytest.skip(reason.splitlines()[0])


@pytest.fixture(scope="session")
def cluster_gate() -> None:
    """Session-wide check that the test cluster is up; see require_cluster()."""
    require_cluster()


@pytest.fixture(autouse=True)
def _e2e_needs_cluster(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("e2e") is not None:
        request.getfixturevalue("cluster_gate")


# --- the suite's gate ------------------------------------------------------------------------------


def layer_of(path: Path) -> str:
    if E2E_DIR in path.parents:
        return "e2e"
    if UNIT_DIR in path.parents:
        return "unit"
    return "other"


def full_run_reason(config: pytest.Config) -> str | None:
    """Why this run is held to the full-run gate, or None for a developer's partial run."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        return "CI is set"
    if os.environ.get("HPCLAB_FULL_RUN") == "1":
        return "scripts/test without arguments"
    if not config.invocation_params.args:
        return "pytest without arguments"
    return None


class SuiteGate:
    """Counts what a run collected, deselected and ran, per layer; in the full run, fails the
    session (exit 1) for every way the suite could pass without having run all of itself."""

    def __init__(self, config: pytest.Config, reason: str | None) -> None:
        self.config = config
        self.reason = reason
        # scripts/test runs the full run as two processes, one per layer, at the same time (the
        # unit layer needs no cluster): each holds its own layer to the gate.
        shard = os.environ.get("HPCLAB_GATE_LAYER", "")
        self.layers: tuple[str, ...] = (shard,) if shard in LAYERS else LAYERS
        self.layer: dict[str, str] = {}  # nodeid -> layer of every collected (selected) test
        self.files: set[Path] = set()  # test files that produced at least one test, selected or not
        self.deselected: list[str] = []
        self.ran: set[str] = set()  # nodeids whose test body ran (a call phase was reported)
        self.outcomes: dict[str, Counter[str]] = {layer: Counter() for layer in (*LAYERS, "other")}
        self.not_run: list[str] = []  # skipped or xfailed: reported, but not passed
        self.findings: list[str] = []

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += [item.nodeid for item in items]
        self.files.update(item.path for item in items)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            self.layer[item.nodeid] = layer_of(item.path)
            self.files.add(item.path)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        counts = self.outcomes[self.layer.get(report.nodeid, "other")]
        if report.when == "call":
            self.ran.add(report.nodeid)
        if hasattr(report, "wasxfail"):
            counts["xfailed" if report.skipped else "xpassed"] += 1
            self.not_run.append(f"{report.nodeid} (xfail: {report.wasxfail})")
        elif report.skipped:
            counts["skipped"] += 1
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.not_run.append(f"{report.nodeid} ({reason})")
        elif report.failed:
            counts["failed" if report.when == "call" else "error"] += 1
        elif report.when == "call":
            counts["passed"] += 1

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.reason is None:
            return
        self.findings = self.check()
        if self.findings and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        path = os.environ.get("HPCLAB_SUITE_REPORT")
        if path:
            Path(path).write_text(json.dumps({"counts": self.counts(), "findings": self.findings}, indent=1) + "\n")

    def check(self) -> list[str]:
        findings = []
        for name in ("PYTEST_ADDOPTS", "HPCLAB_UPDATE_GOLDEN"):
            if os.environ.get(name):
                findings.append(f"{name} is set ({os.environ[name]!r}): the full run takes no extra options")
        if self.not_run:
            findings.append(f"{len(self.not_run)} test(s) skipped or xfailed: " + "; ".join(self.not_run))
        if self.deselected:
            findings.append(f"{len(self.deselected)} test(s) deselected: " + ", ".join(self.deselected[:10]))
        missing = sorted(str(p.relative_to(ROOT)) for p in TESTS_DIR.rglob("test_*.py")
                         if p not in self.files and layer_of(p) in self.layers)
        if missing:
            findings.append("test files that contributed no test: " + ", ".join(missing))
        if self.layers != LAYERS and any(lay not in self.layers for lay in self.layer.values()):
            findings.append(f"this run holds only the {'/'.join(self.layers)} layer to the gate, but collected others")
        for layer in self.layers:
            collected = [n for n, lay in self.layer.items() if lay == layer]
            ran = [n for n in collected if n in self.ran]
            if not collected:
                findings.append(f"no {layer} test was collected")
            elif len(ran) < len(collected):
                findings.append(f"only {len(ran)} of {len(collected)} collected {layer} tests ran")
        absent = [shell for shell in SHELLS if shutil.which(shell) is None]
        if absent:
            findings.append("shells the quoting tests need are missing: " + ", ".join(absent))
        return findings

    def counts(self) -> dict[str, dict[str, int]]:
        result = {}
        for layer in (*LAYERS, "other"):
            collected = sum(1 for lay in self.layer.values() if lay == layer)
            if collected or layer != "other":
                result[layer] = {"collected": collected, **self.outcomes[layer]}
        return result

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        tr = terminalreporter
        tr.section("tests per layer")
        for layer, counts in self.counts().items():
            rest = ", ".join(
                f"{counts[k]} {k}"
                for k in ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
                if counts.get(k)
            )
            tr.write_line(f"{layer:<5} {counts['collected']:4d} collected: {rest or 'none ran'}")
        if self.deselected:
            tr.write_line(f"deselected {len(self.deselected)}")
        if self.reason is None:
            tr.write_line("partial run: the full-run gate is off (no skip, deselection or count is checked)")
        elif self.findings:
            tr.write_line(f"FULL-RUN GATE FAILED ({self.reason}):", red=True, bold=True)
            for finding in self.findings:
                tr.write_line(f"  - {finding}", red=True)
        else:
            tr.write_line(
                f"full-run gate passed ({self.reason}): every collected test ran, none skipped or deselected",
                green=True,
            )


def pytest_configure(config: pytest.Config) -> None:
    # A shell starts background jobs with SIGINT ignored, and children inherit that: the hpclab
    # processes of the Ctrl-C tests would then never see their Ctrl-C. Handled here, SIGINT reaches
    # every child with its default action, as from a terminal.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    reason = full_run_reason(config)
    if reason is not None:
        # Refused up front: both change what the run proves (options, or golden files rewritten).
        for name in ("PYTEST_ADDOPTS", "HPCLAB_UPDATE_GOLDEN"):
            if os.environ.get(name):
                raise pytest.UsageError(
                    f"{name} is set ({os.environ[name]!r}), but this is a full run ({reason}): unset it, "
                    "or pass pytest arguments for a partial run (scripts/test tests/unit ...)"
                )
    config.pluginmanager.register(SuiteGate(config, reason), "hpclab-suite-gate")
