"""The schema files the package ships, without a database: the packaged copies equal the top-level
files, the migration loader enforces numbering and the kind/floor headers, plan() picks the right
files, and the version constants agree."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path

import pytest

import convdb
from convdb import SCHEMA_VERSION, migrations
from convdb.migrations import MIGRATIONS, fresh_install_sql, parse_migrations, plan

ROOT = Path(__file__).resolve().parents[2]
SQL = resources.files("convdb.sql")


@pytest.mark.parametrize("name", ["schema.sql", "schema_rls.sql", "schema_citus.sql", "schema_search.sql"])
def test_packaged_copy_is_byte_equal_to_the_top_level_file(name: str) -> None:
    assert (SQL / name).read_bytes() == (ROOT / name).read_bytes(), (
        f"convdb/sql/{name} must be a copy of the top-level {name}: cp {name} convdb/sql/{name}"
    )


def test_schema_version_is_the_last_migration_and_schema_sql_installs_it() -> None:
    assert MIGRATIONS[-1].version == SCHEMA_VERSION
    text = (ROOT / "schema.sql").read_text()
    assert text.splitlines()[0] == f"-- convdb schema, version {SCHEMA_VERSION}: the fresh install."
    assert f"VALUES (true, {SCHEMA_VERSION}, now(), {MIGRATIONS[-1].floor})" in text


def test_packaged_migrations_are_what_the_loader_reads() -> None:
    files = sorted(e.name for e in (SQL / "migrations").iterdir())
    assert files == [m.filename for m in MIGRATIONS]
    assert [(m.version, m.kind, m.floor) for m in MIGRATIONS[:2]] == [(1, "additive", 1), (2, "additive", 1)]
    for m in MIGRATIONS:
        body = [line.strip() for line in m.sql.splitlines() if line.strip() and not line.startswith("--")]
        assert body[0] == "BEGIN;" and body[-1] == "COMMIT;", f"{m.filename} runs in one transaction"


def test_version_constants() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "convdb._version.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", convdb.__version__)
    assert convdb.SCHEMA_VERSION == SCHEMA_VERSION == 9
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {convdb.__version__}" in changelog and f"schema version {SCHEMA_VERSION}" in changelog


def test_fresh_install_sql_is_schema_sql_with_optional_rls() -> None:
    assert fresh_install_sql() == (ROOT / "schema.sql").read_text()
    assert fresh_install_sql(row_level_security=True) == (
        (ROOT / "schema.sql").read_text() + "\n" + (ROOT / "schema_rls.sql").read_text()
    )
    assert fresh_install_sql(citus=True) == (
        (ROOT / "schema.sql").read_text() + "\n" + (ROOT / "schema_citus.sql").read_text()
    )
    assert fresh_install_sql(row_level_security=True, citus=True) == (  # distributed first
        (ROOT / "schema.sql").read_text()
        + "\n"
        + (ROOT / "schema_citus.sql").read_text()
        + "\n"
        + (ROOT / "schema_rls.sql").read_text()
    )


def _file(kind: str = "additive", floor: str | None = None, body: str = "BEGIN;\nCOMMIT;\n") -> str:
    header = f"-- a migration\n-- kind: {kind}\n" + (f"-- floor: {floor}\n" if floor else "")
    return header + "\n" + body


def test_the_loader_reads_kind_and_floor() -> None:
    parsed = parse_migrations(
        {
            "0001_a.sql": _file(),
            "0002_b.sql": _file(),
            "0003_c.sql": _file("breaking", "2"),
            "0004_d.sql": _file(),
            "0005_e.sql": _file("breaking", "4"),
        }
    )
    assert [(m.version, m.filename, m.kind, m.floor) for m in parsed] == [
        (1, "0001_a.sql", "additive", 1),
        (2, "0002_b.sql", "additive", 1),
        (3, "0003_c.sql", "breaking", 2),
        (4, "0004_d.sql", "additive", 2),
        (5, "0005_e.sql", "breaking", 4),
    ]


@pytest.mark.parametrize(
    ("files", "problem"),
    [
        ({"0001_a.sql": _file(), "2_b.sql": _file()}, "is not NNNN_name.sql"),
        ({"0001_a.sql": _file(), "0002_B.sql": _file()}, "is not NNNN_name.sql"),
        ({"0001_a.sql": _file(), "0003_c.sql": _file()}, "without holes"),
        ({"0002_b.sql": _file()}, "without holes"),
        ({"0001_a.sql": _file(), "0001_b.sql": _file()}, "two migrations for version 1"),
        ({"0001_a.sql": "-- no header\nBEGIN;\nCOMMIT;\n"}, "exactly once"),
        ({"0001_a.sql": _file("sideways")}, "exactly once"),
        ({"0001_a.sql": "-- kind: additive\n-- kind: additive\nBEGIN;\n"}, "exactly once"),
        (
            {"0001_a.sql": "-- header\nBEGIN;\n-- kind: additive\nCOMMIT;\n"},
            "exactly once",
        ),  # not in the header
        ({"0001_a.sql": _file(), "0002_b.sql": _file("additive", "1")}, "keeps the floor"),
        ({"0001_a.sql": _file(), "0002_b.sql": _file("breaking")}, "declares its new floor"),
        ({"0001_a.sql": _file(), "0002_b.sql": _file("breaking", "x")}, "declares its new floor"),
        ({"0001_a.sql": _file(), "0002_b.sql": _file("breaking", "2")}, "stay below 2"),
        (
            {"0001_a.sql": _file(), "0002_b.sql": _file(), "0003_c.sql": _file("breaking", "1")},
            "rise above 1",
        ),
    ],
)
def test_the_loader_refuses_malformed_migrations(files: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_migrations(files)


def test_plan_picks_the_files_between_two_versions() -> None:
    assert [m.filename for m in plan(1, SCHEMA_VERSION)] == [m.filename for m in MIGRATIONS[1:]]
    assert [m.version for m in plan(0, SCHEMA_VERSION)] == list(range(1, SCHEMA_VERSION + 1))
    assert plan(SCHEMA_VERSION, SCHEMA_VERSION) == ()
    assert plan(0, 1) == (MIGRATIONS[0],)


@pytest.mark.parametrize(
    ("start", "end", "problem"),
    [
        (-1, 2, "unknown schema version -1"),
        (SCHEMA_VERSION + 1, SCHEMA_VERSION + 1, "unknown schema version"),
        (0, SCHEMA_VERSION + 5, r"unknown schema version \d+ \(--to\)"),
        (2, 1, "migrations only upgrade"),
    ],
)
def test_plan_refuses_unknown_versions(start: int, end: int, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        migrations.plan(start, end)


def test_delegated_function_digests_are_schema_citus_sqls_bodies() -> None:
    """DELEGATED_FUNCTIONS is what schema_citus.sql creates: a body edited in the file without its
    digest here (or the reverse) fails here, not as a store that silently stops delegating."""
    import hashlib

    from convdb.schema_check import DELEGATED_FUNCTIONS
    from tests.support.delegated import function_bodies

    bodies = function_bodies()
    assert {name.partition("(")[0] for name in DELEGATED_FUNCTIONS} == set(bodies)
    for signature, digest in DELEGATED_FUNCTIONS.items():
        body = bodies[signature.partition("(")[0]]
        assert digest == "volatile " + hashlib.md5(body.encode()).hexdigest(), signature


def test_each_delegated_text_calls_its_function_with_every_parameter_of_its_statement() -> None:
    from convdb.ops.forms import DELEGATED, STATEMENTS
    from convdb.schema_check import DELEGATED_FUNCTIONS

    for field in (
        "save_message",
        "save_message_guarded",
        "get_or_create_conversation",
        "save_and_get_history",
    ):
        statement, call = getattr(STATEMENTS, field), getattr(DELEGATED, field)
        wanted = max(int(n) for n in re.findall(r"\$(\d+)", statement))
        assert f"convdb_{field}(" + ", ".join(f"${i}" for i in range(1, wanted + 1)) in re.sub(
            r"\s+", " ", call
        ).replace("( ", "("), field
        signature = next(s for s in DELEGATED_FUNCTIONS if s.startswith(f"convdb_{field}("))
        assert signature.count(",") + 1 == wanted, signature
    assert DELEGATED.delegated and not STATEMENTS.delegated
    # The batch: the conversation, the user, the guard, then one array per MessageRow column.
    from convdb.validation import MessageRow

    assert STATEMENTS.save_messages is None and DELEGATED.save_messages is not None
    wanted = 3 + len(MessageRow._fields)
    assert "convdb_save_messages(" + ", ".join(f"${i}" for i in range(1, wanted + 1)) in re.sub(
        r"\s+", " ", DELEGATED.save_messages
    ).replace("( ", "(")
