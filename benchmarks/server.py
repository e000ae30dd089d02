"""The server the benchmark runs on: the embedded PostgreSQL, or a given one, with a fresh database.

Either way the benchmark creates its own database (``convdb_bench_<random>``), applies schema.sql
with psql as a DBA would, and drops it at the end, so it never touches anyone's data.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from convdb.testing import EmbeddedPostgres, apply_schema

SCHEMA = Path(__file__).resolve().parent.parent / "schema.sql"

# PostgreSQL's defaults (durable commits) except what a 24 GiB machine and 8 systems' pools need.
BENCH_SETTINGS: Mapping[str, str] = {
    "max_connections": "300",
    "shared_buffers": "1GB",
}

# Settings recorded in the JSON: the ones that move these figures.
REPORTED_SETTINGS = (
    "server_version",
    "max_connections",
    "shared_buffers",
    "work_mem",
    "fsync",
    "synchronous_commit",
    "full_page_writes",
    "wal_level",
    "checkpoint_timeout",
    "max_wal_size",
    "effective_cache_size",
    "random_page_cost",
    "jit",
    "huge_pages",
)


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


@dataclass(frozen=True)
class BenchDatabase:
    dsn: str  # postgresql://user@host:port/db, for asyncpg, psql and pgbench
    admin_dsn: str
    name: str

    def sqlalchemy_url(self, driver: str) -> str:
        """The same database for SQLAlchemy: driver is "asyncpg" or "psycopg"."""
        parts = urlsplit(self.dsn)
        return urlunsplit(parts._replace(scheme=f"postgresql+{driver}"))


@contextlib.contextmanager
def embedded_server(settings: Mapping[str, str]) -> Iterator[str]:
    """Start a throwaway embedded server in a temp dir; yield its admin DSN."""
    folder = Path(tempfile.mkdtemp(prefix="convdb-bench-"))
    server = EmbeddedPostgres(folder / "data", settings={**BENCH_SETTINGS, **settings})
    try:
        server.start()
        yield server.dsn()
    finally:
        try:
            server.destroy()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


async def _admin(admin_dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def create_database(admin_dsn: str) -> BenchDatabase:
    name = f"convdb_bench_{secrets.token_hex(4)}"
    await _admin(admin_dsn, f'CREATE DATABASE "{name}"')
    dsn = with_database(admin_dsn, name)
    apply_schema(dsn, SCHEMA)
    return BenchDatabase(dsn=dsn, admin_dsn=admin_dsn, name=name)


async def drop_database(db: BenchDatabase) -> None:
    await _admin(db.admin_dsn, f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')


async def server_info(dsn: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT name, current_setting(name) AS value FROM pg_settings WHERE name = ANY($1::text[])",
            list(REPORTED_SETTINGS),
        )
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    settings = {r["name"]: r["value"] for r in rows}
    return {"postgres": str(version).split()[0], "server_settings": settings}
