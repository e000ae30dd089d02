"""The test suite's shape: fixtures come from plugin modules, markers from folders.

A real PostgreSQL for every database test, never a mock: ``tests/support/fix_server.py`` decides
where it comes from. Folders say what a test is (CONTRIBUTING.md); each test gets markers from its
folder here, so CI selects by marker, not by path:

- ``db``: needs a database (every folder but ``unit/``);
- ``faults``: breaks a server of its own (``faults/``, or a ``test_reliability_*`` file anywhere);
- ``property``: hypothesis, on a database of its own (``property/``, or ``test_property_*``).

``@pytest.mark.guarantee(N)`` ties a test to guarantee N of docs/guarantees.md;
``--guarantee N`` runs only those tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = (
    "tests.support.fix_server",
    "tests.support.fix_pgbouncer",
    "tests.support.fix_store",
    "tests.support.fix_asyncio",
)

TESTS = Path(__file__).resolve().parent
NO_DATABASE = frozenset({"unit"})
FOLDER_MARKERS = {"faults": "faults", "property": "property"}
FILE_PREFIX_MARKERS = {"test_reliability_": "faults", "test_property_": "property"}
# Fixtures that reach a server: a test in a no-database folder must not use one.
SERVER_FIXTURES = frozenset({"pg_server", "controlled_server", "pgbouncer"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--guarantee",
        action="append",
        type=int,
        default=[],
        metavar="N",
        help="run only the tests marked guarantee(N) (docs/guarantees.md); repeatable",
    )


def guarantees_of(item: pytest.Item) -> set[int]:
    return {int(n) for mark in item.iter_markers("guarantee") for n in mark.args}


def markers_for(path: Path) -> set[str]:
    """The markers a test file gets from where it lives (pure, unit-tested)."""
    parts = path.resolve().relative_to(TESTS).parts
    folder = parts[0] if len(parts) > 1 else ""
    found = set() if folder in NO_DATABASE else {"db"}
    if folder in FOLDER_MARKERS:
        found.add(FOLDER_MARKERS[folder])
    for prefix, marker in FILE_PREFIX_MARKERS.items():
        if path.name.startswith(prefix):
            found.add(marker)
    return found


# tryfirst: before pytest's own -m deselection, which runs in this same hook.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = markers_for(item.path)
        if "db" not in names and SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(
                f"{item.nodeid} uses a database fixture but lives in a no-database "
                f"folder ({', '.join(sorted(NO_DATABASE))}/): move it"
            )
        for name in sorted(names):
            item.add_marker(name)
    wanted = set(config.getoption("--guarantee"))
    if wanted:
        kept = [item for item in items if guarantees_of(item) & wanted]
        dropped = [item for item in items if not guarantees_of(item) & wanted]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept
