"""Record each test's outcome (nodeid -> passed / failed / skipped) into CONVDB_CONFORMANCE_REPORT."""

from __future__ import annotations

import json
import os

import pytest

_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or report.outcome != "passed":
        previous = _outcomes.get(report.nodeid)
        if previous in (None, "passed"):  # a failed setup or teardown wins over a passed call
            _outcomes[report.nodeid] = "error" if report.failed and report.when != "call" else report.outcome


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("CONVDB_CONFORMANCE_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(_outcomes, out, indent=1, sort_keys=True)
