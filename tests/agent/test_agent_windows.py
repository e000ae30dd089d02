"""Model-ready history windows: token budgets in SQL, tool-call integrity, one-statement turns."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest

from convdb import ConversationStore
from convdb.records import Message

U = "alice"


async def _conv(store: ConversationStore) -> str:
    return (await store.get_or_create_conversation(None, U)).id


def _call(call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "f", "arguments": "{}"}}


def _seqs(window: list[Message]) -> list[int]:
    return [m.seq for m in window]


# -- token budget --------------------------------------------------------------------------------
async def test_budget_keeps_newest_messages_within_the_sum(store: ConversationStore) -> None:
    cid = await _conv(store)
    await store.save_messages(
        cid, U, [{"role": "user", "content": "x", "token_count": n} for n in (5, 10, 20, 30, 40)]
    )
    assert _seqs(await store.get_history(cid, U, max_tokens=70)) == [4, 5]
    assert _seqs(await store.get_history(cid, U, max_tokens=90)) == [3, 4, 5]  # exactly 90
    assert _seqs(await store.get_history(cid, U, max_tokens=89)) == [4, 5]
    assert _seqs(await store.get_history(cid, U, max_tokens=10_000)) == [1, 2, 3, 4, 5]
    assert await store.get_history(cid, U, max_tokens=39) == []  # the newest alone is too big
    assert await store.get_history(cid, U, max_tokens=0) == []


async def test_budget_and_limit_both_apply(store: ConversationStore) -> None:
    cid = await _conv(store)
    await store.save_messages(cid, U, [{"role": "user", "content": "x", "token_count": 1}] * 10)
    assert _seqs(await store.get_history(cid, U, limit=3, max_tokens=100)) == [8, 9, 10]
    assert _seqs(await store.get_history(cid, U, limit=100, max_tokens=4)) == [7, 8, 9, 10]


async def test_budget_uses_stored_counts_from_the_counter_or_the_caller(dsn: str) -> None:
    async with await ConversationStore.connect(dsn, count_tokens=len) as store:
        cid = await _conv(store)
        await store.save_message(cid, U, "user", "abcdefghij")  # counter: 10
        await store.save_message(cid, U, "assistant", "ab", token_count=100)  # given
        history = await store.get_history(cid, U)
        assert [m.token_count for m in history] == [10, 100]
        assert _seqs(await store.get_history(cid, U, max_tokens=100)) == [2]
        assert _seqs(await store.get_history(cid, U, max_tokens=110)) == [1, 2]


async def test_budget_tells_not_found_from_empty(store: ConversationStore) -> None:
    from convdb import ConversationNotFound

    cid = await _conv(store)
    assert await store.get_history(cid, U, max_tokens=10) == []
    with pytest.raises(ConversationNotFound):
        await store.get_history("nope", U, max_tokens=10)
    with pytest.raises(ConversationNotFound):
        await store.get_history(cid, "mallory", max_tokens=10)


@pytest.mark.engine_specific("postgresql", "a single-node EXPLAIN shape")
async def test_budget_is_one_statement_that_walks_the_primary_key(
    store: ConversationStore, db: asyncpg.Connection
) -> None:
    """Engine-specific: its Citus twin is test_citus.py's
    test_history_walks_the_shards_primary_key_backwards[get_history_window]."""
    from convdb.sql import QUERIES

    cid = await _conv(store)
    await store.save_messages(cid, U, [{"role": "user", "content": "x"}] * 200)
    await db.execute("ANALYZE")
    plan = await db.fetchval(
        "EXPLAIN (FORMAT JSON) " + QUERIES["get_history_window"], cid, U, 2**63 - 1, 50, 100
    )
    nodes = list(_plan_nodes(json.loads(plan)[0]["Plan"]))
    scans = [n for n in nodes if n.get("Relation Name") == "messages"]
    assert [(n["Node Type"], n["Index Name"], n["Scan Direction"]) for n in scans] == [
        ("Index Scan", "messages_pkey", "Backward")
    ]
    assert any(n["Node Type"] == "WindowAgg" for n in nodes)


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


# -- tool-call integrity (trim) -------------------------------------------------------------------
async def _tool_exchange(store: ConversationStore, cid: str, results: int = 3) -> None:
    await store.save_messages(
        cid,
        U,
        [
            {"role": "user", "content": "weather in three cities?"},
            {"role": "assistant", "content": None, "tool_calls": [_call(f"c{i}") for i in range(results)]},
            *({"role": "tool", "content": f"r{i}", "tool_call_id": f"c{i}"} for i in range(results)),
            {"role": "assistant", "content": "done"},
        ],
    )


async def test_window_starting_at_tool_results_drops_them(store: ConversationStore) -> None:
    cid = await _conv(store)
    await _tool_exchange(store, cid)  # seq 1 user, 2 assistant(calls), 3-5 tool, 6 assistant
    # limit 3 starts at the 2nd of three results: both orphan results are trimmed
    assert _seqs(await store.get_history(cid, U, limit=3)) == [6]
    # limit 4 starts at the first result: all three are orphans
    assert _seqs(await store.get_history(cid, U, limit=4)) == [6]
    # limit 5 starts at the assistant call: kept whole
    window = await store.get_history(cid, U, limit=5)
    assert _seqs(window) == [2, 3, 4, 5, 6]
    assert window[0].role == "assistant"
    assert window[0].tool_calls is not None


async def test_assistant_call_as_first_message_is_kept_with_its_results(store: ConversationStore) -> None:
    cid = await _conv(store)
    await store.save_messages(
        cid,
        U,
        [
            {"role": "assistant", "content": None, "tool_calls": [_call("a"), _call("b")]},
            {"role": "tool", "content": "A", "tool_call_id": "a"},
            {"role": "tool", "content": "B", "tool_call_id": "b"},
        ],
    )
    window = await store.get_history(cid, U)
    assert [m.role for m in window] == ["assistant", "tool", "tool"]


async def test_window_of_only_tool_results_is_empty(store: ConversationStore) -> None:
    cid = await _conv(store)
    await _tool_exchange(store, cid)
    await store.save_message(cid, U, "tool", "late", tool_call_id="c9")
    assert await store.get_history(cid, U, limit=1) == []


async def test_budget_cut_inside_a_tool_exchange_is_trimmed(store: ConversationStore) -> None:
    cid = await _conv(store)
    await store.save_messages(
        cid,
        U,
        [
            {"role": "user", "content": "q", "token_count": 1},
            {"role": "assistant", "content": None, "tool_calls": [_call("a"), _call("b")], "token_count": 50},
            {"role": "tool", "content": "A", "tool_call_id": "a", "token_count": 5},
            {"role": "tool", "content": "B", "tool_call_id": "b", "token_count": 5},
            {"role": "assistant", "content": "answer", "token_count": 5},
        ],
    )
    # 15 tokens reach back to the first result; the call itself (50) does not fit: trim, not extend
    window = await store.get_history(cid, U, max_tokens=15)
    assert _seqs(window) == [5]
    assert sum(m.token_count for m in window) <= 15
    assert _seqs(await store.get_history(cid, U, max_tokens=65)) == [2, 3, 4, 5]


async def test_tool_results_in_the_middle_are_untouched(store: ConversationStore) -> None:
    cid = await _conv(store)
    await _tool_exchange(store, cid)
    assert _seqs(await store.get_history(cid, U)) == [1, 2, 3, 4, 5, 6]


# -- save_and_get_history -----------------------------------------------------------------------
async def test_turn_saves_and_returns_the_window_ending_at_it(store: ConversationStore) -> None:
    cid = await _conv(store)
    await store.save_messages(cid, U, [{"role": "user", "content": f"m{i}"} for i in range(5)])
    before = await store.get_conversation(cid, U)
    saved, window = await store.save_and_get_history(
        cid, U, {"role": "assistant", "content": "reply", "metadata": {"k": [1]}}, limit=3
    )
    assert saved.seq == 6
    assert saved.role == "assistant"
    assert saved.content == "reply"
    assert saved.metadata == {"k": [1]}
    assert saved.token_count == 2
    assert _seqs(window) == [4, 5, 6]
    assert window[-1] == saved
    assert window == await store.get_history(cid, U, limit=3)
    after = await store.get_conversation(cid, U)
    assert after.updated_at > before.updated_at
    assert (await store.save_message(cid, U, "user", "next")).seq == 7


async def test_turn_matches_get_history_with_a_budget(store: ConversationStore) -> None:
    cid = await _conv(store)
    await store.save_messages(
        cid, U, [{"role": "user", "content": "x", "token_count": n} for n in (10, 20, 30)]
    )
    saved, window = await store.save_and_get_history(
        cid, U, {"role": "assistant", "content": "y", "token_count": 25}, max_tokens=60
    )
    assert _seqs(window) == [3, 4]
    assert window == await store.get_history(cid, U, max_tokens=60)
    # the new message alone exceeds the budget: saved, but the window is empty
    saved, window = await store.save_and_get_history(
        cid, U, {"role": "user", "content": "z", "token_count": 100}, max_tokens=60
    )
    assert saved.seq == 5
    assert window == []
    assert await store.count_messages(cid, U) == 5


async def test_turn_on_an_empty_conversation_and_with_limit_one(store: ConversationStore) -> None:
    cid = await _conv(store)
    saved, window = await store.save_and_get_history(cid, U, {"role": "user", "content": "hi"})
    assert saved.seq == 1
    assert window == [saved]
    saved2, window2 = await store.save_and_get_history(cid, U, {"role": "user", "content": "again"}, limit=1)
    assert window2 == [saved2]


async def test_turn_trims_orphan_tool_results(store: ConversationStore) -> None:
    cid = await _conv(store)
    await store.save_messages(
        cid,
        U,
        [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": [_call("a"), _call("b")]},
            {"role": "tool", "content": "A", "tool_call_id": "a"},
        ],
    )
    saved, window = await store.save_and_get_history(
        cid, U, {"role": "tool", "content": "B", "tool_call_id": "b"}, limit=2
    )
    assert saved.role == "tool"
    assert window == []
    saved, window = await store.save_and_get_history(
        cid, U, {"role": "assistant", "content": "both done"}, limit=4
    )
    assert [m.role for m in window] == ["assistant", "tool", "tool", "assistant"]


async def test_turn_with_an_idempotency_key_is_exactly_once(store: ConversationStore) -> None:
    cid = await _conv(store)
    await store.save_message(cid, U, "user", "q")
    msg = {"role": "assistant", "content": "a", "idempotency_key": "turn-1"}
    first, w1 = await store.save_and_get_history(cid, U, msg)
    await store.save_message(cid, U, "user", "later")
    again, w2 = await store.save_and_get_history(cid, U, msg)
    assert again == first
    assert first.idempotency_key == "turn-1"
    assert w2 == w1  # the window that ends at the stored message, not at the newest
    assert await store.count_messages(cid, U) == 3
    # the same key is also honoured by save_message, and vice versa
    assert await store.save_message(cid, U, "assistant", "a", idempotency_key="turn-1") == first
    from convdb import IdempotencyConflict

    with pytest.raises(IdempotencyConflict):
        await store.save_and_get_history(cid, U, {**msg, "content": "different"})


async def test_concurrent_turns_see_every_committed_message(store: ConversationStore) -> None:
    """Writers racing on one conversation: each window is gap-free and ends at its own message.

    A turn whose snapshot missed a message committed before it took the lock detects it (the
    conversation row's version) and re-reads; without that its window would have a hole.
    """
    cid = await _conv(store)

    async def turn(i: int) -> tuple[Message, list[Message]]:
        return await store.save_and_get_history(cid, U, {"role": "user", "content": f"m{i}"}, limit=50)

    results = await asyncio.gather(*(turn(i) for i in range(40)))
    seqs = sorted(saved.seq for saved, _ in results)
    assert seqs == list(range(1, 41))
    for saved, window in results:
        assert window[-1] == saved
        assert _seqs(window) == list(range(max(1, saved.seq - 49), saved.seq + 1))


async def test_turn_after_a_concurrent_commit_rereads_the_window(
    store: ConversationStore, race_row_lock: Callable[..., Awaitable[Any]]
) -> None:
    """Deterministic version of the race: another transaction holds the row lock and commits a
    message while our statement waits for the lock; its snapshot cannot see that message."""
    cid = await _conv(store)
    await store.save_message(cid, U, "user", "one")
    saved, window = await race_row_lock(
        store.save_and_get_history(cid, U, {"role": "user", "content": "three"}),
        ("UPDATE conversations SET next_seq = next_seq + 1, updated_at = now() WHERE id = $1", cid),
        (
            "INSERT INTO messages (conversation_id, seq, role, content) VALUES ($1, 2, 'assistant', 'two')",
            cid,
        ),
    )
    assert saved.seq == 3
    assert [m.content for m in window] == ["one", "two", "three"]


async def test_pop_racing_a_turn_does_not_leave_the_popped_message_in_its_window(
    store: ConversationStore, race_row_lock: Callable[..., Awaitable[Any]]
) -> None:
    cid = await _conv(store)
    await store.save_messages(
        cid, U, [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"}]
    )
    saved, window = await race_row_lock(
        store.save_and_get_history(cid, U, {"role": "user", "content": "three"}),
        ("UPDATE conversations SET updated_at = now() WHERE id = $1", cid),
        ("DELETE FROM messages WHERE conversation_id = $1 AND seq = 2", cid),
    )
    assert [m.content for m in window] == ["one", "three"]
    assert saved.seq == 3
