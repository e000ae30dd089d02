"""Every agent/management method: bad input refused before any I/O with a named field, and the
same ConversationNotFound for another user's id as for an unknown one."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg
import pytest

from convdb import ConversationNotFound, ConversationStore, InvalidInput
from convdb.pool import init_connection

U, OTHER = "alice", "mallory"

# The store is typed Any here: these calls are wrong on purpose, and the type checker would refuse them.
Call = Callable[[Any, str, str], Awaitable[Any]]


async def _drain(iterator: AsyncIterator[Any]) -> list[Any]:
    return [x async for x in iterator]


CONVERSATION_METHODS: dict[str, Call] = {
    "get_history": lambda s, c, u: s.get_history(c, u),
    "get_history(max_tokens)": lambda s, c, u: s.get_history(c, u, max_tokens=100),
    "save_and_get_history": lambda s, c, u: s.save_and_get_history(c, u, {"role": "user", "content": "x"}),
    "save_and_get_history(key)": lambda s, c, u: s.save_and_get_history(
        c, u, {"role": "user", "content": "x", "idempotency_key": "k"}
    ),
    "update_conversation": lambda s, c, u: s.update_conversation(c, u, title="t"),
    "delete_conversation": lambda s, c, u: s.delete_conversation(c, u),
    "clear_conversation": lambda s, c, u: s.clear_conversation(c, u),
    "pop_last_message": lambda s, c, u: s.pop_last_message(c, u),
    "count_messages": lambda s, c, u: s.count_messages(c, u),
    "export_conversation": lambda s, c, u: _drain(s.export_conversation(c, u)),
    "export_messages": lambda s, c, u: _drain(s.export_messages(c, u)),
}


@pytest.mark.parametrize("name", sorted(CONVERSATION_METHODS))
@pytest.mark.guarantee(1)
async def test_foreign_and_unknown_ids_are_indistinguishable(
    store: ConversationStore, db: asyncpg.Connection, name: str
) -> None:
    call = CONVERSATION_METHODS[name]
    cid = (await store.get_or_create_conversation(None, U, title="mine")).id
    await store.save_message(cid, U, "user", "secret", idempotency_key="k")
    before = await db.fetch("SELECT * FROM messages ORDER BY seq")
    conv_before = await db.fetch("SELECT * FROM conversations")
    errors = []
    for conversation_id, user_id in ((cid, OTHER), ("no-such-id", U), ("no-such-id", OTHER)):
        with pytest.raises(ConversationNotFound) as err:
            await call(store, conversation_id, user_id)
        errors.append((type(err.value), str(err.value), err.value.args))
    assert errors[0] == errors[1] == errors[2]
    assert await db.fetch("SELECT * FROM messages ORDER BY seq") == before  # nothing changed
    assert await db.fetch("SELECT * FROM conversations") == conv_before


@pytest.mark.guarantee(1)
async def test_listing_and_erasure_are_per_user(store: ConversationStore) -> None:
    mine = (await store.get_or_create_conversation(None, U)).id
    await store.save_message(mine, U, "user", "x")
    assert (await store.list_conversations(OTHER)).items == []
    assert (await store.delete_user_data(OTHER)).messages == 0
    assert await store.count_messages(mine, U) == 1


@pytest.fixture
async def offline_store(dsn: str) -> ConversationStore:
    """A store whose pool is closed: any I/O would fail with a non-InvalidInput error."""
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=1, init=init_connection)
    await pool.close()
    return ConversationStore(pool)


GOOD = {"role": "user", "content": "x"}
BAD_CALLS: list[tuple[str, Call]] = [
    ("conversation_id", lambda s, c, u: s.get_history("", u, max_tokens=5)),
    ("max_tokens", lambda s, c, u: s.get_history(c, u, max_tokens=-1)),
    ("max_tokens", lambda s, c, u: s.get_history(c, u, max_tokens=True)),
    ("max_tokens", lambda s, c, u: s.get_history(c, u, max_tokens="9")),
    ("limit", lambda s, c, u: s.get_history(c, u, limit=0, max_tokens=5)),
    ("user_id", lambda s, c, u: s.save_and_get_history(c, "a\x00b", GOOD)),
    ("message", lambda s, c, u: s.save_and_get_history(c, u, "hello")),
    ("role", lambda s, c, u: s.save_and_get_history(c, u, {"content": "x"})),
    ("role", lambda s, c, u: s.save_and_get_history(c, u, {"role": "robot", "content": "x"})),
    ("colour", lambda s, c, u: s.save_and_get_history(c, u, {**GOOD, "colour": "red"})),
    ("content", lambda s, c, u: s.save_and_get_history(c, u, {"role": "user", "content": "\ud800"})),
    ("tool_call_id", lambda s, c, u: s.save_and_get_history(c, u, {"role": "tool", "content": "r"})),
    ("idempotency_key", lambda s, c, u: s.save_and_get_history(c, u, {**GOOD, "idempotency_key": ""})),
    ("limit", lambda s, c, u: s.save_and_get_history(c, u, GOOD, limit=10_001)),
    ("max_tokens", lambda s, c, u: s.save_and_get_history(c, u, GOOD, max_tokens=1.5)),
    ("user_id", lambda s, c, u: s.list_conversations("")),
    ("limit", lambda s, c, u: s.list_conversations(u, limit=1001)),
    ("cursor", lambda s, c, u: s.list_conversations(u, cursor="garbage")),
    ("title_contains", lambda s, c, u: s.list_conversations(u, title_contains=3)),
    ("metadata_contains", lambda s, c, u: s.list_conversations(u, metadata_contains=["a"])),
    ("metadata_contains", lambda s, c, u: s.list_conversations(u, metadata_contains={"a": float("nan")})),
    ("updated_after", lambda s, c, u: s.list_conversations(u, updated_after=datetime(2026, 1, 1))),
    ("updated_before", lambda s, c, u: s.list_conversations(u, updated_before="2026-01-01")),
    ("title", lambda s, c, u: s.update_conversation(c, u)),
    ("title", lambda s, c, u: s.update_conversation(c, u, title=5)),
    ("metadata", lambda s, c, u: s.update_conversation(c, u, metadata=[1])),
    ("conversation_id", lambda s, c, u: s.delete_conversation(None, u)),
    ("user_id", lambda s, c, u: s.clear_conversation(c, "x" * 256)),
    ("conversation_id", lambda s, c, u: s.pop_last_message(42, u)),
    ("user_id", lambda s, c, u: s.count_messages(c, None)),
    ("user_id", lambda s, c, u: s.delete_user_data("")),
    ("messages_per_batch", lambda s, c, u: s.delete_user_data(u, messages_per_batch=0)),
    ("conversations_per_batch", lambda s, c, u: s.delete_user_data(u, conversations_per_batch=False)),
    ("conversation_id", lambda s, c, u: _drain(s.export_conversation("", u))),
    ("chunk_size", lambda s, c, u: _drain(s.export_conversation(c, u, chunk_size=0))),
    ("user_id", lambda s, c, u: _drain(s.export_messages(c, ""))),
    ("user_id", lambda s, c, u: s.import_conversation("", [])),
    ("records", lambda s, c, u: s.import_conversation(u, "not records")),
    ("records", lambda s, c, u: s.import_conversation(u, [])),
    ("id", lambda s, c, u: s.import_conversation(u, [{"type": "conversation", "id": ""}])),
    ("replace", lambda s, c, u: s.import_conversation(u, [], replace="yes")),
    ("conversation_id", lambda s, c, u: s.import_conversation(u, [], conversation_id="")),
]


@pytest.mark.parametrize(("field", "call"), BAD_CALLS, ids=[f"{i}-{f}" for i, (f, _) in enumerate(BAD_CALLS)])
@pytest.mark.guarantee(7)
async def test_bad_input_is_refused_before_any_io(
    offline_store: ConversationStore, field: str, call: Call
) -> None:
    with pytest.raises(InvalidInput) as err:
        await call(offline_store, "c1", U)
    assert err.value.field == field
    assert field in str(err.value)


async def test_the_offline_store_really_is_offline(offline_store: ConversationStore) -> None:
    with pytest.raises(Exception) as err:  # noqa: PT011 - anything but InvalidInput
        await offline_store.count_messages("c1", U)
    assert not isinstance(err.value, InvalidInput)
