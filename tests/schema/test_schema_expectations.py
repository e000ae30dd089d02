"""verify_schema's expectations against the real catalog (issue 10, item 4): they are exactly what
schema.sql creates, and a database that differs in any property the SQL relies on is refused."""

from __future__ import annotations

import json

import asyncpg
import pytest

from convdb import SCHEMA_VERSION, ConversationStore, SchemaMismatch
from convdb.schema_check import (
    DELEGATED_FUNCTIONS,
    EXPECTED_COLUMNS,
    EXPECTED_CONSTRAINTS,
    EXPECTED_FUNCTIONS,
    EXPECTED_INDEXES,
)
from convdb.sql import QUERIES
from tests.support.fix_server import VIA_CITUS


async def test_expectations_are_exactly_what_schema_sql_creates(db: asyncpg.Connection) -> None:
    """Both directions: a column, constraint or index added to schema.sql but not to the
    expectations fails here, as does an expectation schema.sql does not meet."""
    catalog = json.loads(await db.fetchval(QUERIES["schema_catalog"]))
    columns = {name: (c["type"], c["not_null"], c["default"]) for name, c in catalog["columns"].items()}
    assert columns == {name: (c.type, c.not_null, c.default) for name, c in EXPECTED_COLUMNS.items()}
    assert catalog["constraints"] == EXPECTED_CONSTRAINTS
    assert catalog["indexes"] == EXPECTED_INDEXES
    # On Citus the template has schema_citus.sql, and so its delegated functions.
    expected_functions = EXPECTED_FUNCTIONS | (DELEGATED_FUNCTIONS if VIA_CITUS else {})
    assert catalog["functions"] == expected_functions


async def test_the_catalog_statement_sees_all_five_tables(db: asyncpg.Connection) -> None:
    catalog = json.loads(await db.fetchval(QUERIES["schema_catalog"]))
    tables = {
        name.partition(".")[0] for kind in ("columns", "constraints", "indexes") for name in catalog[kind]
    }
    assert tables == {
        "conversations",
        "messages",
        "conversation_summaries",
        "convdb_schema_version",
        "message_feedback",
        "convdb_user_keys",
    }


BROKEN = [
    pytest.param(
        [
            "DROP INDEX messages_idempotency_key",
            "CREATE INDEX messages_idempotency_key ON messages (conversation_id, idempotency_key) "
            "WHERE idempotency_key IS NOT NULL",
        ],
        r"index messages_idempotency_key on messages is USING btree .*expected UNIQUE USING btree",
        id="idempotency-index-not-unique",
    ),
    pytest.param(
        [
            "DROP INDEX messages_idempotency_key",
            "CREATE UNIQUE INDEX messages_idempotency_key ON messages (conversation_id, idempotency_key)",
        ],
        r"index messages_idempotency_key on messages is UNIQUE USING btree \(conversation_id, "
        r"idempotency_key\), expected .* WHERE \(idempotency_key IS NOT NULL\)",
        id="idempotency-index-without-predicate",
    ),
    pytest.param(
        [
            "DROP INDEX messages_idempotency_key",
            "CREATE UNIQUE INDEX messages_idempotency_key ON messages (idempotency_key) "
            "WHERE idempotency_key IS NOT NULL",
        ],
        r"index messages_idempotency_key on messages is UNIQUE USING btree \(idempotency_key\)",
        id="idempotency-index-other-columns",
        # Citus cannot even build this broken index ("unique indexes on non-partition
        # columns unsupported"): the distribution itself refuses what verify_schema would.
        marks=pytest.mark.engine_specific(
            "postgresql", "Citus refuses a unique index without the distribution column"
        ),
    ),
    pytest.param(
        [
            "ALTER TABLE messages DROP CONSTRAINT messages_conversation_fkey",
            "ALTER TABLE messages ADD CONSTRAINT messages_conversation_fkey FOREIGN KEY (conversation_id) "
            "REFERENCES conversations (id)",
        ],
        r"constraint messages_conversation_fkey on messages is FOREIGN KEY \(conversation_id\) "
        r"REFERENCES conversations\(id\), expected .* ON DELETE CASCADE",
        id="fk-without-cascade",
    ),
    pytest.param(
        [
            "ALTER TABLE messages DROP CONSTRAINT messages_conversation_fkey",
            "ALTER TABLE messages ADD CONSTRAINT messages_conversation_fkey FOREIGN KEY (conversation_id) "
            "REFERENCES conversations (id) ON DELETE CASCADE NOT VALID",
        ],
        r"constraint messages_conversation_fkey on messages is .*NOT VALID",
        id="fk-not-valid",
    ),
    pytest.param(
        ["ALTER TABLE messages DROP CONSTRAINT messages_conversation_fkey"],
        "constraint messages_conversation_fkey on messages is missing",
        id="fk-missing",
    ),
    pytest.param(
        ["ALTER TABLE messages DROP CONSTRAINT messages_pkey CASCADE"],
        r"constraint messages_pkey on messages is missing \(expected PRIMARY KEY \(conversation_id, seq\)\)",
        id="pk-missing",
    ),
    pytest.param(
        ["ALTER TABLE messages DROP CONSTRAINT messages_valid"],
        "constraint messages_valid on messages is missing",
        id="check-missing",
    ),
    pytest.param(
        [
            "ALTER TABLE messages DROP CONSTRAINT messages_valid",
            "ALTER TABLE messages ADD CONSTRAINT messages_valid CHECK (role IN ('system', 'user', "
            "'assistant', 'tool', 'wizard'))",
        ],
        r"constraint messages_valid on messages is CHECK .*'wizard'",
        id="check-changed",
    ),
    pytest.param(
        ["ALTER TABLE conversations DROP CONSTRAINT conversations_valid"],
        "constraint conversations_valid on conversations is missing",
        id="check-missing-conv",
    ),
    pytest.param(
        # The CHECK's definition unchanged, the rule it calls gutted: refused all the same.
        [
            "CREATE OR REPLACE FUNCTION convdb_check_message(seq bigint, role text, tool_name text, "
            "tool_call_id text, idempotency_key text, tool_calls jsonb, metadata jsonb, token_count integer, "
            "model text, input_tokens integer, output_tokens integer, cached_tokens integer, "
            "reasoning_tokens integer, cost numeric, latency_ms integer) RETURNS boolean "
            "LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN true; END $$"
        ],
        r"function convdb_check_message\(bigint,text,.*\) is not this package's",
        id="rule-function-replaced",
    ),
    pytest.param(
        ["ALTER FUNCTION convdb_check_conversation(text, text, jsonb, bigint, text, bigint, text) VOLATILE"],
        r"function convdb_check_conversation\(.*\) is not this package's \(volatility and body digest volatile ",
        id="rule-function-volatility",
    ),
    pytest.param(
        ["ALTER TABLE convdb_schema_version DROP CONSTRAINT convdb_schema_version_singleton_check"],
        "constraint convdb_schema_version_singleton_check",
        id="version-table-singleton",
    ),
    pytest.param(
        ["ALTER TABLE messages ALTER COLUMN metadata DROP NOT NULL"],
        "column messages.metadata is nullable, expected NOT NULL",
        id="column-nullable",
    ),
    pytest.param(
        ["ALTER TABLE conversations ALTER COLUMN next_seq SET DEFAULT 0"],
        "column conversations.next_seq has default 0, expected 1",
        id="column-default",
    ),
    pytest.param(
        ["ALTER TABLE conversations ALTER COLUMN created_at DROP DEFAULT"],
        r"column conversations.created_at has default \(none\), expected now\(\)",
        id="column-no-default",
    ),
    pytest.param(
        ["ALTER TABLE messages ALTER COLUMN role TYPE varchar(20)"],
        r"column messages.role is character varying\(20\), expected text",
        id="column-type",
    ),
]


@pytest.mark.parametrize(("ddl", "expected"), BROKEN)
async def test_verify_schema_refuses_a_broken_database(
    store: ConversationStore, db: asyncpg.Connection, ddl: list[str], expected: str
) -> None:
    await store.verify_schema()
    for statement in ddl:
        await db.execute(statement)
    with pytest.raises(SchemaMismatch, match=expected) as info:
        await store.verify_schema()
    assert f"the database records schema version {SCHEMA_VERSION} but differs from it" in str(info.value)


async def test_connect_refuses_a_non_unique_idempotency_index(dsn: str, db: asyncpg.Connection) -> None:
    await db.execute("DROP INDEX messages_idempotency_key")
    await db.execute(
        "CREATE INDEX messages_idempotency_key ON messages (conversation_id, idempotency_key) "
        "WHERE idempotency_key IS NOT NULL"
    )
    with pytest.raises(SchemaMismatch, match="messages_idempotency_key"):
        await ConversationStore.connect(dsn, min_size=1, max_size=1)


async def test_an_invalid_index_left_by_a_failed_concurrent_build_is_refused(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    await db.execute("DROP INDEX messages_idempotency_key")
    conv = await store.get_or_create_conversation(None, "alice")
    await store.save_messages(conv.id, "alice", [{"role": "user", "content": "x", "idempotency_key": "k"}])
    await db.execute(
        "INSERT INTO messages (conversation_id, seq, role, idempotency_key) VALUES ($1, 9, 'user', 'k')",
        conv.id,
    )
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.execute(
            "CREATE UNIQUE INDEX CONCURRENTLY messages_idempotency_key ON messages "
            "(conversation_id, idempotency_key) WHERE idempotency_key IS NOT NULL"
        )
    with pytest.raises(
        SchemaMismatch, match=r"index messages_idempotency_key on messages is UNIQUE .* \(INVALID\)"
    ):
        await store.verify_schema()


async def test_what_an_additive_migration_adds_is_accepted(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    await db.execute("ALTER TABLE messages ADD COLUMN note text")
    await db.execute("CREATE INDEX messages_note ON messages (note)")
    await db.execute(
        "ALTER TABLE conversations ADD CONSTRAINT conversations_title_short CHECK (length(title) < 10000)"
    )
    await db.execute("CREATE TABLE convdb_extra (id int PRIMARY KEY)")
    await store.verify_schema()
