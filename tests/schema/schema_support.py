"""Shared by the test_schema_* tests: empty databases on the test server, the schema files, and the
test-only migrations SCHEMA_VERSION + 1 (additive) and + 2 (breaking) kept in schema_test_migrations/."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from convdb.migrations import MIGRATIONS, Migration, parse_migrations

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "schema.sql"
SCHEMA_RLS = ROOT / "schema_rls.sql"
HERE = Path(__file__).resolve().parent
TEST_MIGRATIONS_DIR = HERE / "schema_test_migrations"
# The fresh-install SQL of every released schema version before the current one (the current
# one's is schema.sql). When a migration N+1 is added, schema.sql of version N is copied here.
RELEASES_DIR = HERE / "schema_releases"

NewDatabase = Callable[[], Awaitable[str]]


def packaged_migration_files() -> dict[str, str]:
    directory = resources.files("convdb.sql") / "migrations"
    return {e.name: e.read_text(encoding="utf-8") for e in directory.iterdir() if e.name.endswith(".sql")}


def with_test_migrations() -> tuple[Migration, ...]:
    """The package's migrations followed by the two test-only ones."""
    files = packaged_migration_files()
    files.update({p.name: p.read_text(encoding="utf-8") for p in TEST_MIGRATIONS_DIR.glob("*.sql")})
    migrations = parse_migrations(files)
    assert [m.version for m in migrations[: len(MIGRATIONS)]] == [m.version for m in MIGRATIONS]
    return migrations


def fresh_install_file(version: int) -> Path:
    from convdb import SCHEMA_VERSION

    return SCHEMA if version == SCHEMA_VERSION else RELEASES_DIR / f"schema_v{version}.sql"


@pytest.fixture
async def new_db(pg_server: Any) -> AsyncIterator[NewDatabase]:
    """Creates empty databases (no template: what a DBA starts from); drops them at the end."""
    created: list[str] = []

    async def create() -> str:
        name = f"s_{uuid.uuid4().hex[:16]}"
        conn = await asyncpg.connect(pg_server.admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        created.append(name)
        dsn: str = pg_server.dsn(name)
        return dsn

    yield create
    conn = await asyncpg.connect(pg_server.admin_dsn)
    try:
        for name in created:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
