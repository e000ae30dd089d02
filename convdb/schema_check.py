"""What the package expects of the database schema, and the check that compares the two."""

from __future__ import annotations

from typing import Final

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from .errors import SchemaMismatch
from .sql import QUERIES

SCHEMA_VERSION: Final = 1

_TS: Final = "timestamp with time zone"
EXPECTED_COLUMNS: Final[dict[str, str]] = {
    "conversations.id": "text",
    "conversations.user_id": "text",
    "conversations.title": "text",
    "conversations.metadata": "jsonb",
    "conversations.next_seq": "bigint",
    "conversations.created_at": _TS,
    "conversations.updated_at": _TS,
    "messages.conversation_id": "text",
    "messages.seq": "bigint",
    "messages.role": "text",
    "messages.content": "text",
    "messages.tool_name": "text",
    "messages.tool_call_id": "text",
    "messages.tool_calls": "jsonb",
    "messages.metadata": "jsonb",
    "messages.token_count": "integer",
    "messages.idempotency_key": "text",
    "messages.created_at": _TS,
}
# conversations_user_id serves list_conversations and delete_user_data (without it both would read
# every user's conversations).
EXPECTED_INDEXES: Final = ("messages_pkey", "messages_idempotency_key", "conversations_pkey",
                           "conversations_user_id")

_FIX: Final = "apply schema.sql with: psql -v ON_ERROR_STOP=1 -d <database> -f schema.sql"


def compare(version: int | None, columns: list[str], indexes: list[str]) -> list[str]:
    """Every difference between the database and the expectations, as readable sentences."""
    problems: list[str] = []
    found: dict[str, str] = {}
    for entry in columns:
        name, _, data_type = entry.partition(":")
        found[name] = data_type
    for name, data_type in EXPECTED_COLUMNS.items():
        if name not in found:
            problems.append(f"column {name} is missing")
        elif found[name] != data_type:
            problems.append(f"column {name} is {found[name]}, expected {data_type}")
    for index in EXPECTED_INDEXES:
        if index not in indexes:
            problems.append(f"index {index} is missing")
    if version is None:
        problems.append("no schema version is recorded (table convdb_schema_version)")
    elif version < SCHEMA_VERSION:
        problems.append(f"schema version {version} is older than the {SCHEMA_VERSION} this package needs")
    elif version > SCHEMA_VERSION:
        problems.append(
            f"schema version {version} is newer than the {SCHEMA_VERSION} this package supports; "
            "upgrade convdb"
        )
    return problems


async def verify(conn: PoolConnectionProxy[asyncpg.Record]) -> None:
    report = await conn.fetchrow(QUERIES["schema_report"])
    assert report is not None
    version = await conn.fetchval(QUERIES["schema_version"]) if report["has_version_table"] else None
    problems = compare(version, list(report["columns"] or []), list(report["indexes"] or []))
    if problems:
        raise SchemaMismatch("convdb schema mismatch: " + "; ".join(problems) + f". To fix, {_FIX}.")
