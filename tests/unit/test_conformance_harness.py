"""The conformance harness's own bookkeeping (no download, no database): shards, merging, verdicts."""

from __future__ import annotations

from tests.conformance import harness
from tests.conformance.harness import SUITES, Result, Suite, merge


def test_every_suite_runs_each_module_exactly_once() -> None:
    for suite in SUITES.values():
        modules = [m for group in suite.groups for m in group]
        assert sorted(modules) == sorted(suite.modules), suite.name
        assert len(modules) == len(set(modules)), suite.name


def test_not_applicable_entries_name_tests_of_the_suites_modules() -> None:
    for suite in SUITES.values():
        for node in harness.load_not_applicable(suite):
            path = node.split("::", 1)[0]
            assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in suite.modules), node


SUITE = Suite("demo", "demo", "1.0", "plugin", ("a.py", "b.py"), shards=(("a.py",), ("b.py",)))


def result(outcomes: dict[str, str], returncode: int, seconds: float = 1.0) -> Result:
    return Result(SUITE, outcomes, {}, seconds, returncode)


def test_merge_takes_every_outcome_the_slowest_shard_and_the_worst_exit() -> None:
    merged = merge(SUITE, [result({"a.py::t": "passed"}, 0, 3.0), result({"b.py::t": "failed"}, 1, 5.0)])
    assert merged.outcomes == {"a.py::t": "passed", "b.py::t": "failed"}
    assert merged.seconds == 5.0 and merged.returncode == 1 and not merged.ok
    crashed = merge(SUITE, [result({"a.py::t": "passed"}, 0), result({"b.py::t": "passed"}, 3)])
    assert crashed.returncode == 3


def test_a_run_is_ok_only_when_every_test_passed_or_is_listed_and_pytest_ended_normally() -> None:
    assert result({"a.py::t": "passed"}, 0).ok
    assert not result({}, 0).ok  # nothing ran
    assert not result({"a.py::t": "passed"}, 2).ok  # interrupted: the rest never ran
    listed = Result(SUITE, {"a.py::t": "failed"}, {"a.py::t": "why"}, 1.0, 1)
    assert listed.ok
    stale = Result(SUITE, {"a.py::t": "passed"}, {"a.py::t": "why"}, 1.0, 0)
    assert not stale.ok and stale.stale == ["a.py::t"]
