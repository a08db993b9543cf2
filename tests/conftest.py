"""Test-wide policy: on CI (``PPO_DIST_CI=1``, set by .ci/run) a skipped test is a failure.

.ci/run installs what every tier needs (SLURM, shellcheck, CJK fonts, tyro, the vLLM environment), so
a skip there means a tier silently stopped running. A skip that is expected on CI goes in
``EXPECTED_SKIPS`` with its reason.
"""

from __future__ import annotations

import os

import pytest

# test node id -> why it may skip on the CI machine
EXPECTED_SKIPS: dict[str, str] = {}

ON_CI = os.environ.get("PPO_DIST_CI") == "1"


def _unexpected(nodeid: str, longrepr) -> str:
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return (
        f"{nodeid} was skipped on CI ({reason}); .ci/run installs what every tier needs, so this tier did not "
        "run: install what it lacks in .ci/run, or list the skip with its reason in tests/conftest.py EXPECTED_SKIPS"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if ON_CI and report.skipped and item.nodeid not in EXPECTED_SKIPS and not hasattr(report, "wasxfail"):
        report.outcome, report.longrepr = "failed", _unexpected(item.nodeid, report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if ON_CI and report.skipped and collector.nodeid not in EXPECTED_SKIPS:  # a module-level importorskip
        report.outcome, report.longrepr = "failed", _unexpected(collector.nodeid, report.longrepr)
