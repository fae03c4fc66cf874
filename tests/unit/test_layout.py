"""The test tree's own rule: pytest imports test files by basename (rootdir-relative imports, no
packages), so a unit and an e2e file of the same name cannot be collected in one run; the full
run would stop at collection. Caught here, in the unit layer, before anyone runs the cluster."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_unit_and_e2e_test_files_have_distinct_basenames() -> None:
    unit = {p.name for p in (TESTS / "unit").glob("test_*.py")}
    e2e = {p.name for p in (TESTS / "e2e").glob("test_*.py")}
    assert unit and e2e
    assert unit & e2e == set(), f"rename one of each pair: {sorted(unit & e2e)}"
