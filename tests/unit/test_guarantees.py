"""Every numbered guarantee in docs/guarantees.md has tests carrying its marker, and the page names
only files that exist.

A static scan (``ast``) of the test files finds ``pytest.mark.guarantee(N, ...)`` on test functions
and in module ``pytestmark``; it needs no database and no collection.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
DOC = ROOT / "docs" / "guarantees.md"
NUMBERED = re.compile(r"^\*\*(\d+)\. ", re.MULTILINE)
NAMED_FILE = re.compile(r"`((?:tests|tools|benchmarks|convdb)/[\w/.-]+\.(?:py|sql)|test_\w+\.py)`")


def documented() -> list[int]:
    return [int(n) for n in NUMBERED.findall(DOC.read_text(encoding="utf-8"))]


def _guarantee_calls(node: ast.AST) -> list[ast.Call]:
    """``pytest.mark.guarantee(...)`` calls anywhere under ``node``."""
    return [
        call
        for call in ast.walk(node)
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == "guarantee"
        and isinstance(call.func.value, ast.Attribute)
        and call.func.value.attr == "mark"
    ]


def marked_tests() -> dict[int, list[str]]:
    """Guarantee number -> the tests (``path::name``) that carry its marker."""
    found: dict[int, list[str]] = defaultdict(list)
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        where = path.relative_to(ROOT).as_posix()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                owners = [(node.name, call) for d in node.decorator_list for call in _guarantee_calls(d)]
            elif isinstance(node, ast.Assign | ast.AnnAssign) and "pytestmark" in ast.dump(node):
                owners = [("<module>", call) for call in _guarantee_calls(node)]
            else:
                continue
            for name, call in owners:
                assert call.args and not call.keywords, f"{where}::{name}: guarantee() takes numbers only"
                for arg in call.args:
                    assert isinstance(arg, ast.Constant) and type(arg.value) is int, (
                        f"{where}::{name}: guarantee() takes literal numbers, got {ast.unparse(arg)}"
                    )
                    found[arg.value].append(f"{where}::{name}")
    return found


def test_guarantees_are_numbered_one_to_n() -> None:
    numbers = documented()
    assert numbers, f"no numbered guarantee (**N. ...**) found in {DOC}"
    assert numbers == list(range(1, len(numbers) + 1)), numbers


def test_every_guarantee_has_a_test_and_every_marker_a_guarantee() -> None:
    numbers = set(documented())
    marked = marked_tests()
    untested = sorted(numbers - set(marked))
    assert not untested, (
        f"guarantees {untested} of docs/guarantees.md have no test: mark the tests that "
        "prove them with @pytest.mark.guarantee(N)"
    )
    stale = {n: tests for n, tests in marked.items() if n not in numbers}
    assert not stale, f"markers name guarantees that docs/guarantees.md does not have: {stale}"


def test_files_the_page_names_exist() -> None:
    names = set(NAMED_FILE.findall(DOC.read_text(encoding="utf-8")))
    assert names, "the page names no test file: the scan is broken"
    basenames = {p.name for p in TESTS.rglob("test_*.py")}
    missing = sorted(n for n in names if not ((ROOT / n).is_file() if "/" in n else n in basenames))
    assert not missing, f"docs/guarantees.md names files that do not exist: {missing}"


def test_the_scan_sees_markers_in_both_places() -> None:
    source = (
        "import pytest\npytestmark = pytest.mark.guarantee(3)\n\n"
        "@pytest.mark.guarantee(1, 2)\nasync def test_x() -> None: ...\n"
    )
    tree = ast.parse(source)
    calls = [c for node in tree.body for c in _guarantee_calls(node)]
    assert sorted(
        a.value for c in calls for a in c.args if isinstance(a, ast.Constant) and type(a.value) is int
    ) == [
        1,
        2,
        3,
    ]
