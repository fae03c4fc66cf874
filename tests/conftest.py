"""Test-suite wiring: the `e2e` marker, and what an e2e test does when the test cluster is missing.

Every test under tests/e2e/ is marked `e2e`. Without the cluster those tests skip and say why;
with HPCLAB_REQUIRE_E2E=1 (set by scripts/test, hence CI) they fail instead, so a run can never
look green while the end-to-end layer did not run.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTCLUSTER = ROOT / "scripts" / "testcluster"
E2E_DIR = ROOT / "tests" / "e2e"


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
