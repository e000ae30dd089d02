"""The README's test command is what CI runs: the Makefile's ``install`` and ``test`` recipes, which
.ci/run calls as ``make install test``."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def recipe(target: str) -> list[str]:
    """The command lines of one Makefile target."""
    lines = (ROOT / "Makefile").read_text(encoding="utf-8").splitlines()
    start = lines.index(f"{target}:") + 1
    body = []
    for line in lines[start:]:
        if not line.startswith("\t"):
            break
        body.append(line.strip())
    return body


def test_the_readme_test_command_is_make_install_test() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [line for line in readme.splitlines() if re.search(r"\bpython -m pytest\b", line)]
    assert len(commands) == 1, commands
    assert commands[0] == " && ".join(recipe("install") + recipe("test"))


def test_ci_runs_the_makefile_targets() -> None:
    ci = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    for step in ("make lint", "make types", "make install test", "make test-pgbouncer"):
        assert step in ci, f".ci/run does not run {step}"
    assert "ruff format --check ." in recipe("lint")
