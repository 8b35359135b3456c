"""Test tiers: tests/unit (no root), tests/kernel and tests/e2e (root, real BPF, real runc).

Without root the root tiers skip with a reason. With CI set, a root tier that skipped
or did not run at all fails the session: in CI every tier must run.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

ROOT_TIERS = ("kernel", "e2e")
FALCO = Path(__file__).resolve().parents[2] / "shared" / "compat" / "falco"
TIERS = ("unit", *ROOT_TIERS)
_outcomes: dict[str, Counter] = {tier: Counter() for tier in TIERS}
_collected: Counter = Counter()


def _tier(nodeid: str) -> str | None:
    parts = nodeid.split("/")
    return parts[1] if len(parts) > 2 and parts[0] == "tests" and parts[1] in TIERS else None


def pytest_collection_modifyitems(config, items):
    _collected.update(_tier(item.nodeid) for item in items)
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="root tier: needs root for BPF and runc (run `sudo make test`)")
    for item in items:
        if _tier(item.nodeid) in ROOT_TIERS:
            item.add_marker(skip)


def pytest_runtest_logreport(report):
    tier = _tier(report.nodeid)
    if tier and (report.when == "call" or report.outcome != "passed"):
        _outcomes[tier][report.outcome] += 1


def _ci_failures() -> list[str]:
    if not os.environ.get("CI"):
        return []
    problems = []
    for tier in ROOT_TIERS:
        counts = _outcomes[tier]
        if counts["skipped"]:
            problems.append(f"{counts['skipped']} {tier} test(s) skipped")
        elif _collected[tier] and not counts["passed"] and not counts["failed"]:
            problems.append(f"the {tier} tier was collected but did not run")
    return problems


def pytest_terminal_summary(terminalreporter):
    terminalreporter.section("tiers")
    for tier in TIERS:
        counts = _outcomes[tier]
        terminalreporter.write_line(f"{tier:<7} " + (", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
                                                     or "did not run"))
    for problem in _ci_failures():
        terminalreporter.write_line(f"CI: {problem}: every tier must run in CI", red=True)


def pytest_sessionfinish(session, exitstatus):
    if _ci_failures() and session.exitstatus == 0:
        session.exitstatus = 1


@pytest.fixture(scope="session")
def rig():
    """Real runc containers over a busybox image (sensor.testing.containers)."""
    from sensor.testing.containers import ContainerRig

    with ContainerRig() as container_rig:
        yield container_rig


@pytest.fixture
def falco_corpus() -> Path:
    """Falco's public rule files, read from ../shared (never copied into the project).
    Without them a test skips, except in CI, where it fails."""
    if not FALCO.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"Falco's rule corpus is missing at {FALCO}")
        pytest.skip(f"Falco's rule corpus lives at {FALCO}")
    return FALCO
