"""schema_citus.sql's delegated functions, read from the file: their bodies (as pg_proc.prosrc
holds them) and their CREATE statements without the Citus distribution step, so that a
single-node test database can have them and run the delegated texts of queries.sql too."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import asyncpg

from convdb import ConversationStore
from convdb.ops.forms import STATEMENTS

SCHEMA_CITUS = Path(__file__).resolve().parents[2] / "schema_citus.sql"

_CREATE = re.compile(
    r"^CREATE OR REPLACE FUNCTION (convdb_\w+)\(.*?^AS \$\$(.*?)\$\$;$", re.MULTILINE | re.DOTALL
)


@cache
def function_bodies() -> dict[str, str]:
    """{function name: body} of every CREATE FUNCTION in schema_citus.sql."""
    return {m.group(1): m.group(2) for m in _CREATE.finditer(SCHEMA_CITUS.read_text())}


@cache
def create_statements() -> str:
    """The CREATE FUNCTION statements alone (no distribution: runs on a plain PostgreSQL)."""
    return "\n".join(m.group(0) for m in _CREATE.finditer(SCHEMA_CITUS.read_text()))


async def install(conn: asyncpg.Connection) -> None:
    """Give a single-node database the delegated functions (on Citus schema_citus.sql did)."""
    if await conn.fetchval("SELECT to_regclass('pg_catalog.pg_dist_partition') IS NULL"):
        await conn.execute(create_statements())


def send_statements(store: ConversationStore) -> None:
    """Make a store that found the functions send the statements, as ``verify_schema`` decides
    where they are missing: for the tests that run both forms on one database."""
    store._forms = STATEMENTS
