"""The column order convdb reads by position, pinned against the statements themselves.

History reads build ``Message``s by position (``row[0]`` ... ``row[9]``: measured about 2.5 times
faster than by name on a 50-message window, see ``convdb.records``), and a few ops read a leading
column by index (``head[0]``, ``r[8]``). Reordering a SELECT list in queries.sql would then
silently swap fields; these tests fail instead. Each statement is prepared against the real
schema and its result attributes are compared with the order the code relies on.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from convdb.records import MESSAGE_COLUMNS, Message
from convdb.sql import QUERIES

# Statements whose rows are read with Message.from_record (they start with MESSAGE_COLUMNS).
MESSAGE_STATEMENTS = frozenset(
    {
        "lock_conversation_with_keys",
        "get_message_by_key",
        "get_history",
        "get_history_window",
        "get_history_summarized",
        "save_and_get_history",
        "save_and_get_history_delegated",
        "save_messages_delegated",
        "pop_last_message",
        "export_messages",
    }
)
# Other statements whose leading columns the ops read by position.
LEADING_COLUMNS: dict[str, tuple[str, ...]] = {
    "save_message": ("seq", "created_at"),  # ops.messages.save: stored[0], stored[1]
    "reserve_seq_range": ("first_seq", "created_at"),  # ops.messages: head[0], head[1]
    "erase_list_conversations": ("id",),  # ops.erasure.next_conversations: r[0]
    "save_message_guarded": ("seq", "created_at"),  # ops.messages.save_guarded: head[0], head[1]
    "reserve_seq_range_guarded": ("first_seq", "created_at"),  # ops.messages._reserve: head[0], head[1]
    # summary_or_message_from_row: row[len(MESSAGE_COLUMNS)]
    "get_history_summarized": (*MESSAGE_COLUMNS, "summary_through"),
    "save_and_get_history": (*MESSAGE_COLUMNS, "summary_through"),
    "save_and_get_history_delegated": (*MESSAGE_COLUMNS, "summary_through"),
    "save_message_delegated": ("seq", "created_at"),
    # ops.summaries.list_all: r[0] ... r[5]
    "list_summaries": ("through_seq", "role", "content", "token_count", "metadata", "created_at"),
}
# Single-value statements read as row[0] / fetchval.
SINGLE_COLUMN = ("count_messages", "erase_messages_chunk")
# Statements whose columns the ops read by name: exactly these columns, so a renamed one fails here.
NAMED_COLUMNS: dict[str, tuple[str, ...]] = {
    "delete_conversation": ("fresh", "deleted"),  # ops.conversations.run_fresh, delete
    "erase_conversations": ("conversations", "messages"),  # ops.erasure.erase_conversations
}


async def _columns(db: asyncpg.Connection, name: str) -> tuple[str, ...]:
    statement = await db.prepare(QUERIES[name])
    return tuple(attribute.name for attribute in statement.get_attributes())


@pytest.mark.parametrize("name", sorted(MESSAGE_STATEMENTS))
async def test_message_statements_start_with_the_columns_from_record_reads(
    delegated_db: asyncpg.Connection, name: str
) -> None:
    columns = await _columns(delegated_db, name)
    assert columns[: len(MESSAGE_COLUMNS)] == MESSAGE_COLUMNS, f"{name} returns {columns}"


async def test_every_statement_returning_messages_is_pinned(delegated_db: asyncpg.Connection) -> None:
    """A new statement that returns message rows must be added to MESSAGE_STATEMENTS (and so
    checked above); found by its result columns, not by its name."""
    returning_messages = {
        name for name in QUERIES if {"role", "content", "seq"} <= set(await _columns(delegated_db, name))
    }
    assert returning_messages == MESSAGE_STATEMENTS


@pytest.mark.parametrize("name", ["save_message", "get_or_create_conversation", "save_and_get_history"])
async def test_a_delegated_call_returns_its_statements_columns_and_types(
    delegated_db: asyncpg.Connection, name: str
) -> None:
    """The ops read both texts of a pair alike (convdb.ops.forms): same names, order and types,
    and the same parameter types."""
    statement = await delegated_db.prepare(QUERIES[name])
    call = await delegated_db.prepare(QUERIES[f"{name}_delegated"])
    assert [(a.name, a.type.name) for a in call.get_attributes()] == [
        (a.name, a.type.name) for a in statement.get_attributes()
    ]
    assert [t.name for t in call.get_parameters()] == [t.name for t in statement.get_parameters()]


@pytest.mark.parametrize("name", sorted(LEADING_COLUMNS))
async def test_leading_columns_read_by_position(delegated_db: asyncpg.Connection, name: str) -> None:
    expected = LEADING_COLUMNS[name]
    assert (await _columns(delegated_db, name))[: len(expected)] == expected


@pytest.mark.parametrize("name", SINGLE_COLUMN)
async def test_count_statements_return_one_column(db: asyncpg.Connection, name: str) -> None:
    assert len(await _columns(db, name)) == 1


@pytest.mark.parametrize("name", sorted(NAMED_COLUMNS))
async def test_statements_read_by_name_return_those_columns(db: asyncpg.Connection, name: str) -> None:
    assert await _columns(db, name) == NAMED_COLUMNS[name]


def test_from_record_reads_message_columns_in_that_order() -> None:
    """MESSAGE_COLUMNS is the order Message.from_record reads: a row holding each column's own
    name (or a distinct value) comes back with each field set from its own column."""
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    values: dict[str, object] = {column: column for column in MESSAGE_COLUMNS}
    values.update(seq=7, token_count=11, tool_calls=[{"id": "c"}], metadata={"k": 1}, created_at=when)
    values.update(input_tokens=1, output_tokens=2, cached_tokens=3, reasoning_tokens=4, cost=5, latency_ms=6)
    message = Message.from_record("conv", tuple(values[c] for c in MESSAGE_COLUMNS))  # type: ignore[arg-type]
    assert message.usage is not None

    def field(column: str) -> object:
        return getattr(message, column) if hasattr(message, column) else getattr(message.usage, column)

    assert {column: field(column) for column in MESSAGE_COLUMNS} == values
    assert message.conversation_id == "conv"
