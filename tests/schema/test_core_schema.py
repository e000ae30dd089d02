"""schema.sql as a DBA applies it, the package's schema check, and query/schema drift."""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
import pytest

from convdb import SCHEMA_VERSION, ConversationStore, SchemaMismatch
from convdb.errors import translate
from convdb.sql import QUERIES
from convdb.testing import apply_schema
from tests.support.fix_server import Server

SCHEMA = Path(__file__).resolve().parents[2] / "schema.sql"


@pytest.fixture
async def empty_db(pg_server: Server) -> str:
    """A database created without the template: what a DBA starts from."""
    conn = await asyncpg.connect(pg_server.admin_dsn)
    try:
        await conn.execute('DROP DATABASE IF EXISTS "convdb_empty"')
        await conn.execute('CREATE DATABASE "convdb_empty"')
    finally:
        await conn.close()
    return pg_server.dsn("convdb_empty")


async def _snapshot(dsn: str) -> list[tuple[str, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            """SELECT 'column', table_name || '.' || column_name, data_type, coalesce(column_default, '')
                 FROM information_schema.columns WHERE table_schema = 'public'
               UNION ALL
               SELECT 'constraint', conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid), ''
                 FROM pg_constraint WHERE connamespace = 'public'::regnamespace
               UNION ALL
               SELECT 'index', indexname, indexdef, '' FROM pg_indexes WHERE schemaname = 'public'
               UNION ALL
               SELECT 'version', version::text, '', '' FROM convdb_schema_version
               ORDER BY 1, 2"""
        )
        return [tuple(r) for r in rows]
    finally:
        await conn.close()


async def test_schema_applies_to_empty_database_and_again(empty_db: str) -> None:
    apply_schema(empty_db, SCHEMA)
    first = await _snapshot(empty_db)
    apply_schema(empty_db, SCHEMA)  # idempotent: a second run changes nothing and does not fail
    assert await _snapshot(empty_db) == first
    assert ("version", str(SCHEMA_VERSION), "", "") in first
    async with await ConversationStore.connect(empty_db) as store:  # verify_schema passes
        await store.verify_schema()


async def test_connect_refuses_an_empty_database(empty_db: str) -> None:
    with pytest.raises(SchemaMismatch) as info:
        await ConversationStore.connect(empty_db)
    message = str(info.value)
    assert "column messages.seq is missing" in message
    assert "no schema version is recorded" in message
    assert "psql -v ON_ERROR_STOP=1" in message and "schema.sql" in message


async def test_connect_can_skip_the_check(empty_db: str) -> None:
    store = await ConversationStore.connect(empty_db, verify_schema=False)
    await store.close()


@pytest.mark.parametrize(
    ("ddl", "expected"),
    [
        ("ALTER TABLE messages DROP COLUMN token_count", "column messages.token_count is missing"),
        (
            "ALTER TABLE messages ALTER COLUMN seq TYPE integer",
            "column messages.seq is integer, expected bigint",
        ),
        ("DROP INDEX messages_idempotency_key", "index messages_idempotency_key on messages is missing"),
        (
            "UPDATE convdb_schema_version SET version = 0",
            f"at schema version 0 and this package needs version {SCHEMA_VERSION}",
        ),
        (
            f"UPDATE convdb_schema_version SET compatible_from = {SCHEMA_VERSION + 1}",
            f"supports packages built for schema {SCHEMA_VERSION + 1} or later",
        ),
        ("DROP TABLE convdb_schema_version", "no schema version is recorded"),
    ],
)
async def test_verify_schema_names_the_difference(
    store: ConversationStore, db: asyncpg.Connection, ddl: str, expected: str
) -> None:
    await store.verify_schema()
    await db.execute(ddl)
    with pytest.raises(SchemaMismatch, match=expected):
        await store.verify_schema()


async def test_missing_table_at_runtime_is_schema_mismatch(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    await db.execute("DROP TABLE messages CASCADE")  # message_feedback references it
    conv = await store.get_or_create_conversation(None, "alice")
    with pytest.raises(SchemaMismatch, match=r"schema\.sql"):
        await store.save_message(conv.id, "alice", "user", "hi")


@pytest.mark.parametrize("name", sorted(QUERIES))
async def test_every_statement_prepares_against_the_schema(
    delegated_db: asyncpg.Connection, name: str
) -> None:
    """Drift between queries.sql and schema.sql (and schema_citus.sql's functions, which the
    delegated texts call) fails here, not in production."""
    sql = QUERIES[name]
    statement = await delegated_db.prepare(sql)
    numbers = {int(n) for n in re.findall(r"\$(\d+)", sql)}
    assert len(statement.get_parameters()) == max(numbers, default=0)
    assert numbers == set(range(1, len(numbers) + 1)), "parameters are numbered without holes"


async def test_check_constraints_refuse_what_validation_refuses(db: asyncpg.Connection) -> None:
    """Another client writing directly cannot store what convdb would refuse."""
    await db.execute("INSERT INTO conversations (id, user_id) VALUES ('c', 'u')")
    bad_rows = [
        (
            "INSERT INTO messages (conversation_id, seq, role) VALUES ('c', 1, 'wizard')",
            "messages_role_known",
        ),
        (
            "INSERT INTO messages (conversation_id, seq, role) VALUES ('c', 1, 'tool')",
            "messages_tool_has_call_id",
        ),
        (
            "INSERT INTO messages (conversation_id, seq, role) VALUES ('c', 0, 'user')",
            "messages_seq_positive",
        ),
        (
            "INSERT INTO messages (conversation_id, seq, role, tool_call_id) VALUES ('c', 1, 'tool', '')",
            "messages_tool_call_id_length",
        ),
        (
            "INSERT INTO messages (conversation_id, seq, role, metadata) VALUES ('c', 1, 'user', '[]')",
            "messages_metadata_object",
        ),
        (
            "INSERT INTO messages (conversation_id, seq, role, tool_calls) VALUES ('c', 1, 'user', '{}')",
            "messages_tool_calls_array",
        ),
        ("INSERT INTO conversations (id, user_id) VALUES ('', 'u')", "conversations_id_length"),
        (
            "INSERT INTO conversations (id, user_id) VALUES ('d', repeat('u', 256))",
            "conversations_user_id_length",
        ),
    ]
    for sql, constraint in bad_rows:
        with pytest.raises(asyncpg.CheckViolationError) as info:
            await db.execute(sql)
        # Through convdb's seam: Citus relays the worker's error without constraint_name, and
        # translate() reads the name from the message (tests/core/test_citus.py runs this).
        assert getattr(translate(info.value), "constraint", None) == constraint


async def test_messages_cascade_with_their_conversation(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    conv = await store.get_or_create_conversation(None, "alice")
    await store.save_messages(conv.id, "alice", [{"role": "user", "content": "x"}] * 3)
    await db.execute("DELETE FROM conversations WHERE id = $1", conv.id)
    assert await db.fetchval("SELECT count(*) FROM messages") == 0
