"""Conversation management: update, delete, clear, pop, count."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from convdb import ConversationNotFound, ConversationStore, TransientError
from convdb.records import Message
from tests.support.fix_server import ENGINE

U = "alice"


async def _conv(store: ConversationStore, n: int = 0) -> str:
    cid = (await store.get_or_create_conversation(None, U, title="t", metadata={"a": 1})).id
    if n:
        await store.save_messages(cid, U, [{"role": "user", "content": f"m{i}"} for i in range(1, n + 1)])
    return cid


# -- update ---------------------------------------------------------------------------------------
async def test_update_sets_only_what_is_given(store: ConversationStore) -> None:
    cid = await _conv(store)
    before = await store.get_conversation(cid, U)
    c = await store.update_conversation(cid, U, title="renamed")
    assert (c.title, c.metadata) == ("renamed", {"a": 1})
    assert c.updated_at > before.updated_at
    assert c.created_at == before.created_at
    c = await store.update_conversation(cid, U, metadata={"b": [1, None, "é"]})
    assert (c.title, c.metadata) == ("renamed", {"b": [1, None, "é"]})
    c = await store.update_conversation(cid, U, title=None)
    assert (c.title, c.metadata) == (None, {"b": [1, None, "é"]})
    c = await store.update_conversation(cid, U, metadata=None)
    assert c.metadata == {}
    c = await store.update_conversation(cid, U, title="both", metadata={"x": 1})
    assert (c.title, c.metadata) == ("both", {"x": 1})
    assert await store.get_conversation(cid, U) == c


# -- delete ---------------------------------------------------------------------------------------
async def test_delete_removes_conversation_and_messages(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    cid = await _conv(store, 3)
    keep = await _conv(store, 2)
    assert await store.delete_conversation(cid, U) == 3
    with pytest.raises(ConversationNotFound):
        await store.get_conversation(cid, U)
    assert await db.fetchval("SELECT count(*) FROM messages WHERE conversation_id = $1", cid) == 0
    assert await store.count_messages(keep, U) == 2
    with pytest.raises(ConversationNotFound):
        await store.delete_conversation(cid, U)


# -- clear ----------------------------------------------------------------------------------------
@pytest.mark.guarantee(5)
async def test_clear_keeps_the_conversation_and_never_reuses_seq(store: ConversationStore) -> None:
    cid = await _conv(store, 4)
    before = await store.get_conversation(cid, U)
    assert await store.clear_conversation(cid, U) == 4
    after = await store.get_conversation(cid, U)
    assert (after.title, after.metadata) == (before.title, before.metadata)
    assert after.updated_at > before.updated_at
    assert await store.get_history(cid, U) == []
    assert await store.count_messages(cid, U) == 0
    assert (await store.save_message(cid, U, "user", "fresh start")).seq == 5
    assert await store.clear_conversation(cid, U) == 1
    assert await store.clear_conversation(cid, U) == 0


async def test_clear_waits_for_a_concurrent_writer_and_clears_its_message(
    store: ConversationStore, race_row_lock: Callable[..., Awaitable[Any]]
) -> None:
    cid = await _conv(store, 2)
    cleared = await race_row_lock(
        store.clear_conversation(cid, U),
        ("UPDATE conversations SET next_seq = next_seq + 1, updated_at = now() WHERE id = $1", cid),
        ("INSERT INTO messages (conversation_id, seq, role, content) VALUES ($1, 3, 'user', 'racing')", cid),
    )
    assert cleared == 3  # the racing message committed before clear held the lock
    assert await store.count_messages(cid, U) == 0


# -- pop ------------------------------------------------------------------------------------------
async def test_pop_returns_newest_then_none(store: ConversationStore) -> None:
    cid = await _conv(store)
    assert await store.pop_last_message(cid, U) is None
    stored = await store.save_messages(
        cid,
        U,
        [
            {"role": "user", "content": "q", "metadata": {"m": 1}, "idempotency_key": "k1"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c", "type": "function"}],
                "token_count": 7,
            },
        ],
    )
    before = await store.get_conversation(cid, U)
    popped = await store.pop_last_message(cid, U)
    assert popped == stored[1]
    assert (await store.get_conversation(cid, U)).updated_at > before.updated_at
    assert await store.pop_last_message(cid, U) == stored[0]
    assert await store.pop_last_message(cid, U) is None
    assert (await store.save_message(cid, U, "user", "new")).seq == 3  # seq never reused


def _false_distributed_deadlocks(results: list[Any]) -> int:
    """How many calls Citus cancelled as a distributed deadlock that is none; any other failure,
    and any failure at all on PostgreSQL, is raised.

    Every call here takes the one conversation row's lock first, so the waits form a queue on
    that row and no cycle exists (PostgreSQL waits them out). Citus 13.2's detector merges every
    worker backend that is not in a distributed transaction (a single-statement router query:
    a pop's first try, a single-shard UPDATE) into one node of its wait graph, so a queue of
    local / distributed / local / distributed waiters reads as a cycle and the distributed one
    (a pop's locked re-run, an append's multi-step statement) is cancelled (docs/citus.md,
    "Distributed deadlock detection"; reproduced by tests/core/test_citus.py). The cancelled call
    raises the documented TransientError and commits nothing: the callers below prove it."""
    failed = [r for r in results if isinstance(r, BaseException)]
    for exc in failed:
        if ENGINE != "citus" or not isinstance(exc, TransientError) or "distributed deadlock" not in str(exc):
            raise exc
    return len(failed)


async def test_concurrent_pops_never_return_the_same_message(store: ConversationStore) -> None:
    cid = await _conv(store, 30)
    results = await asyncio.gather(
        *(store.pop_last_message(cid, U) for _ in range(40)), return_exceptions=True
    )
    cancelled = _false_distributed_deadlocks(results)
    popped = [m for m in results if isinstance(m, Message)]
    # No appends: once a pop found the conversation empty it stays empty. Every call that was not
    # cancelled popped one message while there was one, then returned None.
    assert len({m.seq for m in popped}) == len(popped) == min(30, 40 - cancelled)
    assert results.count(None) == max(0, 10 - cancelled)
    remaining = await store.get_history(cid, U, limit=1000)
    assert sorted([m.seq for m in popped] + [m.seq for m in remaining]) == list(range(1, 31))


async def test_pops_racing_appends_always_pop_the_newest(store: ConversationStore) -> None:
    cid = await _conv(store, 5)

    async def pop() -> Message | None:
        return await store.pop_last_message(cid, U)

    async def append(i: int) -> Message:
        return await store.save_message(cid, U, "user", f"a{i}")

    results = await asyncio.gather(
        *(pop() if i % 2 else append(i) for i in range(40)), return_exceptions=True
    )
    _false_distributed_deadlocks(results)
    popped = [r for r in results[1::2] if isinstance(r, Message)]
    appended = [r for r in results[0::2] if isinstance(r, Message)]
    assert len({m.seq for m in popped}) == len(popped)
    remaining = await store.get_history(cid, U, limit=1000)
    # everything is accounted for exactly once: stored (the 5, then every append that returned;
    # a cancelled one stored nothing) = remaining + popped
    stored = [1, 2, 3, 4, 5] + [m.seq for m in appended]
    assert sorted([m.seq for m in remaining] + [m.seq for m in popped]) == sorted(stored)
    assert {m.seq: m.content for m in appended}.items() <= {
        m.seq: m.content for m in [*remaining, *popped]
    }.items()


async def test_pop_waiting_behind_an_append_pops_that_append(
    store: ConversationStore, race_row_lock: Callable[..., Awaitable[Any]]
) -> None:
    """The pop's snapshot predates the append; it must not pop the older message."""
    cid = await _conv(store, 2)
    popped = await race_row_lock(
        store.pop_last_message(cid, U),
        ("UPDATE conversations SET next_seq = next_seq + 1, updated_at = now() WHERE id = $1", cid),
        (
            "INSERT INTO messages (conversation_id, seq, role, content) VALUES ($1, 3, 'assistant', 'newest')",
            cid,
        ),
    )
    assert popped is not None
    assert (popped.seq, popped.content) == (3, "newest")
    assert [m.seq for m in await store.get_history(cid, U)] == [1, 2]


# -- count ----------------------------------------------------------------------------------------
async def test_count_messages(store: ConversationStore) -> None:
    cid = await _conv(store)
    assert await store.count_messages(cid, U) == 0
    await store.save_messages(cid, U, [{"role": "user", "content": "x"}] * 7)
    assert await store.count_messages(cid, U) == 7
