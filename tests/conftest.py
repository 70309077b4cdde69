"""Suite-wide policy: a test never skips. A skipped test would pass ``make test``
while proving nothing (a missing tool, no route off loopback); it fails instead,
with the reason it gave. ``make test`` installs the tools (.ci/system-tools)."""

from __future__ import annotations

from collections.abc import Generator

import pytest

pytest_plugins = ["pytester"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped, and this suite never skips: {reason}"
