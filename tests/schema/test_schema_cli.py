"""python -m convdb as a DBA runs it, as a subprocess against the real test server: its SQL applied
with psql gives databases that `check` accepts; `check` explains a v1 database; every error is one
line and a non-zero exit, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from typing import Any
from urllib.parse import urlsplit

import pytest

from convdb import SCHEMA_VERSION, __version__
from convdb.migrations import MIGRATIONS
from convdb.testing import apply_schema, apply_sql, catalog_snapshot
from tests.schema.schema_support import ROOT, SCHEMA, NewDatabase, fresh_install_file, new_db

__all__ = ["new_db"]  # the fixture, imported for pytest

# The floor a database at this package's version records: the last breaking migration's.
FLOOR = max((m.floor for m in MIGRATIONS if m.kind == "breaking"), default=1)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "convdb", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m convdb"), result.stderr
    return lines[0]


async def test_schema_output_applied_with_psql_is_accepted_by_check(new_db: NewDatabase) -> None:
    for flags in ([], ["--rls"]):
        dsn = await new_db()
        printed = cli("schema", *flags)
        assert printed.returncode == 0 and printed.stderr == ""
        apply_sql(dsn, printed.stdout)
        reference = await new_db()
        apply_schema(reference, SCHEMA)
        if flags:
            apply_schema(reference, ROOT / "schema_rls.sql")
        assert await catalog_snapshot(dsn) == await catalog_snapshot(reference)
        checked = cli("check", "--dsn", dsn)
        assert checked.returncode == 0, checked
        assert checked.stdout.endswith("OK: this package can run on this database.\n")
        assert (
            f"schema version {SCHEMA_VERSION}, supports packages built for schema {FLOOR} or later"
            in checked.stdout
        )


async def test_check_and_migrations_on_a_v1_database(new_db: NewDatabase) -> None:
    dsn = await new_db()
    apply_schema(dsn, fresh_install_file(1))  # what convdb 0.1.0's schema.sql built
    before = cli("check", "--dsn", dsn)
    assert before.returncode == 1, before
    assert before.stderr == ""
    assert "schema version 1, supports packages built for schema 1 or later" in before.stdout
    assert "NOT COMPATIBLE" in before.stdout
    assert "Migrations to apply, in order: " + ", ".join(m.filename for m in MIGRATIONS[1:]) in before.stdout
    assert (
        "python -m convdb migrations --from 1 | psql -v ON_ERROR_STOP=1 -d <database> -f -" in before.stdout
    )
    printed = cli("migrations", "--from", "1")
    assert printed.returncode == 0 and printed.stderr == ""
    assert printed.stdout.startswith(
        f"-- convdb {__version__}: schema version 1 to {SCHEMA_VERSION}: "
        + ", ".join(m.filename for m in MIGRATIONS[1:])
        + "\n"
    )
    apply_sql(dsn, printed.stdout)
    applied = await catalog_snapshot(dsn)
    # Each file re-runs as a no-op; the whole range again stops at its first file (which takes
    # version 1 only) before changing anything.
    apply_sql(dsn, MIGRATIONS[-1].sql)
    with pytest.raises(RuntimeError, match="migration 0002 takes schema version 1 to 2"):
        apply_sql(dsn, printed.stdout)
    assert await catalog_snapshot(dsn) == applied
    after = cli("check", "--dsn", dsn)
    assert after.returncode == 0, after
    assert "OK: this package can run on this database." in after.stdout
    fresh = await new_db()
    apply_schema(fresh, SCHEMA)
    assert await catalog_snapshot(dsn) == await catalog_snapshot(fresh)


async def test_migrations_from_0_and_from_the_current_version(new_db: NewDatabase) -> None:
    dsn = await new_db()
    apply_sql(dsn, cli("migrations", "--from", "0").stdout)
    assert cli("check", "--dsn", dsn).returncode == 0
    nothing = cli("migrations", "--from", str(SCHEMA_VERSION))
    assert nothing.returncode == 0
    assert "needs no migration" in nothing.stdout
    apply_sql(dsn, nothing.stdout)  # only a comment: psql accepts it
    partial = cli("migrations", "--from", "0", "--to", "1")
    assert "0001_initial.sql" in partial.stdout and "0002" not in partial.stdout.splitlines()[0]


async def test_check_refuses_an_empty_database(new_db: NewDatabase) -> None:
    result = cli("check", "--dsn", await new_db())
    assert result.returncode == 1
    assert "no convdb schema version recorded" in result.stdout
    assert "python -m convdb schema | psql" in result.stdout


@pytest.mark.parametrize(
    "args", [[], ["schema"], ["migrations"], ["check"]], ids=lambda a: " ".join(a) or "main"
)
def test_help(args: list[str]) -> None:
    result = cli(*args, "--help")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: python -m convdb")


def test_version_flag() -> None:
    result = cli("--version")
    assert result.stdout.strip() == f"convdb {__version__}, schema version {SCHEMA_VERSION}"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["migrations", "--from", "99"], "unknown schema version 99 (--from)"),
        (["migrations", "--from", "-1"], "unknown schema version -1"),
        (["migrations", "--from", "two"], "invalid int value: 'two'"),
        (["migrations"], "the following arguments are required: --from"),
        (["migrations", "--from", "2", "--to", "1"], "migrations only upgrade"),
        (["check"], "the following arguments are required: --dsn"),
        ([], "the following arguments are required: COMMAND"),
        (["drop-everything"], "invalid choice: 'drop-everything'"),
        (["check", "--dsn", "nonsense"], "invalid DSN"),
        (["check", "--dsn", "postgresql://[oops"], "invalid DSN"),
        (["check", "--dsn", "postgresql://postgres@127.0.0.1:1/x?sslmode=maybe"], "invalid DSN"),
    ],
)
def test_errors_are_one_line(args: list[str], expected: str) -> None:
    assert expected in one_line_error(cli(*args))


def test_unreachable_server_is_one_line_without_the_password() -> None:
    line = one_line_error(
        cli("check", "--dsn", f"postgresql://u:hunter2@127.0.0.1:{_closed_port()}/db", "--timeout", "5")
    )
    assert "cannot check 127.0.0.1:" in line and "could not open a connection" in line
    assert "hunter2" not in line


def test_unknown_database_and_user_are_one_line(pg_server: Any) -> None:
    line = one_line_error(cli("check", "--dsn", pg_server.dsn("convdb_no_such_database")))
    assert 'database "convdb_no_such_database" does not exist' in line
    address = urlsplit(pg_server.dsn("postgres"))
    stranger = address._replace(netloc=f"convdb_no_such_role@{address.hostname}:{address.port}").geturl()
    line = one_line_error(cli("check", "--dsn", stranger))
    assert "convdb_no_such_role" in line
