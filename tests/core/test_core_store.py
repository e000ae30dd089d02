"""The core API's semantics against a real server."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
import pytest

from convdb import (
    Conversation,
    ConversationNotFound,
    ConversationStore,
    IdempotencyConflict,
    Message,
    build_message_array,
    init_connection,
)

CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}


async def test_create_with_new_id_is_time_ordered_uuid(store: ConversationStore) -> None:
    first = await store.get_or_create_conversation(None, "alice", title="Trip", metadata={"k": [1]})
    second = await store.get_or_create_conversation(None, "alice")
    assert isinstance(first, Conversation)
    assert uuid.UUID(first.id).version == 7
    assert first.id < second.id
    assert (first.user_id, first.title, first.metadata) == ("alice", "Trip", {"k": [1]})
    assert second.metadata == {} and second.title is None
    assert first.created_at.tzinfo is not None


async def test_get_or_create_with_id_creates_then_loads(store: ConversationStore) -> None:
    created = await store.get_or_create_conversation("c-1", "alice", title="first")
    loaded = await store.get_or_create_conversation("c-1", "alice", title="ignored on load")
    assert loaded == created
    assert await store.get_conversation("c-1", "alice") == created


async def test_conversation_is_frozen(store: ConversationStore) -> None:
    conv = await store.get_or_create_conversation(None, "alice")
    with pytest.raises(AttributeError):
        conv.title = "x"  # type: ignore[misc]


async def test_save_message_returns_stored_message(store: ConversationStore, db: asyncpg.Connection) -> None:
    conv = await store.get_or_create_conversation(None, "alice")
    saved = await store.save_message(
        conv.id, "alice", "assistant", None, tool_calls=[CALL], metadata={"model": "m1"}, token_count=12
    )
    assert isinstance(saved, Message)
    assert (saved.seq, saved.role, saved.content, saved.tool_calls) == (1, "assistant", None, [CALL])
    assert saved.metadata == {"model": "m1"} and saved.token_count == 12
    row = await db.fetchrow("SELECT * FROM messages WHERE conversation_id = $1", conv.id)
    assert row is not None and row["seq"] == 1 and row["created_at"] == saved.created_at
    assert (await store.get_history(conv.id, "alice")) == [saved]


async def test_save_message_touches_updated_at(store: ConversationStore) -> None:
    conv = await store.get_or_create_conversation(None, "alice")
    await store.save_message(conv.id, "alice", "user", "hi")
    after = await store.get_conversation(conv.id, "alice")
    assert after.updated_at > conv.updated_at


async def test_seq_is_gap_free_across_single_and_batch(store: ConversationStore) -> None:
    conv = await store.get_or_create_conversation(None, "alice")
    await store.save_message(conv.id, "alice", "system", "be nice")
    batch = await store.save_messages(
        conv.id,
        "alice",
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "content": "r", "tool_call_id": "call_1", "tool_name": "lookup"},
        ],
    )
    await store.save_message(conv.id, "alice", "assistant", "answer")
    assert [m.seq for m in batch] == [2, 3, 4]
    history = await store.get_history(conv.id, "alice")
    assert [m.seq for m in history] == [1, 2, 3, 4, 5]
    assert history[1:4] == batch
    assert len({m.created_at for m in batch}) == 1, "a batch shares its transaction time"


async def test_history_is_newest_limit_oldest_first(store: ConversationStore) -> None:
    conv = await store.get_or_create_conversation(None, "alice")
    await store.save_messages(conv.id, "alice", [{"role": "user", "content": str(i)} for i in range(1, 121)])
    history = await store.get_history(conv.id, "alice", limit=50)
    assert [m.seq for m in history] == list(range(71, 121))
    assert [m.content for m in history] == [str(i) for i in range(71, 121)]
    assert [m.seq for m in await store.get_history(conv.id, "alice", limit=1)] == [120]
    assert len(await store.get_history(conv.id, "alice", limit=10_000)) == 120


async def test_history_empty_vs_not_found(store: ConversationStore) -> None:
    conv = await store.get_or_create_conversation(None, "alice")
    assert await store.get_history(conv.id, "alice") == []
    with pytest.raises(ConversationNotFound):
        await store.get_history("nope", "alice")


async def test_history_feeds_build_message_array(store: ConversationStore) -> None:
    conv = await store.get_or_create_conversation(None, "alice")
    await store.save_messages(
        conv.id,
        "alice",
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "content": "r", "tool_call_id": "call_1"},
        ],
    )
    out = build_message_array(await store.get_history(conv.id, "alice"), "next", system_prompt="sys")
    assert [m["role"] for m in out] == ["system", "user", "assistant", "tool", "user"]
    assert out[2]["tool_calls"] == [CALL] and out[3]["tool_call_id"] == "call_1"


async def test_idempotent_save_message(store: ConversationStore, db: asyncpg.Connection) -> None:
    conv = await store.get_or_create_conversation(None, "alice")
    first = await store.save_message(conv.id, "alice", "user", "hello", idempotency_key="k1")
    again = await store.save_message(conv.id, "alice", "user", "hello", idempotency_key="k1")
    assert again == first
    nxt = await store.save_message(conv.id, "alice", "user", "next")
    assert nxt.seq == 2, "a replayed key consumes no sequence number"
    assert await db.fetchval("SELECT count(*) FROM messages") == 2
    with pytest.raises(IdempotencyConflict):
        await store.save_message(conv.id, "alice", "user", "different", idempotency_key="k1")


async def test_idempotent_batch_replays_and_mixes(store: ConversationStore, db: asyncpg.Connection) -> None:
    conv = await store.get_or_create_conversation(None, "alice")
    batch = [{"role": "user", "content": str(i), "idempotency_key": f"k{i}"} for i in range(3)]
    first = await store.save_messages(conv.id, "alice", batch)
    assert await store.save_messages(conv.id, "alice", batch) == first
    mixed = await store.save_messages(conv.id, "alice", [*batch[1:], {"role": "user", "content": "new"}])
    assert mixed[:2] == first[1:] and mixed[2].seq == 4
    assert await db.fetchval("SELECT count(*) FROM messages") == 4
    with pytest.raises(IdempotencyConflict):
        await store.save_messages(
            conv.id,
            "alice",
            [
                {"role": "user", "content": "x"},
                {"role": "user", "content": "changed", "idempotency_key": "k0"},
            ],
        )
    assert await db.fetchval("SELECT count(*) FROM messages") == 4


async def test_same_key_in_two_conversations_is_two_messages(store: ConversationStore) -> None:
    a = await store.get_or_create_conversation(None, "alice")
    b = await store.get_or_create_conversation(None, "alice")
    ma = await store.save_message(a.id, "alice", "user", "x", idempotency_key="k")
    mb = await store.save_message(b.id, "alice", "user", "x", idempotency_key="k")
    assert (ma.conversation_id, mb.conversation_id) == (a.id, b.id)


async def test_borrowed_pool_stays_open(dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, init=init_connection)
    try:
        async with ConversationStore(pool) as store:
            conv = await store.get_or_create_conversation(None, "u", metadata={"a": 1})
            assert conv.metadata == {"a": 1}
        assert await pool.fetchval("SELECT 1") == 1
    finally:
        await pool.close()


async def test_borrowed_pool_without_codec_still_decodes_json(dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        store = ConversationStore(pool)
        conv = await store.get_or_create_conversation(None, "u", metadata={"a": [1, "b"]})
        await store.save_message(conv.id, "u", "assistant", None, tool_calls=[CALL], metadata={"m": 1})
        [msg] = await store.get_history(conv.id, "u")
        assert (conv.metadata, msg.tool_calls, msg.metadata) == ({"a": [1, "b"]}, [CALL], {"m": 1})
    finally:
        await pool.close()


async def test_owned_pool_closes(dsn: str) -> None:
    store = await ConversationStore.connect(dsn, min_size=1, max_size=2)
    async with store:
        pass
    assert store.pool._closed  # type: ignore[attr-defined]  # asyncpg keeps no public "closed" flag


async def test_created_at_is_server_time(store: ConversationStore, db: asyncpg.Connection) -> None:
    conv = await store.get_or_create_conversation(None, "alice")
    msg = await store.save_message(conv.id, "alice", "user", "x")
    now = await db.fetchval("SELECT now()")
    assert abs(now - msg.created_at) < timedelta(minutes=1)
